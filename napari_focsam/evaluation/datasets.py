"""Evaluation datasets: the ``../shared/datasets`` layout, which users can reproduce with their own data.

A dataset is a folder::

    <root>/images/<id>.<ext>   the image (any format Pillow reads, or .tif/.tiff), gray or RGB(A), any dtype
    <root>/masks/<id>.<ext>    the ground truth, same height and width (.png, .tif, .bmp, ...)
    <root>/ids.txt             optional: one id per line, the canonical order (default: sorted mask names)

Masks come in two kinds (``mask_mode="auto"`` tells them apart):

* **binary**: uint8/bool with values in {0, 1, 255}: 1 = object, 0 = background, 255 = ignore (GrabCut's unknown
  band); a mask with values in {0, 255} only is read as 0 = background, 255 = object (the usual 8-bit export);
  one object per image, keyed by the id;
* **instances**: anything else (e.g. uint16 labels as dsb2018): every non-zero label is one object, keyed
  ``<id>#<label>``; there are no ignore pixels.

Each object's ground truth is given to the evaluation as uint8 0/1/255, the convention of
:mod:`napari_focsam.evaluation.protocol`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.image import to_model_rgb

MASK_MODES = ("auto", "binary", "instances")
_TIFF = (".tif", ".tiff")


@dataclass(frozen=True)
class EvalObject:
    """One object to segment: an image id and, for instance masks, the instance label."""

    key: str  # unique in the dataset: "<id>" (binary mask) or "<id>#<label>" (instance mask)
    image_id: str
    label: int | None = None


def read_array(path: Path) -> np.ndarray:
    """An image or mask file as a numpy array, unchanged (Pillow; tifffile for .tif/.tiff)."""
    if path.suffix.lower() in _TIFF:
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def mask_kind(mask: np.ndarray) -> str:
    """``"binary"``, ``"binary255"`` (0 = background, 255 = object) or ``"instances"`` for a mask array."""
    if mask.dtype == bool:
        return "binary"
    if mask.dtype == np.uint8:
        values = np.unique(mask)
        if set(values.tolist()) <= {0, 255} and 255 in values:
            return "binary255"
        if set(values.tolist()) <= {0, 1, 255}:
            return "binary"
    return "instances"


class SegmentationDataset:
    """Images, masks and the objects they hold, read lazily from a dataset folder."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        images: str = "images",
        masks: str = "masks",
        mask_mode: str = "auto",
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        self.root = Path(root).expanduser()
        self.images_dir = self.root / images
        self.masks_dir = self.root / masks
        for folder in (self.images_dir, self.masks_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{folder} does not exist: a dataset folder holds images/<id>.<ext> and masks/<id>.<ext>"
                )
        self.mask_mode = mask_mode
        self.name = self.root.name
        self._images = self._index(self.images_dir)
        self._masks = self._index(self.masks_dir)
        ids_file = self.root / "ids.txt"
        if ids_file.is_file():
            ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
        else:
            ids = sorted(set(self._masks) & set(self._images))
        missing = [i for i in ids if i not in self._images or i not in self._masks]
        if missing:
            raise FileNotFoundError(f"{len(missing)} ids without an image or a mask in {self.root}: {missing[:5]}")
        self.ids: list[str] = ids

    @staticmethod
    def _index(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.stem in found:
                raise ValueError(f"two files for id {path.stem!r} in {folder}: {found[path.stem].name}, {path.name}")
            found[path.stem] = path
        return found

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"SegmentationDataset({str(self.root)!r}, {len(self.ids)} images)"

    # ------------------------------------------------------------------ files
    def image_path(self, image_id: str) -> Path:
        return self._images[image_id]

    def mask_path(self, image_id: str) -> Path:
        return self._masks[image_id]

    def load_image(self, image_id: str) -> np.ndarray:
        """The image as the models take it: (H, W, 3) uint8 RGB (gray and other dtypes via ``to_model_rgb``)."""
        array = read_array(self.image_path(image_id))
        if array.ndim == 3 and array.shape[-1] not in (3, 4):
            raise ValueError(f"{self.image_path(image_id)}: only 2D images are supported, got shape {array.shape}")
        if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:
            return np.ascontiguousarray(array)
        return to_model_rgb(array)

    def load_mask(self, image_id: str) -> np.ndarray:
        mask = read_array(self.mask_path(image_id))
        if mask.ndim != 2:
            raise ValueError(f"{self.mask_path(image_id)}: a mask must be 2D, got shape {mask.shape}")
        return mask

    # ------------------------------------------------------------------ objects
    def _kind(self, mask: np.ndarray) -> str:
        if self.mask_mode == "instances":
            return "instances"
        kind = mask_kind(mask)
        if self.mask_mode == "binary" and kind == "instances":
            return "nonzero"
        return kind

    def objects_of(self, image_id: str, mask: np.ndarray | None = None) -> list[EvalObject]:
        """The objects of one image: itself for a binary mask, one per label for an instance mask."""
        mask = self.load_mask(image_id) if mask is None else mask
        if self._kind(mask) != "instances":
            return [EvalObject(image_id, image_id)]
        labels = np.unique(mask)
        return [EvalObject(f"{image_id}#{int(v)}", image_id, int(v)) for v in labels if v != 0]

    def target(self, obj: EvalObject, mask: np.ndarray) -> np.ndarray:
        """The ground truth of one object as uint8: 1 = object, 0 = background, 255 = ignore."""
        if obj.label is not None:
            return (mask == obj.label).astype(np.uint8)
        kind = self._kind(mask)
        if kind == "binary":
            return mask.astype(np.uint8)
        if kind == "binary255":
            return (mask == 255).astype(np.uint8)
        return (mask != 0).astype(np.uint8)  # mask_mode="binary" on a labelled mask: every label is the object

    def select(
        self, limit: int | None = None, ids: Sequence[str] | None = None
    ) -> list[str]:
        """Image ids to evaluate: the given ids (in the dataset's order; an object key ``<id>#<label>`` selects its
        image) and/or the first ``limit`` of them."""
        chosen = list(self.ids)
        if ids:
            wanted = {i.split("#", 1)[0] if i not in self._images else i for i in ids}
            unknown = sorted(wanted - set(self.ids))
            if unknown:
                raise KeyError(f"unknown ids in {self.root}: {unknown[:10]}")
            chosen = [i for i in chosen if i in wanted]
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
            chosen = chosen[:limit]
        return chosen

    def list_objects(
        self,
        image_ids: Iterable[str] | None = None,
        *,
        keys: Sequence[str] | None = None,
        max_instances: int | None = None,
        skip_invalid: bool = False,
    ) -> list[EvalObject]:
        """Every object of the images (all by default), in order.

        ``keys``: object keys ``<id>#<label>`` given by the user restrict their image to those instances;
        ``max_instances`` keeps the first N labels of each instance mask (all by default); ``skip_invalid`` skips
        (with a warning) the images whose mask cannot be used (e.g. a 3D stack) instead of raising.
        """
        key_filter = {k for k in keys if "#" in k} if keys else set()
        found: list[EvalObject] = []
        for image_id in self.ids if image_ids is None else image_ids:
            try:
                objects = self.objects_of(image_id)
            except ValueError as error:
                if not skip_invalid:
                    raise
                warnings.warn(f"skipping image {image_id!r}: {error}", stacklevel=2)
                continue
            if any(k.startswith(f"{image_id}#") for k in key_filter):
                objects = [o for o in objects if o.key in key_filter]
            if max_instances is not None:
                objects = objects[:max_instances]
            found.extend(objects)
        return found
