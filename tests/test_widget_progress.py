"""Loads and embeddings report progress in the widget's own bar, counting the encoder's blocks, without napari's
animated activity indicator (which repaints the window continuously and slowed an embedding with the window shown)."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")

import napari
from _widget_support import disc_image

from napari_focsam.engine.manager import ModelManager
from napari_focsam.plugin.widget import FocsamWidget

pytestmark = pytest.mark.gui


def _widget_on_an_image(make_napari_viewer) -> tuple[FocsamWidget, list[tuple[str, int, int]]]:
    """A widget on the disc image and the progress reports its controller emits from now on."""
    viewer = make_napari_viewer()
    viewer.add_image(disc_image(), name="image")
    widget = FocsamWidget(viewer)
    widget.use_layers()
    reports: list[tuple[str, int, int]] = []
    widget.controller.progress.connect(lambda *r: reports.append(r))
    return widget, reports


def test_an_embedding_counts_its_blocks_in_the_widgets_bar(make_napari_viewer) -> None:
    widget, reports = _widget_on_an_image(make_napari_viewer)
    shown: list[bool] = []
    widget.controller.progress.connect(lambda *r: shown.append(widget.progress_bar.isVisibleTo(widget)))
    manager = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)
    bars_before = len(napari.utils.progress._all_instances)
    widget.controller.set_manager(manager)
    widget.controller.wait()
    blocks = len(manager.predictor.model.image_encoder.blocks)
    label = reports[0][0]
    assert label == "Embedding image" and reports[0][1:] == (0, blocks + 1)
    counts = [done for what, done, _ in reports if what]
    assert counts == sorted(counts) and counts[-1] == blocks  # one step per block; the last is the job's end
    assert reports[-1] == ("", 0, 0) and not widget.progress_bar.isVisibleTo(widget)
    assert shown[0] and not shown[-1]
    assert len(napari.utils.progress._all_instances) == bars_before  # no napari progress bar (no busy animation)


def test_a_model_load_shows_a_still_bar_with_its_name(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    widget = FocsamWidget(viewer)
    reports: list[tuple[str, int, int]] = []
    widget.controller.progress.connect(lambda *r: reports.append(r))
    widget.controller.load_model("fallback")
    assert widget.progress_bar.isVisibleTo(widget) and "Loading fallback" in widget.progress_bar.format()
    assert widget.progress_bar.maximum() == 1  # no busy animation
    widget.controller.wait()
    assert reports[0] == ("Loading fallback", 0, 0) and reports[-1] == ("", 0, 0)
    assert not widget.progress_bar.isVisibleTo(widget)


def test_loading_a_model_hands_the_bar_to_the_embedding_it_starts(make_napari_viewer) -> None:
    widget, reports = _widget_on_an_image(make_napari_viewer)
    widget.controller.load_model("sam_tiny", device="cpu", allow_random_weights=True)
    widget.controller.wait()
    names = [what for what, _, _ in reports]
    first_embedding = names.index("Embedding image")
    # the load's end does not hide the bar while the embedding it started runs: the only "" is the last report
    assert "" not in names[first_embedding:-1] and reports[-1] == ("", 0, 0)
    assert names[0] == "Loading sam_tiny" and "" not in names[:first_embedding]
