"""Bounded sessions: the history limit and committed-object compaction keep later results exact; stateless models
compute the latest prompts once; a cancelled replay keeps the steps it completed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.session import DEFAULT_MAX_HISTORY, ObjectSession
from napari_focsam.engine.types import Cancelled, CancelToken, Prompts

CLICKS = [(60, 70, True), (20, 20, False), (65, 90, True), (50, 60, True), (90, 120, False), (55, 75, True),
          (40, 80, True)]


def _image():
    yy, xx = np.mgrid[:120, :160]
    image = np.full((120, 160), 30, np.uint8)
    image[(yy - 60) ** 2 + (xx - 70) ** 2 < 25**2] = 200
    return image


@pytest.fixture(scope="module")
def focsam():
    manager = ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)
    return manager, manager.embed(_image())


class Counting:
    def __init__(self, inner, on_call=None):
        self.inner, self.calls, self.on_call = inner, 0, on_call

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, embedding, prompts, state, *, cancel=None):
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        return self.inner.predict(embedding, prompts, state, cancel=cancel)


def _same_state(a, b):
    assert a.step == b.step
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    assert (a.features is None) == (b.features is None)
    if a.features is not None:
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)


def test_the_history_limit_drops_old_steps_and_keeps_every_result_exact(focsam):
    manager, embedding = focsam
    assert DEFAULT_MAX_HISTORY == 50 and manager.max_history == DEFAULT_MAX_HISTORY
    short = ObjectSession(manager.predictor, embedding, max_history=3)
    full = ObjectSession(manager.predictor, embedding)
    for y, x, positive in CLICKS:
        np.testing.assert_array_equal(short.click(y, x, positive), full.click(y, x, positive))
        _same_state(short.state, full.state)
    assert short.n_kept == 3 and short.n_steps == full.n_steps == len(CLICKS)
    short.undo(), full.undo()
    short.undo(), full.undo()
    assert not short.can_undo  # the oldest kept step
    np.testing.assert_array_equal(short.undo(), full.mask)
    np.testing.assert_array_equal(short.click(30, 100), full.click(30, 100))
    _same_state(short.state, full.state)


def test_compact_keeps_what_the_next_step_needs(focsam):
    manager, embedding = focsam
    session = ObjectSession(manager.predictor, embedding)
    reference = ObjectSession(manager.predictor, embedding)
    for y, x, positive in CLICKS[:4]:
        session.click(y, x, positive)
        reference.click(y, x, positive)
    refined = session.state.features
    mask = session.mask.copy()
    session.compact()
    assert session.n_kept == 1 and session.n_steps == 4 and not session.can_undo
    assert session.state.features is refined and session.current.prediction.mask.size == 0
    np.testing.assert_array_equal(session.mask, mask)
    y, x, positive = CLICKS[4]
    np.testing.assert_array_equal(session.click(y, x, positive), reference.click(y, x, positive))
    _same_state(session.state, reference.state)
    session.undo()
    np.testing.assert_array_equal(session.mask, mask)  # back to the committed state, and no further
    assert not session.can_undo


def test_the_manager_keeps_a_bounded_number_of_committed_sessions(focsam):
    manager, embedding = focsam
    manager = ModelManager(manager.predictor, cache=manager.cache)
    manager.keep_committed = 3
    for object_id in range(1, 7):
        session = manager.new_object(embedding, object_id)
        session.click(60, 70)
        session.click(20, 20, False)
        manager.commit_object(session)
    assert [s.object_id for s in manager.objects()] == [4, 5, 6]
    kept = manager.get_object(embedding, 6)
    manager.reopen_object(kept)
    for object_id in (7, 8, 9):
        manager.commit_object(manager.new_object(embedding, object_id))
    assert manager.get_object(embedding, 6) is kept  # re-opened: no longer among the committed


def test_a_stateless_model_computes_the_latest_prompts_once():
    manager = ModelManager.load("fallback")
    counting = Counting(manager.predictor)
    embedding = manager.embed(_image())
    session = ObjectSession(counting, embedding)
    prompts = Prompts(np.array([(y, x) for y, x, _ in CLICKS], float), [int(p) for *_, p in CLICKS])
    mask = session.sync(prompts)
    assert counting.calls == 1 and session.n_steps == 1
    np.testing.assert_array_equal(mask, manager.segment(embedding, prompts.points, prompts.labels))


def test_a_cancelled_replay_keeps_its_completed_steps(focsam):
    manager, embedding = focsam
    token = CancelToken()
    counting = Counting(manager.predictor, on_call=lambda n: n == 2 and token.cancel())
    session = ObjectSession(counting, embedding)
    prompts = Prompts(np.array([(y, x) for y, x, _ in CLICKS], float), [int(p) for *_, p in CLICKS])
    with pytest.raises(Cancelled):
        session.sync(prompts, cancel=token)
    assert session.n_steps == 2  # the step under way when it was cancelled is finished and kept
    session.sync(prompts)
    assert counting.calls == len(CLICKS)  # no step computed twice
    reference = ObjectSession(manager.predictor, embedding).sync(prompts)
    np.testing.assert_array_equal(session.mask, reference)
