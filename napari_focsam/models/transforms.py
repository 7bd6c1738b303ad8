"""Image, coordinate and mask transforms between the original image and a model's 1024² input frame.

Two conventions exist and each model uses the one its weights were trained with:

``SamTransform`` (segment-anything's ``SamPredictor``)
    RGB; resize the uint8 image so its longest side is 1024 (``ResizeLongestSide``, PIL bilinear); normalise;
    zero-pad to 1024². Masks: logits → bilinear to 1024² → crop the resized region → bilinear to the original size.

``FocsamTransform`` (the official FocSAM pipeline, see the reference report §2)
    BGR channel order with the RGB mean/std (the official data preprocessor never converts); normalise; zero-pad
    bottom/right to a multiple of 32; bilinear resize of the normalised tensor *without antialiasing* so the longest
    side of the padded image is 1024; zero-pad to 1024². Coordinates scale by resized/padded size in float32, as the
    official code does. Masks: logits → bilinear to 1024² → crop → bilinear to the padded size → crop to the image.

``StretchTransform`` (PA-SAM's and HQ-SAM's evaluation) and ``MedsamTransform`` (MedSAM) stretch the image to S²
instead (see their docstrings).

This module is also the single place where the package's (y, x) order becomes the models' (x, y) order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import resize, to_pil_image

from .geometry import ImageGeometry
from .sam import PIXEL_MEAN, PIXEL_STD


def longest_side_size(size: tuple[int, int], target: int) -> tuple[int, int]:
    """(h, w) scaled so that the longest side is ``target``, rounded half up (both pipelines agree on this).

    A side never becomes 0: beyond 2 * ``target`` : 1 (e.g. a 1 x 2100 image for SAM's 1024) the official rounding
    would give an empty side, where this keeps one pixel.
    """
    scale = float(target) / max(size)
    return max(1, int(scale * size[0] + 0.5)), max(1, int(scale * size[1] + 0.5))


def yx_to_xy(points_yx: np.ndarray) -> np.ndarray:
    """The one conversion from the package's (y, x) order to the models' (x, y) order."""
    return np.asarray(points_yx, dtype=np.float64)[..., ::-1].copy()


def box_yx_to_xy(box_yx: np.ndarray) -> np.ndarray:
    """(y0, x0, y1, x1) → (x0, y0, x1, y1)."""
    y0, x0, y1, x1 = np.asarray(box_yx, dtype=np.float64)
    return np.array([x0, y0, x1, y1])


def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


class _Transform:
    """What both conventions share: a box is its two corners, transformed as points."""

    def points_to_input(self, points_yx: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
        raise NotImplementedError

    def box_to_input(self, box_yx: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
        """(y0, x0, y1, x1) in original pixels → (x0, y0, x1, y1) in the model's input frame."""
        corners = np.asarray(box_yx, dtype=np.float64).reshape(2, 2)
        return self.points_to_input(corners, geometry).reshape(4)


def upsampled_crop(logits: torch.Tensor, size: int, crop: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(logits, (size, size), bilinear)[..., :h, :w]``, computing only the rows and columns kept.

    With an integer factor ``f = size / logits_size`` an output pixel reads input rows ``floor((i + 0.5) / f - 0.5)``
    and the next one, so the first ``ceil(h / f) + 1`` input rows give the same values at the same scale
    (bit-identical: same sizes ratio, same weights, no clamping difference).
    """
    low_h, low_w = logits.shape[-2:]
    h, w = crop
    if size % low_h or size % low_w:
        return F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)[..., :h, :w]
    fh, fw = size // low_h, size // low_w
    keep_h, keep_w = min(low_h, -(-h // fh) + 1), min(low_w, -(-w // fw) + 1)
    part = F.interpolate(logits[..., :keep_h, :keep_w], (keep_h * fh, keep_w * fw), mode="bilinear",
                         align_corners=False)
    return part[..., :h, :w]


def resized(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False), skipped when the size is already right (it would be the identity)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size, mode="bilinear", align_corners=False)


class SamTransform(_Transform):
    """segment-anything's ``SamPredictor`` conventions (used with the official SAM checkpoints)."""

    name = "sam-v1"

    def __init__(self, input_size: int = 1024) -> None:
        self.input_size = input_size

    def geometry(self, original_size: tuple[int, int]) -> ImageGeometry:
        size = (int(original_size[0]), int(original_size[1]))
        return ImageGeometry(size, size, longest_side_size(size, self.input_size), self.input_size)

    def image_to_input(self, image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(H, W, 3) uint8 RGB → normalised, padded (1, 3, S, S) tensor."""
        # ``ResizeLongestSide.apply_image`` with the target size of :func:`longest_side_size` (the same size except
        # for images beyond 2048:1, where the official one would be 0 pixels wide and fail)
        resized = np.array(resize(to_pil_image(image), longest_side_size(image.shape[:2], self.input_size)))
        x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
        mean, std = _normalisation(device)
        if dtype == torch.float64:  # as the official Sam.preprocess of a float64 model: float32 constants, float64 math
            x, mean, std = x.to(dtype), mean.to(dtype), std.to(dtype)
        x = (x - mean) / std
        h, w = x.shape[-2:]
        x = F.pad(x, (0, self.input_size - w, 0, self.input_size - h))
        return x.to(dtype)

    def points_to_input(self, points_yx: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
        (h, w), (new_h, new_w) = geometry.original_size, geometry.resized_size
        xy = yx_to_xy(points_yx)
        xy[..., 0] *= new_w / w
        xy[..., 1] *= new_h / h
        return xy.astype(np.float32)

    def logits_to_original(self, logits: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
        """``SamPredictor``'s post-processing: upsample to S², crop the resized image, resize to the original."""
        return resized(upsampled_crop(logits, self.input_size, geometry.resized_size), geometry.original_size)


class FocsamTransform(_Transform):
    """The official FocSAM pipeline's conventions (BGR + RGB statistics, /32 pre-padding, no antialiasing)."""

    name = "focsam-v1"
    size_divisor = 32

    def __init__(self, input_size: int = 1024) -> None:
        self.input_size = input_size

    def geometry(self, original_size: tuple[int, int]) -> ImageGeometry:
        h, w = (int(original_size[0]), int(original_size[1]))
        d = self.size_divisor
        padded = (-(-h // d) * d, -(-w // d) * d)
        return ImageGeometry((h, w), padded, longest_side_size(padded, self.input_size), self.input_size)

    def image_to_input(self, image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(H, W, 3) uint8 RGB → BGR, normalised with RGB statistics, /32-padded, resized, padded to S²."""
        geometry = self.geometry(image.shape[:2])
        bgr = np.ascontiguousarray(image[..., ::-1])
        x = torch.as_tensor(bgr, device=device).permute(2, 0, 1)[None].float()
        mean, std = _normalisation(device)
        x = (x - mean) / std
        (h, w), (ph, pw) = geometry.original_size, geometry.padded_size
        x = F.pad(x, (0, pw - w, 0, ph - h)).to(dtype)
        x = F.interpolate(x, geometry.resized_size, mode="bilinear", align_corners=False, antialias=False)
        rh, rw = geometry.resized_size
        return F.pad(x, (0, self.input_size - rw, 0, self.input_size - rh))

    def points_to_input(self, points_yx: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
        (ph, pw), (rh, rw) = geometry.padded_size, geometry.resized_size
        xy = torch.as_tensor(yx_to_xy(points_yx), dtype=torch.float32)
        xy[..., 0] = xy[..., 0] * (rw / pw)
        xy[..., 1] = xy[..., 1] * (rh / ph)
        return xy.numpy()

    def logits_to_original(self, logits: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
        """The official post-processing: upsample to S², crop the resized image, resize to the /32-padded size,
        crop the original."""
        padded = resized(upsampled_crop(logits, self.input_size, geometry.resized_size), geometry.padded_size)
        h, w = geometry.original_size
        return padded[..., :h, :w]


class StretchTransform(_Transform):
    """PA-SAM's (and HQ-SAM's) official evaluation frame: the image stretched to S² (aspect ratio not kept).

    As their ``evaluate()``: a float32 bilinear resize (no antialiasing) truncated back to uint8, SAM's
    normalisation; coordinates scale per axis; the low-resolution logits are interpolated straight to the original
    size (no S² upsampling and crop). With several threads torch's float32 bilinear resize can differ from the
    single-threaded one by one grey level on a few pixels.
    """

    name = "stretch-v1"

    def __init__(self, input_size: int = 1024) -> None:
        self.input_size = input_size

    def geometry(self, original_size: tuple[int, int]) -> ImageGeometry:
        size = (int(original_size[0]), int(original_size[1]))
        return ImageGeometry(size, size, (self.input_size, self.input_size), self.input_size)

    def image_to_input(self, image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, (self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = x.to(torch.uint8)  # truncation toward zero, as numpy's astype(np.uint8) of these non-negative values
        work = torch.float64 if dtype == torch.float64 else torch.float32
        mean, std = (t.to(work) for t in _normalisation(device))
        return ((x.to(work) - mean) / std).to(dtype)

    def points_to_input(self, points_yx: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
        (h, w), s = geometry.original_size, self.input_size
        xy = yx_to_xy(points_yx)
        xy[..., 0] *= s / w
        xy[..., 1] *= s / h
        return xy.astype(np.float32)

    def logits_to_original(self, logits: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
        return resized(logits, geometry.original_size)


class MedsamTransform(StretchTransform):
    """MedSAM's conventions (``MedSAM_Inference.py`` and ``gui.py`` of bowang-lab/MedSAM).

    The RGB image is stretched to S² with scikit-image's ``resize(order=3, preserve_range=True,
    anti_aliasing=True)`` and truncated to uint8, then min-max scaled over the whole image to [0, 1]
    (``(x - min) / max(max - min, 1e-8)``, in float64, then float32); SAM's mean and std are **not** applied (MedSAM
    calls the image encoder directly). Coordinates: ``x / W * S`` and ``y / H * S``. Masks: MedSAM interpolates the
    *probabilities* ``sigmoid(low-res logits)`` bilinearly to the original size and keeps ``> 0.5``; the logits
    returned here are ``logit`` of those probabilities (clamped to 1e-6 … 1 - 1e-6), so ``> 0`` is exactly MedSAM's
    mask (interpolating logits instead would differ near edges).
    """

    name = "medsam-v1"

    def image_to_input(self, image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        from skimage.transform import resize as sk_resize

        s = self.input_size
        big = sk_resize(np.asarray(image, dtype=np.uint8), (s, s), order=3, preserve_range=True,
                        anti_aliasing=True).astype(np.uint8)
        scaled = (big - big.min()) / np.clip(big.max() - big.min(), a_min=1e-8, a_max=None)
        x = torch.tensor(scaled).float().permute(2, 0, 1)[None]
        return x.to(device=device, dtype=dtype)

    def points_to_input(self, points_yx: np.ndarray, geometry: ImageGeometry) -> np.ndarray:
        (h, w), s = geometry.original_size, self.input_size
        xy = yx_to_xy(points_yx)
        xy[..., 0] = xy[..., 0] / w * s
        xy[..., 1] = xy[..., 1] / h * s
        return xy.astype(np.float32)

    def logits_to_original(self, logits: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
        probabilities = resized(torch.sigmoid(logits), geometry.original_size)
        return torch.logit(probabilities, eps=1e-6)


_Frame = SamTransform | FocsamTransform | StretchTransform | MedsamTransform
TRANSFORMS: dict[str, type[_Frame]] = {
    "sam": SamTransform, "focsam": FocsamTransform, "stretch": StretchTransform, "medsam": MedsamTransform,
}


def make_transform(preprocessing: str, input_size: int = 1024
                   ) -> SamTransform | FocsamTransform | StretchTransform | MedsamTransform:
    try:
        return TRANSFORMS[preprocessing](input_size)
    except KeyError:
        raise ValueError(f"unknown preprocessing {preprocessing!r}; known: {', '.join(TRANSFORMS)}") from None
