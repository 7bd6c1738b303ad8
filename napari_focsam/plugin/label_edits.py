"""Writing several slices or a whole label stack into the Labels layer as one undoable step (propagation and batch
results). Part of :class:`~napari_focsam.plugin.controller.AnnotationController`; runs on the GUI thread."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from napari.layers import Labels

from . import layers as L
from .controller_parts import ControllerParts


class LabelEdits(ControllerParts):
    """Bulk writes into the controller's Labels layer (a controller mixin)."""

    def write_masks(self, label: int, masks: Mapping[tuple[int, ...], np.ndarray]) -> int:
        """Write ``label``'s mask on several slices (e.g. a propagation through z) as one undoable step of the
        Labels layer. On each slice the label's pixels become the mask; other objects keep theirs unless
        ``overwrite``. For the current object, :meth:`cancel` still restores every slice. Returns pixels changed."""
        if self.labels is None:
            return 0
        changed = 0
        with _history_step(self.labels):
            for index, mask in masks.items():
                index = tuple(int(i) for i in index)
                base = L.slice_copy(self.labels, index)
                if label == self.object_id:
                    base = self._bases.setdefault((index, label), base)
                changed += L.write_object(self.labels, index, np.asarray(mask, bool), label, base,
                                          overwrite=self.overwrite)
        self.changed.emit()
        return changed

    def merge_labels(self, stack: np.ndarray) -> int:
        """Add a label stack (e.g. a batch result; its ids as they are) to the Labels layer as one undoable step.

        The current object is committed first. Only background pixels are filled, unless ``overwrite``: committed
        objects are never changed otherwise. The next object gets an id above every id now present. Returns the
        number of pixels changed."""
        if self.labels is None:
            return 0
        stack = np.asarray(stack)
        if stack.shape != self.labels.data.shape:
            raise ValueError(f"labels of shape {stack.shape} do not fit the Labels layer {self.labels.data.shape}")
        self.commit()
        changed = 0
        with _history_step(self.labels):
            for index in np.ndindex(*stack.shape[:-2]):
                new = stack[index]
                view = np.asarray(self.labels.data[index] if index else self.labels.data)
                take = (new != 0) & (new != view) & (self.overwrite | (view == 0))
                if take.any():
                    ys, xs = np.nonzero(take)
                    where = tuple(np.full(len(ys), i) for i in index) + (ys, xs)
                    self.labels.data_setitem(where, new[ys, xs].astype(self.labels.data.dtype))
                    changed += len(ys)
        self._start_new_object()
        self.changed.emit()
        return changed


def _history_step(labels: Labels) -> Any:
    """Group several writes into one undo step of the Labels layer where napari supports it."""
    block = getattr(labels, "block_history", None)
    return block() if callable(block) else contextlib.nullcontext()
