"""How clicks become masks in a real viewer (Xvfb): latest wins per slice and object, superseded work collapses,
committed objects keep their masks and little memory, and a click never waits behind a prefetch embedding."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402
from qtpy.QtCore import QThreadPool  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_focsam.engine.fallback import FallbackPredictor  # noqa: E402
from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.engine.session import ObjectSession  # noqa: E402
from napari_focsam.engine.threads import threads_for  # noqa: E402
from napari_focsam.engine.types import Prompts, check_cancel  # noqa: E402

pytestmark = pytest.mark.gui
N_Z = 10


class Slow:
    """A real predictor made slow, counting the model steps it starts (a step whose request was already
    cancelled is not started)."""

    def __init__(self, inner, predict_delay=0.0, embed_delay=None):
        self.inner, self.predict_delay = inner, predict_delay
        self.embed_delay = embed_delay or (lambda image: 0.0)  # seconds, given the image
        self.calls = 0
        self.slow_embeds: list[tuple[float, float]] = []  # (start, end) of the embeddings that were delayed
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, embedding, prompts, state, *, cancel=None):
        check_cancel(cancel)
        with self._lock:
            self.calls += 1
        time.sleep(self.predict_delay)
        return self.inner.predict(embedding, prompts, state, cancel=cancel)

    def embed(self, image, *, cancel=None):
        start, delay = time.monotonic(), self.embed_delay(image)
        time.sleep(delay)
        result = self.inner.embed(image, cancel=cancel)
        if delay:
            with self._lock:
                self.slow_embeds.append((start, time.monotonic()))
        return result


def _stack():
    return np.stack([disc_image(centre=(60, 50 + 5 * z)) for z in range(N_Z)])


def _pump(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.001)


@pytest.fixture(scope="module")
def tiny_manager() -> ModelManager:
    return ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)


def test_a_click_on_the_next_slice_keeps_the_mask_of_the_first(make_napari_viewer):
    viewer = make_napari_viewer()
    c = annotator(viewer, ModelManager.load("fallback"), _stack()).controller
    viewer.dims.current_step = (1, 0, 0)
    c.click(60, 55)
    viewer.dims.current_step = (2, 0, 0)
    c.click(60, 60)
    c.wait()
    assert (c.labels.data[1] == 1).any(), "the first slice's mask was lost"
    assert (c.labels.data[2] == 1).any()


def test_sixty_fast_clicks_over_ten_slices_then_commit_label_every_slice(make_napari_viewer):
    viewer = make_napari_viewer()
    c = annotator(viewer, ModelManager.load("fallback"), _stack()).controller
    for i in range(60):
        z = i % N_Z
        viewer.dims.current_step = (z, 0, 0)
        c.click(60 + (i // N_Z) % 3, 50 + 5 * z)
    c.commit()  # at once: the jobs still running must finish and be written
    assert c.object_id == 2
    c.wait()
    labelled = [z for z in range(N_Z) if (c.labels.data[z] == 1).any()]
    assert labelled == list(range(N_Z))
    assert not (c.labels.data == 2).any()
    c.click(20, 20)  # the next object gets its own id and leaves object 1 alone
    c.wait()
    assert (c.labels.data[c.index] == 2).any() and all((c.labels.data[z] == 1).any() for z in range(N_Z))


def test_cancel_is_the_one_action_that_discards_pending_clicks(make_napari_viewer):
    viewer = make_napari_viewer()
    manager = ModelManager(Slow(FallbackPredictor(), predict_delay=0.05))
    c = annotator(viewer, manager, _stack()).controller
    before = c.labels.data.copy()
    for z in (1, 2, 3):
        viewer.dims.current_step = (z, 0, 0)
        c.click(60, 50 + 5 * z)
    c.cancel()
    c.wait()
    np.testing.assert_array_equal(c.labels.data, before)
    assert len(c.points.data) == 0 and c.object_id == 1


def test_rapid_clicks_collapse_and_the_last_mask_is_exact(make_napari_viewer):
    viewer = make_napari_viewer()
    image = disc_image(shape=(256, 256), centre=(128, 128), radius=60)
    slow = Slow(FallbackPredictor(), predict_delay=0.3)  # one model step: longer than a click takes here
    c = annotator(viewer, ModelManager(slow), image).controller
    delivered = []
    c.status.connect(lambda text: text.startswith("click") and delivered.append((time.monotonic(), slow.calls)))
    rng = np.random.default_rng(0)
    clicks = [(int(y), int(x), bool(p)) for y, x, p in zip(rng.integers(80, 176, 100), rng.integers(80, 176, 100),
                                                              rng.random(100) < 0.8)]
    start = time.monotonic()
    for y, x, positive in clicks:
        c.click(y, x, positive=positive)
        _pump(0.01)
    last_click = time.monotonic()
    c.wait()
    assert delivered, "no mask was delivered"
    first_calls = delivered[0][1]
    lag = delivered[-1][0] - last_click
    print(f"100 clicks 10 ms apart (in {last_click - start:.1f} s): {first_calls} model steps before the first "
          f"mask, {slow.calls} in all, {len(delivered)} masks shown, the last {1000 * lag:.0f} ms after the last "
          "click (loaded machine)")
    assert first_calls <= min(40, (last_click - start) / slow.predict_delay + 2), \
        f"{first_calls} model steps before the first mask: superseded clicks were replayed"
    assert lag < 5.0  # a sanity bound only
    points = np.array([(y, x) for y, x, _ in clicks], float)
    labels = np.array([int(p) for _, _, p in clicks])
    expected = ModelManager(FallbackPredictor()).segment(image, points, labels, contrast_limits=(0, 255))
    np.testing.assert_array_equal(c.labels.data == 1, expected)


def test_rapid_clicks_on_focsam_replay_each_click_once_and_exactly(make_napari_viewer, tiny_manager):
    viewer = make_napari_viewer()
    image = disc_image()
    slow = Slow(tiny_manager.predictor, predict_delay=0.02)
    manager = ModelManager(slow)
    c = annotator(viewer, manager, image).controller
    clicks = [(60, 70, True), (20, 20, False), (65, 90, True), (50, 60, True), (90, 120, False), (55, 75, True),
              (40, 80, True), (70, 50, False)]
    for y, x, positive in clicks:
        c.click(y, x, positive=positive)
        _pump(0.005)
    c.wait()
    session = c.session()
    assert session.n_steps == len(clicks)
    assert slow.calls == len(clicks), "a completed step was computed again"
    prompts = Prompts(np.array([(y, x) for y, x, _ in clicks], float), np.array([int(p) for *_, p in clicks]))
    with threads_for("interactive"):  # the widget's clicks run with the interactive thread count (same rounding)
        reference = ObjectSession(tiny_manager.predictor, session.embedding).sync(prompts)
    np.testing.assert_array_equal(c.labels.data == 1, reference)


def test_committed_objects_keep_one_step_and_a_bounded_number_of_sessions(make_napari_viewer):
    viewer = make_napari_viewer()
    centres = [(25 + 50 * i, 25 + 50 * j) for i in range(4) for j in range(5)]
    image = np.full((200, 250), 30, np.uint8)
    yy, xx = np.mgrid[:200, :250]
    for y, x in centres:  # 20 separate discs: one object each
        image[(yy - y) ** 2 + (xx - x) ** 2 < 15**2] = 200
    manager = ModelManager.load("fallback")
    manager.keep_committed = 8
    c = annotator(viewer, manager, image).controller
    for y, x in centres:
        for dy, dx in ((0, 0), (5, 0), (0, -5)):
            c.click(y + dy, x + dx)
        c.wait()
        c.commit()
    c.wait()
    assert c.object_id == len(centres) + 1
    sessions = manager.objects()
    assert len(sessions) == manager.keep_committed, f"{len(sessions)} sessions open for 20 committed objects"
    assert sorted(s.object_id for s in sessions) == list(range(13, 21))  # the most recent ones
    for s in sessions:  # one step each, its mask packed to bits: undo stops there
        assert len(s.prompts) == 3 and not s.can_undo and s.current.prediction.mask.size == 0
        np.testing.assert_array_equal(s.mask, c.labels.data == s.object_id)
    assert c._bases == {}


def test_an_object_committed_while_its_job_runs_is_compacted_when_the_job_ends(make_napari_viewer):
    viewer = make_napari_viewer()
    slow = Slow(FallbackPredictor(), predict_delay=0.3)
    manager = ModelManager(slow)
    c = annotator(viewer, manager, disc_image()).controller
    c.click(60, 70)
    c.click(62, 75)
    time.sleep(0.05)
    c.commit()  # the first click's job is still running, the second one pending
    assert c.jobs.active(lambda key: key[2] == 1)
    c.wait()
    session = manager.get_object(c._keys[()], 1)
    assert session is not None and len(session.prompts) == 2
    assert not session.can_undo and session.current.prediction.mask.size == 0  # compacted: one step, bits only
    assert not any(object_id == 1 for _, object_id in c._bases)  # its undo snapshot was released
    assert (c.labels.data == 1).any() and c.object_id == 2


def test_reopen_after_commit_continues_exactly(make_napari_viewer, tiny_manager):
    viewer = make_napari_viewer()
    c = annotator(viewer, tiny_manager, disc_image()).controller
    clicks = [(60, 70, True), (20, 20, False), (65, 90, True)]
    for y, x, positive in clicks:
        c.click(y, x, positive=positive)
    c.wait()
    c.commit()
    c.click(100, 140)
    c.wait()
    c.commit()
    committed = tiny_manager.get_object(c._keys[()], 1)
    assert committed.is_refined and not committed.can_undo  # its undo history released
    c.reopen(1)
    np.testing.assert_array_equal(c.session().mask, c.labels.data == 1)
    c.click(45, 60)
    c.wait()
    prompts = Prompts(np.array([(y, x) for y, x, _ in clicks] + [(45, 60)], float), [1, 0, 1, 1])
    with threads_for("interactive"):
        reference = ObjectSession(tiny_manager.predictor, c.session().embedding).sync(prompts)
    np.testing.assert_array_equal(c.labels.data == 1, reference & (c.labels.data != 2))
    c.undo()
    c.undo()  # undo stops at the committed state
    assert c.session().n_steps == 3 and len(c.points.data) == 3


def _slice_of(image):
    """Which slice of :func:`_stack` an embedded (H, W, 3) image is: its disc's centre column says it."""
    gray = np.asarray(image)[..., 0].astype(float)
    xs = np.nonzero(gray > gray.mean())[1]
    return int(round((xs.mean() - 50) / 5))


