"""The widget's stack tools in a real viewer: precompute (model cache / store folder, progress, cancel + resume),
propagation through z, batch from a prompts file, and failures (removed layer mid-job, bad file, 2D image)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator  # noqa: E402

from napari_focsam.engine.image import to_model_rgb  # noqa: E402
from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.plugin import stack_panel as stack_panel_module  # noqa: E402
from napari_focsam.plugin.stack_panel import BATCH_LAYER  # noqa: E402
from napari_focsam.plugin.stack_work import store_path  # noqa: E402
from napari_focsam.stack import segment_from_prompts  # noqa: E402

pytestmark = pytest.mark.gui

N_Z, SIZE = 6, 64
CENTRE = (32, 26)


def _blob_stack() -> tuple[np.ndarray, np.ndarray]:
    """A bright blob through every slice (radius 13 in the middle, 10 at the ends, drifting right) in noise, and a
    second smaller blob on the right; returns the stack and the first blob's ground truth."""
    z, y, x = np.mgrid[:N_Z, :SIZE, :SIZE]
    radius = 13 - np.abs(z - (N_Z - 1) / 2) * 1.2
    first = (y - CENTRE[0]) ** 2 + (x - CENTRE[1] - z) ** 2 < radius**2
    second = (y - 16) ** 2 + (x - 52) ** 2 < 6**2
    noise = np.random.default_rng(0).normal(0, 6, first.shape)
    return np.clip(40 + 150 * first + 120 * second + noise, 0, 255).astype(np.uint8), first


def _manager(name: str) -> ModelManager:
    if name == "fallback":
        return ModelManager.load("fallback")
    return ModelManager.load(name, device="cpu", allow_random_weights=True)



def _key(manager, image_slice) -> str:
    return manager.key_for(to_model_rgb(image_slice, contrast_limits=(0, 255)))


def _record_progress(panel) -> list[tuple[int, int, int]]:
    seen: list[tuple[int, int, int]] = []
    panel._relay.advanced.connect(lambda *args: seen.append(args))
    return seen


@pytest.mark.parametrize("model", ["fallback", "focsam_tiny"])
def test_precompute_fills_the_cache_and_later_clicks_embed_nothing(make_napari_viewer, model):
    viewer = make_napari_viewer()
    stack, _ = _blob_stack()
    manager = _manager(model)
    widget = annotator(viewer, manager, stack)
    c, panel = widget.controller, widget.stack_panel
    shown = c.index[0]
    assert _key(manager, stack[shown]) in manager.cache  # the shown slice, embedded when the layers were chosen
    assert sum(_key(manager, stack[z]) in manager.cache for z in range(N_Z)) == 1
    seen = _record_progress(panel)
    worker = panel.precompute()
    assert worker is not None and panel.busy and panel.cancel_button.isEnabled()
    assert not panel.precompute_button.isEnabled()
    c.wait()
    assert not panel.busy and panel.precompute_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert all(_key(manager, stack[z]) in manager.cache for z in range(N_Z))
    job = panel.last_job
    assert job.delivered and (job.done, job.total) == (N_Z, N_Z)
    assert [done for _, done, _ in seen] == list(range(N_Z + 1))  # every slice reported
    assert job.pbar not in napari.utils.progress._all_instances  # the progress bar is closed
    assert (job.result.computed, job.result.reused) == (N_Z - 1, 1)
    assert "precomputed 6 slices" in widget.status.text()

    misses = manager.cache.stats.misses
    viewer.dims.set_current_step(0, 5 if shown != 5 else 0)
    c.click(*CENTRE)
    c.wait()
    assert c.session() is not None and c.session().n_steps == 1
    if model == "fallback":
        assert (c.labels.data[c.index] != 0).any()
    assert manager.cache.stats.misses == misses  # nothing was embedded again


