"""Where an image sits inside a model's square input frame."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageGeometry:
    """How an image of ``original_size`` maps into a model's square input frame.

    ``padded_size`` is the image after the model's own pre-padding (FocSAM pads bottom/right to a multiple of 32
    before resizing; SAM does not pad, so it equals ``original_size``). ``resized_size`` is ``padded_size`` scaled
    so that its longest side is ``input_size``; the rest of the square input is zero padding.
    """

    original_size: tuple[int, int]
    padded_size: tuple[int, int]
    resized_size: tuple[int, int]
    input_size: int = 1024

    def to_attrs(self) -> dict[str, Any]:
        return {
            "original_size": list(self.original_size),
            "padded_size": list(self.padded_size),
            "resized_size": list(self.resized_size),
            "input_size": int(self.input_size),
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> ImageGeometry:
        return cls(
            original_size=as_size(attrs["original_size"]),
            padded_size=as_size(attrs["padded_size"]),
            resized_size=as_size(attrs["resized_size"]),
            input_size=int(attrs["input_size"]),
        )


def as_size(values: Iterable[Any]) -> tuple[int, int]:
    """A (height, width) pair of ints from any two numbers (a list, a tuple, a ``torch.Size``); ValueError otherwise."""
    height, width = (int(v) for v in values)
    return height, width
