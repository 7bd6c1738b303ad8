"""The notebook annotator's Python half without a browser: messages in (through ipywidgets' own comm dispatch),
state and messages out (recorded at the comm, the very dicts and buffers a browser would get)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("anywidget")

from napari_focsam.engine.fallback import FallbackPredictor
from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.types import Prompts
from napari_focsam.notebook import Annotator
from napari_focsam.notebook.overlay import changed_box, rle_decode, rle_encode


def discs(shape=(120, 160), centres=((40, 50), (70, 115)), radius=18) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 30, np.uint8)
    for y, x in centres:
        image[(yy - y) ** 2 + (xx - x) ** 2 < radius**2] = 200
    return image


class Browser:
    """Stands in for the browser: sends messages the way the comm delivers them and records what comes back."""

    def __init__(self, ann: Annotator) -> None:
        self.ann = ann
        self.sent: list[tuple[dict, list[bytes]]] = []
        self.threads: list[tuple[str, str]] = []  # (message type, thread it was sent from)
        ann.comm.publish_msg = self._record

    def _record(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        if msg_type == "comm_close":
            return
        assert msg_type == "comm_msg" and data["method"] == "custom"
        self.sent.append((data["content"], [bytes(b) for b in buffers or []]))
        self.threads.append((data["content"]["type"], threading.current_thread().name))

    def __call__(self, **content) -> None:
        self.ann._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})

    def of(self, kind: str) -> list[tuple[dict, list[bytes]]]:
        return [(m, b) for m, b in self.sent if m["type"] == kind]

    def status(self) -> str:
        updates = [m for m, _ in self.sent if m["type"] == "update"]
        return updates[-1]["info"]["status"] if updates else ""


@pytest.fixture
def fallback_widget():
    ann = Annotator(discs(), "fallback").wait()
    browser = Browser(ann)
    yield ann, browser
    ann.close()


def overlay(browser: Browser, shape) -> np.ndarray:
    """The labels as the browser would hold them: the full slice of the last state, then every patch."""
    state = [(m, b) for m, b in browser.sent if m["type"] in ("state", "image") and len(b) == 3][-1]
    start = browser.sent.index(state)
    shown = rle_decode(state[1][1], state[1][2], shape)
    for message, buffers in browser.sent[start + 1:]:
        if message["type"] == "labels" and message["box"]:
            y0, x0, y1, x1 = message["box"]
            shown[y0:y1, x0:x1] = rle_decode(buffers[0], buffers[1], (y1 - y0, x1 - x0))
    return shown


def test_rle_round_trip_and_changed_box():
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 3, (7, 11)).astype(np.int32)
    assert np.array_equal(rle_decode(*rle_encode(patch), patch.shape), patch)
    a = np.zeros((50, 60), np.int32)
    b = a.copy()
    b[10:13, 20:31] = 4
    assert changed_box(a, b) == (10, 20, 13, 31) and changed_box(a, a) is None


def test_hello_click_undo_commit_messages_and_state(fallback_widget):
    ann, browser = fallback_widget
    image = discs()
    browser(type="hello")
    state, buffers = browser.of("state")[-1]
    assert (state["height"], state["width"], state["depth"]) == image.shape + (0,)
    assert buffers[0][:8] == b"\x89PNG\r\n\x1a\n" and state["info"]["model"] == "fallback"
    assert ["fallback", "weight-free fallback (scikit-image)"] in state["models"]

    browser(type="click", y=40, x=50, positive=True, seq=1)
    ann.wait()
    patch, _ = browser.of("labels")[-1]
    expected = ModelManager.load("fallback").segment(image, [(40, 50)])
    assert patch["seq"] == 1 and patch["model_ms"] > 0
    ys, xs = np.nonzero(expected)
    assert patch["box"] == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]  # only the changed box travels
    np.testing.assert_array_equal(ann.labels, expected.astype(np.int32))
    np.testing.assert_array_equal(overlay(browser, image.shape), ann.labels)  # the browser's copy agrees

    browser(type="click", y=40, x=62, positive=False, seq=2)
    ann.wait()
    assert browser.of("update")[-1][0]["prompts"]["points"] == [[40.0, 50.0, 1], [40.0, 62.0, 0]]
    browser(type="undo")
    np.testing.assert_array_equal(ann.labels, expected.astype(np.int32))
    assert browser.of("update")[-1][0]["info"]["can_redo"]
    browser(type="commit")
    ann.wait()
    assert ann.object_id == 2 and [(o.label, o.current) for o in ann.objects] == [(1, False)]
    assert browser.of("update")[-1][0]["prompts"]["points"] == []
    np.testing.assert_array_equal(overlay(browser, image.shape), ann.labels)


def test_refused_requests_are_messages_not_exceptions(fallback_widget):
    ann, browser = fallback_widget
    browser(type="click", y=-3, x=10, positive=True, seq=7)
    message = browser.of("update")[-1][0]
    assert "outside the image of 120×160 pixels" in message["info"]["status"] and message["refused"] == 7
    browser(type="box", y0=500, x0=500, y1=600, x1=700, seq=8)
    assert "outside the image" in browser.status()
    browser(type="reopen", label=5)
    assert "label 5 is not in the labels" in browser.status()
    browser(type="contrast", low=10, high=3)
    assert "low < high" in browser.status()
    browser(type="slice", z=2)
    assert "the image is 2D" in browser.status()
    browser(type="teleport")
    assert "unknown request 'teleport'" in browser.status()
    assert not ann.labels.any()


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (5,), (1, 50), (2, 3, 40, 50, 3)])
def test_unsupported_images_show_a_message(shape):
    ann = Annotator(np.zeros(shape, np.uint8), "fallback")
    browser = Browser(ann)
    browser(type="hello")
    message = browser.of("state")[-1][0]
    assert message["error"].startswith("Cannot annotate:") and ann.error
    browser(type="click", y=1, x=1, seq=1)  # ignored quietly: there is nothing to click on
    with pytest.raises(RuntimeError, match="this annotator has no image"):
        _ = ann.labels


def test_dask_and_zarr_stacks_with_a_slider_and_contrast(tmp_path):
    da = pytest.importorskip("dask.array")
    import zarr

    stack = np.stack([discs(centres=((30 + 10 * z, 50),)).astype(np.uint16) * 100 for z in range(4)])
    store = zarr.open(str(tmp_path / "stack.zarr"), mode="w", shape=stack.shape, dtype=stack.dtype, chunks=(1, 60, 80))
    store[:] = stack
    for data in (da.from_array(stack, chunks=(1, 120, 160)), store):
        ann = Annotator(data, "fallback").wait()
        browser = Browser(ann)
        assert ann.contrast_limits[1] > ann.contrast_limits[0]
        browser(type="slice", z=3)
        image_message = browser.of("image")[-1][0]
        assert image_message["z"] == 3 and image_message["depth"] == 4
        ann.wait()
        browser(type="click", y=60, x=50, positive=True, seq=1)
        ann.wait()
        labels = ann.labels
        assert labels.shape == (4, 120, 160) and labels[3].any() and not labels[:3].any()
        assert [(o.label, o.slices) for o in ann.objects] == [(1, (3,))]
        browser(type="contrast", low=0, high=20000)
        assert ann.contrast_limits == (0.0, 20000.0) and browser.of("image")[-1][0]["contrast"] == [0.0, 20000.0]
        ann.close()


class SlowFallback(FallbackPredictor):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def predict(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().predict(*args, **kwargs)


def test_model_work_never_runs_on_the_comm_thread_and_latest_click_wins():
    ann = Annotator(discs(), ModelManager(SlowFallback(0.3))).wait()
    browser = Browser(ann)
    start = time.perf_counter()
    for seq, x in enumerate((40, 45, 50, 55), start=1):
        browser(type="click", y=40, x=x, positive=True, seq=seq)
    assert time.perf_counter() - start < 0.2  # the handler returned at once each time
    ann.wait()
    answered = [m["seq"] for m, _ in browser.of("labels")]
    assert answered[-1] == 4 and len(answered) <= 2  # the clicks between were coalesced
    masks_from = {thread for kind, thread in browser.threads if kind == "labels"}
    assert masks_from and all(t.startswith("focsam-job") for t in masks_from)  # sent from the job threads
    expected = ModelManager.load("fallback").segment_prompts(discs(), Prompts([(40, x) for x in (40, 45, 50, 55)],
                                                                             [1, 1, 1, 1]))
    np.testing.assert_array_equal(ann.labels == 1, expected)
    ann.close()


def test_commit_while_a_job_runs_saves_calls_back_and_resumes(tmp_path):
    path = tmp_path / "labels.tif"
    committed = []
    ann = Annotator(discs(), ModelManager(SlowFallback(0.2)), save_to=path).wait()
    ann.on_commit(lambda label, mask: committed.append((label, int(mask.sum()))))
    ann.click(40, 50)
    assert ann.commit() == 1 and ann.object_id == 2  # at once, while the click is computed
    ann.wait()
    first = ModelManager.load("fallback").segment(discs(), [(40, 50)])
    assert committed == [(1, int(first.sum()))] and path.exists()
    ann.click(70, 115)
    ann.wait()
    ann.close()  # the kernel goes away with object 2 not committed
    again = Annotator(discs(), "fallback", save_to=path).wait()
    np.testing.assert_array_equal(again.labels, first.astype(np.int32))
    again.delete(1)
    import tifffile

    assert not tifffile.imread(path).any()
    again.save(tmp_path / "labels.npy")
    assert np.load(tmp_path / "labels.npy").shape == (120, 160)
    with pytest.raises(ValueError, match=r".tif, .tiff or .npy"):
        again.save(tmp_path / "labels.png")
    again.close()


def test_cancel_reopen_delete_and_no_overwrite(fallback_widget):
    ann, browser = fallback_widget
    ann.click(40, 50)
    ann.wait()
    ann.commit()
    first = ann.labels.copy()
    ann.click(70, 115)
    ann.wait()
    assert (ann.labels == 2).any()
    browser(type="cancel")
    np.testing.assert_array_equal(ann.labels, first)  # the cancelled object's pixels are back to what they were
    browser(type="select", label=1)
    browser(type="reopen")
    ann.wait()
    assert ann.object_id == 1 and "re-opened object 1" in browser.status()
    assert browser.of("update")[-1][0]["prompts"]["points"] == [[40.0, 50.0, 1]]
    browser(type="delete", label=1)
    assert not ann.labels.any()


def test_tiny_sam_boxes_and_a_click_only_model():
    image = discs()
    ann = Annotator(image, "sam_tiny", device="cpu", allow_random_weights=True).wait()
    browser = Browser(ann)
    browser(type="box", y0=20, x0=30, y1=60, x1=70, seq=1)
    browser(type="click", y=40, x=50, positive=True, seq=2)
    ann.wait()
    reference = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)
    expected = reference.segment_prompts(image, Prompts([(40, 50)], [1], box=np.array([20.0, 30, 60, 70])))
    # the same model and prompts; click jobs run with fewer torch threads (engine.threads), so float sums may round
    # differently at a few boundary pixels of a random-weight model
    assert np.mean((ann.labels == 1) == expected) > 0.995 and expected.any()
    ann.load_model("focsam_tiny", device="cpu", allow_random_weights=True)
    ann.wait()
    browser(type="box", y0=1, x0=1, y1=9, x1=9, seq=3)
    assert "takes clicks only" in browser.status()
    ann.close()