def test_precompute_into_a_store_folder_resumes_after_cancel(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    stack, _ = _blob_stack()
    manager = _manager("fallback")
    widget = annotator(viewer, manager, stack)
    c, panel = widget.controller, widget.stack_panel
    panel.store_edit.setText(str(tmp_path))
    real_embed, calls = manager.predictor.embed, []

    def embed(image, cancel=None):  # the third slice embedded cancels the job (as the Cancel button does)
        calls.append(1)
        if len(calls) == 3:
            panel.job.token.cancel()
        return real_embed(image, cancel=cancel)

    manager.predictor.embed = embed
    panel.precompute()
    c.wait()
    first = panel.last_job
    assert not first.delivered and first.token.cancelled and 0 < first.done < N_Z
    assert f"cancelled after {first.done} of 6 slices" in widget.status.text() and "resume" in widget.status.text()
    path = store_path(tmp_path, "image", "fallback")
    assert path == tmp_path / "image.fallback.zarr" and path.is_dir()

    n_first = len(calls)
    panel.precompute()  # resumes: the slices written are verified, only the others are embedded
    c.wait()
    summary = panel.last_job.result
    assert (summary.reused, summary.computed, summary.store) == (first.done, N_Z - first.done, path)
    assert summary.attached and any(getattr(s, "path", None) == path for s in manager.cache.sources)
    assert len(calls) - n_first == N_Z - first.done

    manager.cache.clear()  # memory emptied: the store alone serves the slices now
    calls.clear()
    viewer.dims.set_current_step(0, 5)
    c.click(*CENTRE)
    c.wait()
    assert calls == [] and manager.cache.stats.hits_source >= 1
    assert (c.labels.data[5] != 0).any()


@pytest.mark.parametrize("model", ["fallback", "focsam_tiny"])
def test_propagate_writes_the_object_on_neighbouring_slices_as_one_step(make_napari_viewer, model):
    viewer = make_napari_viewer()
    stack, truth = _blob_stack()
    widget = annotator(viewer, _manager(model), stack)
    c, panel = widget.controller, widget.stack_panel
    c.labels.data[3, 0:6, 0:6] = 9  # another object, on a slice the propagation reaches
    c.labels.refresh()
    viewer.dims.set_current_step(0, 2)
    if model == "fallback":  # the current object, segmented by a click
        c.object_id = c.labels.selected_label = 10
        c.click(CENTRE[0], CENTRE[1] + 2)
        c.wait()
    else:  # a committed object (painted by hand), picked with the colour picker
        c.labels.data[2][truth[2]] = 10
        c.labels.refresh()
        c._start_new_object()
        c.labels.selected_label = 10
    on_slice = c.labels.data[2].copy()
    assert (on_slice == 10).any()
    before = c.labels.data.copy()
    panel.propagate()
    c.wait()
    after = c.labels.data.copy()
    np.testing.assert_array_equal(after[2], on_slice)
    assert (after[:, 0:6, 0:6][3] == 9).all()
    assert "propagated" in widget.status.text()
    if model == "fallback":
        for z in (1, 3):  # the neighbours get the object, where the blob is
            mask = after[z] == 10
            iou = (mask & truth[z]).sum() / (mask | truth[z]).sum()
            assert iou > 0.6, (z, iou)
    changed = np.nonzero((after != before).any(axis=(1, 2)))[0].tolist()
    assert 2 not in changed and set(changed) <= set(range(N_Z))
    if changed:
        c.labels.undo()  # one undo step takes the whole propagation back
        np.testing.assert_array_equal(c.labels.data, before)
        c.labels.redo()
        np.testing.assert_array_equal(c.labels.data, after)
    if model == "fallback":
        c.cancel()  # cancelling the current object removes it from every slice it was propagated to
        assert not (c.labels.data == 10).any() and (c.labels.data[3, 0:6, 0:6] == 9).all()


def test_propagate_needs_the_object_on_the_shown_slice(make_napari_viewer):
    viewer = make_napari_viewer()
    stack, _ = _blob_stack()
    widget = annotator(viewer, _manager("fallback"), stack)
    assert widget.stack_panel.propagate() is None
    assert "no pixels on this slice" in widget.status.text()
    assert not widget.controller.labels.data.any()


def _prompts_file(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("slice,object_id,y,x,label\n"
                    f"1,1,{CENTRE[0]},{CENTRE[1] + 1},positive\n"
                    "4,2,16,52,positive\n"
                    f"4,3,{CENTRE[0]},{CENTRE[1] + 4},positive\n")
    return path


@pytest.mark.parametrize("model", ["fallback", "sam_tiny"])
def test_batch_from_a_prompts_file_makes_a_new_labels_layer(make_napari_viewer, tmp_path, model):
    viewer = make_napari_viewer()
    stack, _ = _blob_stack()
    manager = _manager(model)
    widget = annotator(viewer, manager, stack)
    c, panel = widget.controller, widget.stack_panel
    c.click(*CENTRE)  # an object in progress in the annotation labels: never touched by the batch
    c.wait()
    annotation = c.labels.data.copy()
    path = _prompts_file(tmp_path)
    panel.batch(path)
    c.wait()
    batch = viewer.layers[BATCH_LAYER]
    assert isinstance(batch, napari.layers.Labels) and batch.data.shape == stack.shape
    expected = segment_from_prompts(stack, path, manager, contrast_limits=(0, 255))
    np.testing.assert_array_equal(batch.data, expected)
    assert not np.delete(batch.data, [1, 4], axis=0).any()
    if model == "fallback":
        assert (batch.data[1] == 1).any() and (batch.data[4] == 2).any() and (batch.data[4] == 3).any()
    np.testing.assert_array_equal(c.labels.data, annotation)
    assert panel.prompts_edit.text() == str(path)
    assert "objects in the new labels layer" in widget.status.text()


def test_batch_into_the_labels_layer_fills_only_the_background(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    stack, _ = _blob_stack()
    manager = _manager("fallback")
    widget = annotator(viewer, manager, stack)
    c, panel = widget.controller, widget.stack_panel
    c.labels.data[1, CENTRE[0] - 3:CENTRE[0] + 3, :] = 7  # a committed object across the blob on slice 1
    c.labels.refresh()
    c._start_new_object()
    before = c.labels.data.copy()
    panel.into_labels_box.setChecked(True)
    panel.prompts_edit.setText(str(_prompts_file(tmp_path)))
    panel.batch_button.click()
    c.wait()
    expected = segment_from_prompts(stack, tmp_path / "prompts.csv", manager, contrast_limits=(0, 255))
    after = c.labels.data
    assert BATCH_LAYER not in viewer.layers
    np.testing.assert_array_equal(after[before != 0], before[before != 0])  # committed pixels kept
    fill = (before == 0) & (expected != 0)
    np.testing.assert_array_equal(after[fill], expected[fill])
    assert (after == 1).any() and (after == 3).any()
    assert c.object_id == int(after.max()) + 1  # the next object gets a fresh id
    c.labels.undo()
    np.testing.assert_array_equal(c.labels.data, before)


def test_removing_the_image_mid_job_stops_it_with_a_message(make_napari_viewer, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(stack_panel_module, "show_warning", shown.append)
    viewer = make_napari_viewer()
    stack, _ = _blob_stack()
    manager = _manager("fallback")
    widget = annotator(viewer, manager, stack)
    c, panel = widget.controller, widget.stack_panel
    image, labels = c.image, c.labels
    entered, release = threading.Event(), threading.Event()
    real_embed = manager.predictor.embed

    def embed(image_slice, cancel=None):
        entered.set()
        release.wait(timeout=30)
        return real_embed(image_slice, cancel=cancel)

    manager.predictor.embed = embed
    panel.precompute()
    assert entered.wait(timeout=30)
    viewer.layers.remove(image)
    release.set()
    c.wait()
    assert any("the layer 'image' was removed" in text for text in shown)
    assert "stopped" in widget.status.text() and "nothing was written" in widget.status.text()
    assert not panel.busy and panel.precompute_button.isEnabled()
    assert panel.last_job.stopped and not panel.last_job.delivered
    assert not labels.data.any()

    # a batch whose image goes away adds no layer
    manager.predictor.embed = real_embed
    viewer.add_image(stack, name="image 2")
    widget.use_layers()
    c.wait()
    entered.clear()
    release.clear()
    manager.predictor.embed = embed
    manager.cache.clear()
    panel.batch(_prompts_file(tmp_path))
    assert entered.wait(timeout=30)
    viewer.layers.remove(viewer.layers["image 2"])
    release.set()
    c.wait()
    assert BATCH_LAYER not in viewer.layers and not panel.last_job.delivered


def test_failures_become_messages_and_change_nothing(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    stack, _ = _blob_stack()
    widget = annotator(viewer, _manager("focsam_tiny"), stack)
    c, panel = widget.controller, widget.stack_panel
    n_layers = len(viewer.layers)
    bad = tmp_path / "bad.csv"
    bad.write_text("slice,object_id,y,x\n9,1,10,10\n")
    panel.batch(bad)
    c.wait()
    assert "slice 9 is outside the stack" in widget.status.text()
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("slice,object_id,y0,x0,y1,x1\n1,1,10,10,40,40\n")
    panel.batch(boxes)
    c.wait()
    assert "takes clicks only" in widget.status.text()
    assert len(viewer.layers) == n_layers and not c.labels.data.any() and not panel.busy

    flat = viewer.add_image(stack[0], name="flat")
    c.detach()
    widget.image_combo.setCurrentIndex(widget.image_combo.findData(flat))
    assert panel.precompute() is None and "needs a 3D stack" in widget.status.text()
    assert panel.propagate() is None and "Use these layers" in widget.status.text()
