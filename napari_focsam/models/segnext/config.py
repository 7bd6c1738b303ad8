"""What differs between SegNext networks (:class:`SegNextConfig`); reading it from a checkpoint's ``config``
record is :mod:`napari_focsam.weights.segnext`'s job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SegNextConfig:
    """What differs between SegNext checkpoints. Everything else is fixed (see :mod:`.network`)."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    global_atten_freq: int = 3
    fusion_depth: int = 2
    neck_dims: tuple[int, ...] = (128, 256, 512, 1024)
    head_channels: int = 256
    norm_radius: int = 5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def grid(self) -> int:
        """Tokens per side of the image and prompt feature maps (64 at 1024 px)."""
        return self.img_size // self.patch_size

    @property
    def window(self) -> int:
        """Tokens per side of a windowed-attention window.

        The official split asks for 224-px windows: it divides the grid into ``grid // (224 // patch)`` windows per
        side and then makes each ``grid // that`` tokens wide, i.e. a 4 × 4 grid of 16 × 16-token windows at 1024.
        """
        per_side = max(1, self.grid // (224 // self.patch_size))
        return self.grid // per_side

    def is_global(self, index: int) -> bool:
        """Whether backbone block ``index`` (0-based) attends globally: 1-based multiples of the frequency, and the
        last block."""
        return (index + 1) % self.global_atten_freq == 0 or index + 1 == self.depth


SA2 = SegNextConfig(fusion_depth=2)
SA1 = SegNextConfig(fusion_depth=1)