def test_a_click_on_an_embedded_slice_does_not_wait_for_a_prefetch(make_napari_viewer):
    pool = QThreadPool.globalInstance()
    threads = pool.maxThreadCount()
    pool.setMaxThreadCount(2)  # a 2-core laptop
    try:
        viewer = make_napari_viewer()
        slow = Slow(FallbackPredictor())
        c = annotator(viewer, ModelManager(slow), _stack()).controller
        viewer.dims.current_step = (7, 0, 0)
        c.wait()
        viewer.dims.current_step = (1, 0, 0)
        c.wait()
        slow.embed_delay = lambda image: 2.0 if _slice_of(image) in (6, 8) else 0.0
        c.prefetch = True
        viewer.dims.current_step = (7, 0, 0)  # embedded already; its neighbours 6 and 8 are prefetched (slowly)
        start = time.monotonic()
        c.click(60, 85)
        while not (c.labels.data[7] == 1).any() and time.monotonic() - start < 15:
            _pump(0.002)
        shown = time.monotonic()
        c.wait()
        assert (c.labels.data[7] == 1).any()
        assert len(slow.slow_embeds) == 2
        first_prefetch_done = min(end for _, end in slow.slow_embeds)
        print(f"mask {1000 * (shown - start):.0f} ms after the click; first prefetch done after "
              f"{first_prefetch_done - start:.1f} s (loaded machine)")
        assert shown < first_prefetch_done, "the click waited for a prefetch embedding"
    finally:
        pool.setMaxThreadCount(threads)


