"""Channels and physical scale in a real viewer: the channels the model sees (napari's channel_axis layers, mixed
in their colours through their contrast limits) are part of the embedding key; scale, translate and rotation map
clicks and writes to the right pixels (anisotropic 3D too); bad input is refused with a message."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_focsam.engine.channels import ChannelMix, mix_channels  # noqa: E402
from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.plugin.image_source import layer_colour  # noqa: E402
from napari_focsam.plugin.widget import FocsamWidget  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def manager() -> ModelManager:
    return ModelManager.load("fallback")


def _two_channels() -> np.ndarray:
    """Channel 0: a bright disc at (40, 40); channel 1: a bright square at (80, 110) (uint16)."""
    yy, xx = np.mgrid[:120, :160]
    image = np.full((2, 120, 160), 200, np.uint16)
    image[0][(yy - 40) ** 2 + (xx - 40) ** 2 < 15**2] = 3000
    image[1, 68:92, 98:122] = 3000
    return image


def _widget(viewer, manager, image_layer, channels=None):
    widget = FocsamWidget(viewer)
    widget.controller.set_manager(manager)
    widget.image_combo.setCurrentIndex(widget.image_combo.findData(image_layer))
    if channels is not None:
        widget.channel_list.check(channels)
    widget.use_layers()
    widget.controller.wait()
    return widget


def _expected_key(manager, layers) -> str:
    mix = ChannelMix(range(len(layers)), [layer_colour(layer) for layer in layers],
                     [tuple(layer.contrast_limits) for layer in layers])
    rgb = mix_channels(np.stack([layer.data for layer in layers]), mix)
    return manager.embed(rgb, rgb=True).key


def test_the_chosen_channels_decide_the_embedding_key_and_the_mask(make_napari_viewer, manager):
    viewer = make_napari_viewer()
    layers = viewer.add_image(_two_channels(), channel_axis=0, name=["nuclei", "membranes"])
    widget = _widget(viewer, manager, layers[0])
    assert widget.channel_list.isEnabled() and widget.channel_list.checked() == [layers[0]]
    c = widget.controller
    assert c.channel_layers == []  # the image alone
    alone = c._keys[()]

    widget.channel_list.check(list(layers))
    widget.use_layers()
    c = widget.controller
    assert c.channel_layers == list(layers)
    c.click(80, 110)  # the square: only in channel 1
    c.wait()
    mixed = c._keys[()]
    assert mixed != alone and mixed == _expected_key(manager, list(layers))
    square = c.labels.data == 1
    assert square[80, 110] and square[70:90, 100:120].mean() > 0.9 and not square[40, 40]

    layers[1].contrast_limits = (0, 6000)  # what the user sees changes: so does what the model sees
    c.set_channels(list(layers))
    c.wait()
    assert c._keys[()] not in (mixed, alone) and c._keys[()] == _expected_key(manager, list(layers))

    c.set_channels(list(layers), channels=[1])
    c.wait()
    assert c.channel_layers == [layers[1]] and c._keys[()] == _expected_key(manager, [layers[1]])


def test_bad_channel_choices_are_refused_with_a_message(make_napari_viewer, manager):
    viewer = make_napari_viewer()
    layers = viewer.add_image(_two_channels(), channel_axis=0)
    other = viewer.add_image(np.zeros((50, 50), np.uint8), name="small")
    c = _widget(viewer, manager, layers[0]).controller
    with pytest.raises(ValueError, match="channel 5 does not exist: the image has 2 channels"):
        c.set_channels(list(layers), channels=[0, 5])
    with pytest.raises(ValueError, match="channels share one grid"):
        c.set_channels([layers[0], other])
    assert c.channel_layers == []  # nothing changed


def test_attaching_with_bad_channels_attaches_nothing(make_napari_viewer, manager):
    from napari_focsam.plugin.controller import AnnotationController

    viewer = make_napari_viewer()
    layers = viewer.add_image(_two_channels(), channel_axis=0)
    other = viewer.add_image(np.zeros((50, 50), np.uint8), name="small")
    c = AnnotationController(viewer)
    c.set_manager(manager)
    n_layers = len(viewer.layers)
    with pytest.raises(ValueError, match="channels share one grid"):
        c.attach(layers[0], channels=[layers[0], other])
    assert c.image is None and not c.ready and len(viewer.layers) == n_layers  # no layers made, no job started
    assert not c.jobs.busy


def test_anisotropic_3d_scale_and_translate_map_world_clicks_to_pixels(make_napari_viewer, manager):
    viewer = make_napari_viewer()
    stack = np.full((5, 100, 120), 20, np.uint8)
    stack[3, 60:80, 30:50] = 220  # an object on slice 3
    scale, translate = np.array([4.0, 0.5, 2.0]), np.array([10.0, -3.0, 7.0])
    image = viewer.add_image(stack, scale=scale, translate=translate)
    widget = _widget(viewer, manager, image)
    c = widget.controller
    assert np.allclose(c.labels.scale, scale) and np.allclose(c.points.scale, scale)
    viewer.dims.set_point(0, 3 * 4.0 + 10.0)
    assert c.index == (3,)
    world = np.array([3, 70, 40]) * scale + translate  # where the user clicks on the canvas
    c.points.add(c.points.world_to_data(world))
    c.wait()
    mask = c.labels.data[3] == 1
    assert mask[70, 40] and mask[62:78, 32:48].all() and mask.sum() < 600 and not (c.labels.data[2] == 1).any()
    plain = manager.embed(stack[3], contrast_limits=tuple(image.contrast_limits)).key
    assert c._keys[(3,)] == plain  # scale moves coordinates, not pixels: the same embedding


def test_a_rotated_image_gets_aligned_layers_and_writes(make_napari_viewer, manager):
    viewer = make_napari_viewer()
    picture = np.full((100, 100), 20, np.uint8)
    picture[20:40, 60:85] = 230
    image = viewer.add_image(picture, rotate=30, scale=(2.0, 1.0), translate=(5, 5))
    c = _widget(viewer, manager, image).controller
    assert np.allclose(c.labels.affine.affine_matrix, image.affine.affine_matrix)
    assert np.allclose(c.labels._transforms[1:].simplified.affine_matrix,
                       image._transforms[1:].simplified.affine_matrix)
    c.points.add(c.points.world_to_data(image.data_to_world((30.0, 72.0))))
    c.wait()
    mask = c.labels.data == 1
    assert mask[30, 72] and mask[22:38, 62:83].all() and mask.sum() < 700


def test_a_non_positive_scale_is_refused_with_a_message(make_napari_viewer, manager):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 40), np.uint8), scale=(1.0, -2.0))  # a zero scale cannot even be shown
    widget = FocsamWidget(viewer)
    widget.controller.set_manager(manager)
    n = len(viewer.layers)
    widget.use_layers()
    assert widget.controller.image is None and len(viewer.layers) == n  # nothing attached, nothing made
    assert "non-positive scale -2 on axis 1" in widget.status.text() and "positive pixel size" in widget.status.text()
    flat = napari.layers.Image(np.zeros((40, 40), np.uint8))
    flat.scale = (0.0, 1.0)  # napari refuses it at construction, not later
    with pytest.raises(ValueError, match="non-positive scale 0 on axis 0"):
        widget.controller.attach(flat)


def test_labels_on_another_grid_are_refused(make_napari_viewer, manager):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 40), np.uint8), scale=(2.0, 2.0))
    labels = viewer.add_labels(np.zeros((40, 40), np.int32), scale=(1.0, 1.0))
    widget = FocsamWidget(viewer)
    widget.controller.set_manager(manager)
    widget.labels_combo.setCurrentIndex(widget.labels_combo.findData(labels))
    widget.use_layers()
    assert widget.controller.image is None and "not on the image's grid" in widget.status.text()
    assert not labels.data.any()
