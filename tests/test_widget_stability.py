"""Prompt stability in a real viewer: computed after the mask is shown, never delaying it, cancelled by the next
click, shown as a number and a colour, and the unstable pixels as a layer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402

from napari_focsam.engine import stability as stability_module  # noqa: E402
from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.engine.types import Cancelled  # noqa: E402

pytestmark = pytest.mark.gui

CLICKS = lambda key: key[0] == "click"  # noqa: E731


class SlowVariants:
    """``predict_variants`` (the copies of a stability) made slow: it waits ``delay`` seconds, checking its cancel
    token like the real one does between stages, then runs the real thing. Records what happened."""

    def __init__(self, real, delay: float) -> None:
        self.real, self.delay = real, delay
        self.started, self.cancelled, self.finished = threading.Event(), [], []

    def __call__(self, *args, cancel=None, **kwargs):
        self.started.set()
        end = time.monotonic() + self.delay
        while time.monotonic() < end:
            if cancel is not None and cancel.cancelled:
                self.cancelled.append(time.monotonic())
                raise Cancelled()
            time.sleep(0.01)
        out = self.real(*args, cancel=cancel, **kwargs)
        self.finished.append(time.monotonic())
        return out


def test_stability_never_delays_the_mask_and_the_next_click_cancels_it(make_napari_viewer, monkeypatch):
    slow = SlowVariants(stability_module.predict_variants, delay=30.0)
    monkeypatch.setattr(stability_module, "predict_variants", slow)
    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), disc_image())
    c = widget.controller
    widget.stability_box.setChecked(True)
    started = time.monotonic()
    c.click(60, 70)
    c.wait(match=CLICKS)  # the mask is there while the stability is still being computed
    first_mask = time.monotonic() - started
    assert (c.labels.data == 1).any() and first_mask < 10
    assert slow.started.wait(10) and not slow.finished and c.jobs.background_busy
    assert 1 not in c.stabilities and "stability" not in widget.object_label.text()

    started = time.monotonic()
    c.click(40, 60, positive=False)  # the next click cancels it at once
    c.wait(match=CLICKS)
    assert slow.cancelled and slow.cancelled[0] - started < 5
    assert time.monotonic() - started < 10 and c.session().n_steps == 2
    slow.delay = 0.0  # the new click's stability runs to the end
    c.wait()
    assert len(slow.finished) == 1 and len(slow.cancelled) == 1
    score = c.stabilities[1]
    expected = c.session().stability(c.jitter).score
    assert score == pytest.approx(expected) and 0.0 <= score <= 1.0
    assert f"stability {score:.2f}" in widget.object_label.text()
    colour = "#2ca02c" if score >= 0.9 else "#ff8c00" if score >= 0.7 else "#d62728"
    assert colour in widget.object_label.text()


def test_the_unstable_pixels_layer_and_stability_after_undo(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), disc_image())
    c = widget.controller
    widget.stability_box.setChecked(True)
    widget.unstable_box.setChecked(True)
    c.click(60, 70)
    c.wait()  # two steps (quick clicks on the stateless fallback would be computed as one)
    c.click(20, 20, positive=False)
    c.wait()
    result = c.session().stability(c.jitter)
    layer = c.unstable_layer
    assert layer is not None and layer.name == "FocSAM unstable"
    np.testing.assert_array_equal(layer.data.astype(bool), result.unstable)
    assert viewer.layers.selection.active is c.points  # clicks still go to the clicks layer
    c.undo()
    c.wait()
    assert c.stabilities[1] == pytest.approx(c.session().stability(c.jitter).score)
    widget.unstable_box.setChecked(False)
    assert not layer.visible
    c.cancel()
    assert 1 not in c.stabilities and "stability" not in widget.object_label.text()


def test_stability_is_off_by_default_and_costs_nothing(make_napari_viewer, monkeypatch):
    calls = []
    monkeypatch.setattr(stability_module, "predict_variants", lambda *a, **k: calls.append(1))
    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), disc_image())
    c = widget.controller
    assert not widget.stability_box.isChecked()
    c.click(60, 70)
    c.wait()
    assert not calls and not c.stabilities
