"""Prompts records checked against one stack: :func:`build_prompt_set` turns the records of a prompts file
(:mod:`napari_focsam.stack.prompts_file`) into each object's :class:`~napari_focsam.engine.types.Prompts` on each
slice, refusing records outside the stack with a clear :class:`~napari_focsam.stack.prompts_file.PromptsFileError`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.prompt_shapes import check_extent
from ..engine.types import Prompts
from .prompts_file import PromptRecord, PromptsFileError

__all__ = ["PromptSet", "build_prompt_set"]


@dataclass
class PromptSet:
    """Prompts by flat slice number and object id, checked against one stack."""

    prompts: dict[int, dict[int, Prompts]]

    @property
    def slices(self) -> list[int]:
        return sorted(self.prompts)

    @property
    def object_ids(self) -> list[int]:
        return sorted({oid for objects in self.prompts.values() for oid in objects})

    @property
    def has_boxes(self) -> bool:
        return any(p.box is not None for objects in self.prompts.values() for p in objects.values())

    def objects(self, index: int) -> list[tuple[int, Prompts]]:
        return sorted(self.prompts.get(index, {}).items())

    def __len__(self) -> int:
        return sum(len(objects) for objects in self.prompts.values())


def _label_slice(record: PromptRecord, index: int, leading_shape: tuple[int, ...], image_shape: tuple[int, int],
                 cache: dict[str, np.ndarray]) -> np.ndarray:
    """The mask ``labels == value`` of a mask record on slice ``index``."""
    assert record.mask is not None  # a mask record
    path = Path(record.mask).expanduser()
    if str(path) not in cache:
        try:
            if path.suffix.lower() == ".npy":
                cache[str(path)] = np.load(path, allow_pickle=False)
            elif path.suffix.lower() in (".tif", ".tiff"):
                import tifffile

                cache[str(path)] = tifffile.imread(path)
            else:
                from skimage.io import imread

                cache[str(path)] = imread(path)
        except (OSError, ValueError) as exc:
            raise PromptsFileError(f"{record.where}: cannot read the label image {path} ({exc})") from exc
    labels = cache[str(path)]
    if labels.shape == image_shape:
        plane = labels
    elif labels.shape == (*leading_shape, *image_shape):
        plane = labels.reshape(-1, *image_shape)[index]
    else:
        raise PromptsFileError(f"{record.where}: the label image {path.name} is {labels.shape}; it must be one slice "
                               f"{image_shape} or the whole stack {(*leading_shape, *image_shape)}")
    value = record.object_id if record.mask_value is None else record.mask_value
    mask = plane == value
    if not mask.any():
        raise PromptsFileError(f"{record.where}: label {value} does not occur in {path.name} on slice {index}")
    return mask


def build_prompt_set(records: Iterable[PromptRecord], leading_shape: tuple[int, ...],
                     image_shape: tuple[int, int]) -> PromptSet:
    """Check the records against a stack (slice range, clicks and boxes inside the image) and group them."""
    n_slices = math.prod(leading_shape)
    height, width = image_shape
    grouped: dict[int, dict[int, Prompts]] = {}
    cache: dict[str, np.ndarray] = {}
    for record in records:
        if record.t is not None:
            if len(leading_shape) != 2:
                raise PromptsFileError(f"{record.where}: a t column needs a (T, Z, Y, X) stack; this stack's "
                                       f"leading axes are {leading_shape}")
            if not (0 <= record.t < leading_shape[0] and 0 <= record.slice < leading_shape[1]):
                raise PromptsFileError(f"{record.where}: (t={record.t}, slice={record.slice}) is outside the stack "
                                       f"of {leading_shape[0]} time points x {leading_shape[1]} slices")
            index = record.t * leading_shape[1] + record.slice
        else:
            index = record.slice
            if not 0 <= index < n_slices:
                raise PromptsFileError(f"{record.where}: slice {index} is outside the stack of {n_slices} slices "
                                       f"(0..{n_slices - 1})")
        coords = ([record.point] if record.point else []) + ([record.box[:2], record.box[2:]] if record.box else [])
        if record.kind in ("polygon", "scribble"):
            coords = []  # checked (inclusive of the image's outer edge) by the prompt itself below
        for y, x in coords:
            if not (-0.5 <= y < height - 0.5 and -0.5 <= x < width - 0.5):
                raise PromptsFileError(f"{record.where}: (y={y:g}, x={x:g}) is outside the {height}x{width} slice")
        objects = grouped.setdefault(index, {})
        prompts = objects.get(record.object_id, Prompts())
        if record.kind:
            objects[record.object_id] = _with_shape(prompts, record, index, leading_shape, (height, width), cache)
            continue
        if record.box is not None:
            if prompts.box is not None:
                raise PromptsFileError(f"{record.where}: object {record.object_id} already has a box on slice {index}")
            prompts = prompts.with_box(record.box)
        if record.point is not None:
            prompts = prompts.with_point(record.point[0], record.point[1], record.positive)
        objects[record.object_id] = prompts
    return PromptSet(grouped)


def _with_shape(prompts: Prompts, record: PromptRecord, index: int, leading_shape: tuple[int, ...],
                image_shape: tuple[int, int], cache: dict[str, np.ndarray]) -> Prompts:
    """``prompts`` with the record's polygon, scribble or mask; a bad one is a PromptsFileError naming the record."""
    try:
        if record.kind == "mask":
            if prompts.mask is not None:
                raise PromptsFileError(f"{record.where}: object {record.object_id} already has a mask or polygon "
                                       f"on slice {index} (give one mask, or polygons only)")
            return prompts.with_mask(_label_slice(record, index, leading_shape, image_shape, cache))
        if record.kind == "polygon":
            return prompts.with_polygon(record.vertices, image_shape)
        scribble = prompts.with_scribble(record.vertices, record.positive)
        check_extent(scribble.scribbles[-1].points, image_shape, "scribble")
        return scribble
    except PromptsFileError:
        raise
    except ValueError as exc:
        raise PromptsFileError(f"{record.where}: {exc}") from None
