"""Which model the annotator starts with: the most accurate one whose weights are already on this machine.

The order is by published accuracy: FocSAM ViT-H (fewest clicks per object in the FocSAM paper's Table 1), then SAM
ViT-H, ViT-L and ViT-B (the SAM paper's ranking). A model counts only when its checkpoint (or lean copy) is in the
model cache and passes its check (hash, or structure where no hash is published); a file not checked before is
checked once here, which reads it. Nothing is downloaded. Without any, the weight-free fallback is chosen.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError
from .registry import FALLBACK_NAME

#: registry names, best first
PREFERENCE: tuple[str, ...] = ("focsam_vit_h", "sam_vit_h", "sam_vit_l", "sam_vit_b")

#: shown when no checkpoint is cached: how to get real weights
WEIGHTS_HINT = ("No FocSAM/SAM weights cached: using the weight-free fallback. Get weights with "
                "`napari-focsam models download sam_vit_b` (or focsam_vit_h), then restart.")


def best_cached_model(order: tuple[str, ...] | None = None) -> tuple[str, Path | None]:
    """``(name, checkpoint)`` of the first model of ``order`` (default :data:`PREFERENCE`) that is cached and sound,
    else ``("fallback", None)``; never uses the network."""
    from .download import cache_status, resolve_checkpoint
    from .registry import get_entry

    for name in PREFERENCE if order is None else order:
        state, _ = cache_status(get_entry(name))
        if state == "no":
            continue
        try:
            path = resolve_checkpoint(name, download=False)
        except CheckpointError:  # present but unusable (corrupt, another model): the next one
            continue
        if path is not None:
            return name, path
    return FALLBACK_NAME, None
