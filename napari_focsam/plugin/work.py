"""The controller's worker side lives in :mod:`napari_focsam.engine.work` (shared with the notebook annotator)."""

from ..engine.work import ClickResult, TileSettings, compute_object, embed_slice

__all__ = ["ClickResult", "TileSettings", "compute_object", "embed_slice"]
