"""The napari plugin with a real viewer (Xvfb + OpenGL): manifest, clicks → Labels, objects, slices, failures."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import yaml
from conftest import REPO

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402

from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.plugin.widget import FocsamWidget  # noqa: E402

pytestmark = pytest.mark.gui


def test_every_manifest_python_name_imports():
    manifest = yaml.safe_load((REPO / "napari_focsam" / "napari.yaml").read_text())
    names = [c["python_name"] for c in manifest["contributions"]["commands"]]
    assert names
    for name in names:
        module, attr = name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name



@pytest.fixture(scope="module")
def tiny_manager() -> ModelManager:
    return ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)



def test_clicks_update_labels_and_undo_redo_commit(make_napari_viewer, tiny_manager):
    viewer = make_napari_viewer()
    widget = annotator(viewer, tiny_manager, disc_image())
    c = widget.controller
    labels = c.labels
    assert c.object_id == 1 and c.points.mode == "add"

    c.click(60, 70)
    c.wait()
    first = labels.data.copy()
    assert (first == 1).any() and set(np.unique(first)) <= {0, 1}
    assert c.session().n_steps == 1

    c.click(20, 20, positive=False)
    c.wait()
    second = labels.data.copy()
    assert c.session().is_refined and c.session().n_steps == 2
    assert widget.buttons["undo"].isEnabled()

    c.undo()
    np.testing.assert_array_equal(labels.data, first)
    assert len(c.points.data) == 1 and c.session().n_steps == 1
    c.redo()
    np.testing.assert_array_equal(labels.data, second)
    assert len(c.points.data) == 2 and not bool(c.points.features["positive"].iloc[1])

    c.commit()
    assert c.object_id == 2 and len(c.points.data) == 0
    c.click(100, 140)
    c.wait()
    assert (labels.data == 2).any()
    # object 1 is never overwritten by object 2
    assert ((second == 1) == (labels.data == 1)).all()


def test_cancel_restores_the_labels_and_reopen_keeps_refining(make_napari_viewer, tiny_manager):
    viewer = make_napari_viewer()
    widget = annotator(viewer, tiny_manager, disc_image())
    c = widget.controller
    c.labels.data[0:5, 0:5] = 7  # something the user painted before
    c.labels.refresh()
    c.object_id = 8
    before = c.labels.data.copy()
    c.click(60, 70)
    c.wait()
    assert (c.labels.data == 8).any()
    assert (c.labels.data[0:5, 0:5] == 7).all()
    c.cancel()
    np.testing.assert_array_equal(c.labels.data, before)

    c.click(60, 70)
    c.click(40, 70, positive=False)
    c.wait()
    refined = c.session().state.features
    c.commit()
    assert c.object_id == 9
    c.reopen(8)
    assert c.object_id == 8 and len(c.points.data) == 2
    assert c.session().state.features is refined
    c.click(65, 90)
    c.wait()
    assert c.session().n_steps == 3 and c.session().state.features is refined


def test_slices_of_a_stack_have_their_own_objects(make_napari_viewer, tiny_manager):
    viewer = make_napari_viewer()
    stack = np.stack([disc_image(centre=(60, 40 + 5 * z)) for z in range(6)])
    widget = annotator(viewer, tiny_manager, stack)
    c = widget.controller
    assert c.labels.data.shape == stack.shape and c.points.ndim == 3
    viewer.dims.set_current_step(0, 3)
    assert c.index == (3,)
    c.click(60, 55)
    c.wait()
    assert (c.labels.data[3] == 1).any() and not np.delete(c.labels.data, 3, axis=0).any()
    viewer.dims.set_current_step(0, 1)
    c.click(60, 45)
    c.wait()
    assert (c.labels.data[1] == 1).any()
    key3, key1 = c._keys[(3,)], c._keys[(1,)]
    assert key3 != key1
    assert tiny_manager.get_object(key3, 1).n_steps == 1 and tiny_manager.get_object(key1, 1).n_steps == 1


def test_removed_layer_mid_job_gives_a_message_and_no_crash(make_napari_viewer, tiny_manager):
    viewer = make_napari_viewer()
    widget = annotator(viewer, tiny_manager, disc_image())
    c = widget.controller
    labels = c.labels
    c.click(60, 70)
    viewer.layers.remove(labels)
    c.wait()
    assert c.labels is None and not (labels.data != 0).any()
    # the widget can be attached again and keeps working
    widget._refresh_layers()
    widget.use_layers()
    c.click(60, 70)
    c.wait()
    assert (c.labels.data == 1).any()


def test_failed_job_leaves_layers_untouched(make_napari_viewer, tiny_manager, monkeypatch):
    viewer = make_napari_viewer()
    widget = annotator(viewer, tiny_manager, disc_image())
    c = widget.controller

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(tiny_manager.predictor, "predict", broken)
    c.commit()  # a fresh object: nothing cached for it
    c.click(60, 70)
    c.wait()
    assert not c.labels.data.any()
    assert "decoder exploded" in widget.status.text()


@pytest.mark.parametrize("key", ["coins", "ihc", "nuclei_3d"])
def test_sample_data_opens_in_a_real_viewer(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-focsam", key)
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.data.size > 0 and layer.name
    if key == "nuclei_3d":
        assert layer.data.ndim == 3


def test_the_widget_docks_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM annotator")
    assert isinstance(widget, FocsamWidget)


def test_the_load_button_loads_a_checkpoint_with_the_chosen_precision(make_napari_viewer, tmp_path):
    """Model, checkpoint file, device and precision from the widget's fields, loaded in a worker; the label says
    which encoder numerics are in use."""
    import torch

    from napari_focsam.models.fast_decoder import default_decoder_dtype
    from napari_focsam.models.fast_encoder import default_encoder_dtype
    from napari_focsam.models.sam import build_model
    from napari_focsam.models.specs import get_spec

    path = tmp_path / "sam_tiny.pth"
    torch.save(build_model(get_spec("sam_tiny"), seed=0).state_dict(), path)  # the official SAM layout
    viewer = make_napari_viewer()
    widget = FocsamWidget(viewer)
    widget.model_combo.addItem("SAM tiny (test)", "sam_tiny")
    widget.model_combo.setCurrentIndex(widget.model_combo.count() - 1)
    widget.checkpoint_edit.setText(str(path))
    widget.device_combo.setCurrentText("cpu")
    for precision, encoder, decoder in (("float32", torch.float32, torch.float32),
                                        ("fast", default_encoder_dtype("cpu"), default_decoder_dtype("cpu"))):
        widget.precision_combo.setCurrentIndex(widget.precision_combo.findData(precision))
        widget.load_button.click()
        assert not widget.load_button.isEnabled()  # while the worker loads
        widget.controller.wait()
        predictor = widget.controller.manager.predictor
        assert predictor.name == "sam_tiny" and predictor.source == str(path)
        assert predictor.encoder_dtype == encoder
        assert predictor.decoder_upscale_dtype == predictor.decoder_attention_dtype == decoder
        assert f"({str(encoder).replace('torch.', '')} encoder)" in widget.model_label.text()
        assert widget.load_button.isEnabled()
