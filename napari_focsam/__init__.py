"""napari-focsam: interactive FocSAM / Segment Anything annotation for napari and Python.

The Python API (importing it never imports napari or Qt)::

    from napari_focsam import ModelManager
    manager = ModelManager.load("focsam_vit_h", checkpoint="iter_160000.pth")   # or ModelManager.load("fallback")
    obj = manager.new_object(image)        # embeds the image (cached)
    mask = obj.click(120, 200)             # (y, x), positive
    mask = obj.click(150, 260, positive=False)
    mask = obj.add_scribble([[40, 50], [60, 90]], positive=False)   # also add_polygon(vertices), set_mask(mask)
    obj.undo()
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

_LAZY = {
    "ModelManager": "napari_focsam.engine.manager",
    "ObjectSession": "napari_focsam.engine.session",
    "EmbeddingCache": "napari_focsam.engine.cache",
    "Prompts": "napari_focsam.engine.types",
    "CancelToken": "napari_focsam.engine.types",
    "Cancelled": "napari_focsam.engine.types",
    "CheckpointError": "napari_focsam.weights.checkpoint",
    "SPECS": "napari_focsam.models.specs",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .engine.cache import EmbeddingCache
    from .engine.manager import ModelManager
    from .engine.session import ObjectSession
    from .engine.types import Cancelled, CancelToken, Prompts
    from .models.specs import SPECS
    from .weights.checkpoint import CheckpointError


def __getattr__(name: str) -> Any:
    """Import the heavy parts (torch, segment-anything) only when they are used."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