def test_layer_coordinates_match_napari_one_point_at_a_time():
    from napari.layers import Image, Points, Shapes

    from napari_focsam.plugin import layers as L

    rng = np.random.default_rng(1)
    stack = Image(np.zeros((5, 40, 50)), scale=(2, 0.5, 0.7), translate=(1, 3, -2))
    rgb = Image(np.zeros((40, 50, 3)), rgb=True, scale=(0.5, 0.7))
    for image, layer in ((stack, Points(rng.random((7, 3)) * 10, scale=(2, 0.5, 0.7), translate=(1, 3, -2))),
                         (stack, Points(rng.random((7, 3)) * 10)),
                         (stack, Shapes([rng.random((4, 3)) * 10], shape_type="rectangle")),
                         (rgb, Points(rng.random((4, 2)) * 10, translate=(2, 1)))):
        coords = np.concatenate(layer.data) if isinstance(layer, Shapes) else layer.data
        one_by_one = np.array([image.world_to_data(layer.data_to_world(c))[:image.ndim] for c in coords])
        np.testing.assert_allclose(L.layer_to_image(layer, image, coords), one_by_one)
        back = np.array([layer.world_to_data(image.data_to_world(c)) for c in one_by_one])
        np.testing.assert_allclose(L.image_to_layer(layer, image, one_by_one), back)
        assert L.layer_to_image(layer, image, np.zeros((0, layer.ndim))).shape == (0, image.ndim)
