"""``napari-focsam [IMAGE ...] [--model NAME] [--sample NAME]``: what opens, which model is chosen and loaded, that the
first run needs no network, and that subcommands and bad input behave (napari.run patched: no event loop)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")

from napari_focsam import cli  # noqa: E402
from napari_focsam.models.sam import build_model  # noqa: E402
from napari_focsam.models.specs import get_spec  # noqa: E402
from napari_focsam.plugin.widget import FocsamWidget  # noqa: E402
from napari_focsam.weights import preference  # noqa: E402
from napari_focsam.weights.registry import REGISTRY, ModelEntry, get_entry  # noqa: E402
from napari_focsam.weights.verify import record_verified  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(folder))
    (folder / "models").mkdir(parents=True)
    return folder / "models"


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every IP connection (Unix sockets stay allowed) and record the attempts."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError("network refused by the test")
        return real_connect(self, address)

    def create_connection(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts


@pytest.fixture
def launched(monkeypatch):
    """Run ``cli.main(argv)`` with napari.run patched; yields a function returning (status, viewer, widget)."""
    created = []
    real_viewer = napari.Viewer

    def viewer(*args, **kwargs):
        created.append(real_viewer(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(napari, "Viewer", viewer)
    ran: list[bool] = []
    monkeypatch.setattr(napari, "run", lambda *args, **kwargs: ran.append(True))

    def run(argv):
        status = cli.main(argv)
        if status != 0:
            assert ran == []  # no event loop after a failed launch (its viewer was closed by the launcher)
            created.clear()
            return status, None, None
        widgets = [w for w in dict(created[-1].window.dock_widgets).values() if isinstance(w, FocsamWidget)]
        assert ran == [True] and len(widgets) == 1
        return status, created[-1], widgets[0]

    yield run
    for v in created:
        v.close()


def _wait_loaded(qtbot, widget):
    qtbot.waitUntil(lambda: widget.controller.manager is not None, timeout=120_000)
    widget.controller.wait()


@pytest.mark.gui
def test_image_opens_with_the_annotator_and_the_fallback_offline(qtbot, tmp_path, cache, no_network, launched):
    import tifffile

    image = np.full((64, 80), 20, np.uint8)
    image[20:44, 30:60] = 220
    path = tmp_path / "blob.tif"
    tifffile.imwrite(path, image)

    status, viewer, widget = launched([str(path)])

    assert status == 0
    assert [layer.name for layer in viewer.layers if isinstance(layer, napari.layers.Image)] == ["blob"]
    np.testing.assert_array_equal(np.asarray(viewer.layers["blob"].data), image)
    assert widget.model_combo.currentData() == "fallback"
    assert widget.hint_label.isVisibleTo(widget) and "napari-focsam models download" in widget.hint_label.text()
    _wait_loaded(qtbot, widget)
    assert widget.controller.manager.name == "fallback"
    assert widget.controller.image is viewer.layers["blob"]  # attached: the first click works
    widget.controller.click(32, 45, positive=True)
    widget.controller.wait()
    labels = np.asarray(widget.controller.labels.data)
    assert labels[32, 45] > 0 and labels[5, 5] == 0
    assert no_network == []


@pytest.mark.gui
def test_no_image_opens_the_first_sample_and_a_click_segments_offline(qtbot, cache, no_network, launched):
    status, viewer, widget = launched([])
    assert status == 0
    assert [layer.name for layer in viewer.layers if isinstance(layer, napari.layers.Image)] == ["coins"]
    _wait_loaded(qtbot, widget)
    assert widget.controller.manager.name == "fallback"
    widget.controller.click(47, 52, positive=True)  # a coin of skimage's coins
    widget.controller.wait()
    assert np.asarray(widget.controller.labels.data).any()
    assert no_network == []


@pytest.mark.gui
def test_png_and_sample_and_model_options(qtbot, tmp_path, cache, launched):
    from PIL import Image

    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "rgb.png")
    status, viewer, widget = launched([str(tmp_path / "rgb.png"), "--sample", "cell", "--model", "fallback"])
    assert status == 0
    _wait_loaded(qtbot, widget)
    names = [layer.name for layer in viewer.layers if isinstance(layer, napari.layers.Image)]
    assert names[0] == "rgb" and names[1].startswith("cell") and viewer.layers["rgb"].data.shape == (16, 24, 3)
    assert widget.controller.image is viewer.layers["rgb"] and widget.controller.manager.name == "fallback"


@pytest.mark.gui
def test_cached_checkpoint_is_preselected_and_loaded_offline(qtbot, cache, no_network, launched, monkeypatch):
    """A real checkpoint in the cache, checked by its real sha256: a registered tiny SAM placed first in the order."""
    state = build_model(get_spec("sam_tiny"), seed=3).state_dict()
    path = cache / "sam_tiny_cached.pth"
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = ModelEntry(name="sam_tiny", display_name="SAM tiny (test)", spec_name="sam_tiny", preprocessing="sam",
                       file_name=path.name, sha256=digest, licence="test")
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    monkeypatch.setattr(preference, "PREFERENCE", ("sam_tiny", *preference.PREFERENCE))

    status, _viewer, widget = launched(["--sample", "coins"])

    assert status == 0 and widget.model_combo.currentData() == "sam_tiny"
    assert not widget.hint_label.isVisibleTo(widget)
    _wait_loaded(qtbot, widget)
    loaded = widget.controller.manager.predictor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert no_network == []


def test_preference_order_among_cached_files(cache):
    """The real order, with fake files: the seam is the on-disk verification record (what a check once passed
    writes), since random files cannot match the official hashes; an unrecorded file is hashed and refused."""
    assert preference.best_cached_model() == ("fallback", None)

    def place(name: str, record: bool) -> None:
        entry = get_entry(name)
        target = cache / entry.file_name
        target.write_bytes(name.encode())
        if record:
            record_verified(target, entry.checkpoint_sha256, entry.display_name)

    place("sam_vit_b", record=True)
    assert preference.best_cached_model() == ("sam_vit_b", cache / "sam_vit_b_01ec64.pth")
    place("sam_vit_h", record=False)  # present but not the official file: fails its hash check, not chosen
    assert preference.best_cached_model()[0] == "sam_vit_b"
    assert (cache / "sam_vit_h_4b8939.pth").is_file()  # a check at launch never deletes anything
    place("sam_vit_l", record=True)
    assert preference.best_cached_model()[0] == "sam_vit_l"
    place("sam_vit_h", record=True)
    assert preference.best_cached_model()[0] == "sam_vit_h"
    assert preference.PREFERENCE[0] == "focsam_vit_h" and get_entry("focsam_vit_h").sha256 is None


@pytest.mark.parametrize("argv, message", [
    (["missing_image.tif"], "no such file or folder: missing_image.tif"),
    (["--model", "sam_vit_x"], "unknown model 'sam_vit_x'"),
    (["--sample", "nope"], "unknown sample 'nope'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys, cache, monkeypatch):
    monkeypatch.setattr(napari, "Viewer", lambda *a, **k: pytest.fail("no viewer for bad input"))
    with pytest.raises(SystemExit) if argv[0] == "--bogus" else _nothing() as raised:
        status = cli.main(argv)
    status = raised.value.code if argv[0] == "--bogus" else status
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.gui
def test_unreadable_image_is_one_line_and_status_2(tmp_path, capsys, cache, launched):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff at all")
    status, _viewer, widget = launched([str(bad)])
    err = capsys.readouterr().err
    assert status == 2 and widget is None
    assert err.startswith(f"napari-focsam: error: cannot open {bad}") and len(err.strip().splitlines()) == 1, err


def test_subcommands_still_parse_as_commands(capsys):
    assert cli.main(["info"]) == 0
    assert "models:" in capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "napari_focsam.cli", "models", "list"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "sam_vit_b" in done.stdout, done.stderr
    with pytest.raises(SystemExit) as raised:
        cli.main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert "napari-focsam [IMAGE ...] [--model NAME] [--sample NAME]" in out and "segment" in out
