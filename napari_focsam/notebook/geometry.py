"""Where the notebook annotator's pixels are in the world: a pixel size (``scale``), an origin (``translate``) and
optionally an ``affine``, as napari composes them for a layer: ``world = A · (scale · pixel + translate) + a``.

The annotator works in pixels (masks, labels, the embedding); a :class:`Geometry` converts clicks and boxes given in
world (physical) units to pixels (:meth:`Geometry.plane_to_pixels`: the point on the shown slice whose world y and x
are given), converts full points both ways, gives the canvas its aspect ratio (the pixel's size along y and x, so an
anisotropic image is shown with its true proportions) and the world size of a pixel (``voxel``: an object's area or
volume). Axes are the image's spatial ones: (y, x) for a 2D image, (z, y, x) for a stack. Bad values — a scale that
is not positive, non-finite numbers, an affine that cannot be inverted or has the wrong shape — are refused with a
message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


def _vector(value: Any, ndim: int, name: str, default: float) -> np.ndarray:
    if value is None:
        return np.full(ndim, default, np.float64)
    array = np.asarray(value, np.float64).reshape(-1)
    if array.size != ndim:
        raise ValueError(f"{name} needs {ndim} values ({', '.join(AXES[ndim])}) for this image, got "
                         f"{tuple(float(v) for v in array)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {tuple(float(v) for v in array)}")
    return array


def _affine(value: Any, ndim: int) -> np.ndarray:
    """An affine as a (ndim + 1)² homogeneous matrix (given as that, as ndim × (ndim + 1), or as its ndim² linear
    part)."""
    out = np.eye(ndim + 1)
    if value is None:
        return out
    matrix = np.asarray(value, np.float64)
    if matrix.shape == (ndim, ndim):
        out[:ndim, :ndim] = matrix
    elif matrix.shape in ((ndim, ndim + 1), (ndim + 1, ndim + 1)):
        out[:ndim] = matrix[:ndim]
        if matrix.shape[0] == ndim + 1 and not np.allclose(matrix[ndim], out[ndim]):
            raise ValueError("the affine's last row must be (0, …, 0, 1): a projective transform is not an affine")
    else:
        raise ValueError(f"the affine of a {ndim}D image is a {ndim}×{ndim}, {ndim}×{ndim + 1} or "
                         f"{ndim + 1}×{ndim + 1} matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError("the affine must hold finite numbers")
    return out


@dataclass(frozen=True, eq=False)
class Geometry:
    """The pixel → world transform of an image with ``ndim`` spatial axes (see the module)."""

    ndim: int
    matrix: np.ndarray  #: (ndim + 1)² homogeneous: world = matrix @ (pixel, 1)
    units: str = ""

    @classmethod
    def of(cls, ndim: int, scale: Sequence[float] | None = None, translate: Sequence[float] | None = None,
           affine: Any = None, units: str = "") -> Geometry:
        """Check the values and compose them; raises ValueError with a clear message otherwise."""
        scale_ = _vector(scale, ndim, "scale", 1.0)
        bad = [axis for axis, s in enumerate(scale_) if not s > 0]
        if bad:
            raise ValueError(f"the scale must be a positive pixel size on every axis, got {scale_[bad[0]]:g} on "
                             f"axis {AXES[ndim][bad[0]]} (scale {tuple(float(s) for s in scale_)})")
        translate_ = _vector(translate, ndim, "translate", 0.0)
        outer = _affine(affine, ndim)
        inner = np.eye(ndim + 1)
        inner[:ndim, :ndim] = np.diag(scale_)
        inner[:ndim, ndim] = translate_
        matrix = outer @ inner
        if abs(np.linalg.det(matrix[:ndim, :ndim])) < 1e-12 * float(np.prod(scale_)):
            raise ValueError("the affine cannot be inverted (it flattens the image): world points would not map "
                             "back to pixels")
        return cls(ndim, matrix, str(units))

    @property
    def identity(self) -> bool:
        return bool(np.allclose(self.matrix, np.eye(self.ndim + 1)))

    def to_world(self, pixels: Any) -> np.ndarray:
        """(N, ndim) pixel coordinates (centres at integers) → world coordinates."""
        points = np.asarray(pixels, np.float64).reshape(-1, self.ndim)
        return points @ self.matrix[: self.ndim, : self.ndim].T + self.matrix[: self.ndim, self.ndim]

    def to_pixels(self, world: Any) -> np.ndarray:
        """(N, ndim) world coordinates → pixel coordinates (the inverse of :meth:`to_world`)."""
        points = np.asarray(world, np.float64).reshape(-1, self.ndim)
        linear = self.matrix[: self.ndim, : self.ndim]
        return np.linalg.solve(linear, (points - self.matrix[: self.ndim, self.ndim]).T).T

    def plane(self, z: int = 0) -> np.ndarray:
        """The (ndim, 3) matrix taking (y, x, 1) of slice ``z`` to world coordinates (the widget's readout)."""
        out = self.matrix[: self.ndim, [self.ndim - 2, self.ndim - 1, self.ndim]].copy()
        if self.ndim == 3:
            out[:, 2] += self.matrix[:3, 0] * z
        return out

    def plane_to_pixels(self, points: Any, z: int = 0) -> np.ndarray:
        """(N, 2) world (y, x) of points on slice ``z`` → their (y, x) pixels; refused when the slice's plane is
        seen edge-on in world y and x (an affine that turns z into y or x)."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        plane = self.plane(z)[-2:]
        if abs(np.linalg.det(plane[:, :2])) < 1e-12 * max(1.0, float(np.abs(plane[:, :2]).max()) ** 2):
            raise ValueError("the slices of this image are edge-on in world y and x (see the affine): give the "
                             "point in pixels, or as a full world point (to_pixels)")
        return np.linalg.solve(plane[:, :2], (points - plane[:, 2]).T).T

    @property
    def pixel_size(self) -> tuple[float, float]:
        """The world length of one pixel step along y and along x (the canvas's aspect ratio)."""
        linear = self.matrix[: self.ndim, : self.ndim]
        return float(np.linalg.norm(linear[:, -2])), float(np.linalg.norm(linear[:, -1]))

    @property
    def voxel(self) -> float:
        """The world area (2D) or volume (stack) of one pixel."""
        return float(abs(np.linalg.det(self.matrix[: self.ndim, : self.ndim])))

    def state(self, z: int = 0) -> dict:
        """What the widget needs: the pixel's aspect, the readout's matrix for slice ``z``, the units."""
        return {"pixel_size": list(self.pixel_size), "world": self.plane(z).tolist(), "axes": list(AXES[self.ndim]),
                "units": self.units, "identity": self.identity}


__all__ = ["Geometry"]
