"""The notebook annotator's stability display and API: computed off the comm thread after the mask is sent, latest
wins, cancelled by the next click; ``Annotator.stability()`` and ``show_stability()``."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("anywidget")

from test_notebook_widget import Browser, discs

from napari_focsam.engine.fallback import FallbackPredictor
from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.stability import Jitter, Stability
from napari_focsam.notebook import Annotator


class RecordingFallback(FallbackPredictor):
    """The fallback, each prediction ``delay`` seconds late, recording the thread it ran on."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.threads: list[str] = []

    def predict(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return super().predict(*args, **kwargs)


def _infos(browser: Browser) -> list[dict]:
    return [m["info"] for m, _ in browser.sent if m["type"] == "update"]


def test_stability_shows_after_the_mask_off_the_comm_thread() -> None:
    predictor = RecordingFallback()
    ann = Annotator(discs(), ModelManager(predictor)).wait()
    browser = Browser(ann)
    browser(type="stability", on=True)
    browser(type="click", y=40, x=50, positive=True, seq=1)
    ann.wait()
    info = _infos(browser)[-1]
    assert info["stability_enabled"] and 0.0 <= info["stability"] <= 1.0
    assert info["stability_colour"] in ("#2ca02c", "#ff8c00", "#d62728")
    kinds = [m["type"] for m, _ in browser.sent]
    first_mask = kinds.index("labels")
    with_st = next(i for i, (m, _) in enumerate(browser.sent) if m["type"] == "update" and m["info"]["stability"]
                   is not None)
    assert first_mask < with_st  # the mask went out first
    # 1 prediction for the click (the fallback's copies: one prediction each), none on the comm thread
    assert len(predictor.threads) == 1 + ann.controller.jitter.copies
    assert predictor.threads[0].startswith("focsam-job") and set(predictor.threads[1:]) == {"focsam-background"}
    assert [o.stability for o in ann.objects] == [info["stability"]]
    browser(type="stability", on=False)
    assert _infos(browser)[-1]["stability"] is None and not _infos(browser)[-1]["stability_enabled"]
    ann.close()


def test_the_next_click_cancels_the_stability_and_is_not_delayed_by_it() -> None:
    delay = 0.15
    predictor = RecordingFallback(delay)
    ann = Annotator(discs(), ModelManager(predictor)).wait()
    browser = Browser(ann)
    ann.show_stability(True, Jitter(copies=8))
    browser(type="click", y=40, x=50, positive=True, seq=1)
    deadline = time.monotonic() + 30
    while not browser.of("labels") or "focsam-background" not in predictor.threads:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # the stability of mask 1 runs now (8 x 0.15 s); a second click must not wait for it
    start = time.perf_counter()
    browser(type="click", y=42, x=52, positive=True, seq=2)
    while not any(m.get("seq") == 2 for m, _ in browser.of("labels")):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    waited = time.perf_counter() - start
    assert waited < 4 * delay  # one prediction (plus a copy's prediction ending at its cancellation point)
    ann.wait()
    values = [i["stability"] for i in _infos(browser) if i["stability"] is not None]
    assert len(values) == 1  # mask 1's stability was cancelled: only mask 2 got one
    copies_run = predictor.threads.count("focsam-background")
    assert copies_run < 2 * 8  # the first stability stopped early
    ann.close()


def test_python_api_stability_and_errors() -> None:
    ann = Annotator(discs(), "fallback").wait()
    with pytest.raises(ValueError, match="no mask on this slice"):
        ann.stability()
    ann.click(40, 50)
    result = ann.stability(Jitter(copies=4, noise=0.05))
    assert isinstance(result, Stability) and 0.0 <= result.score <= 1.0 and result.unstable.shape == (120, 160)
    assert result.jitter.copies == 4
    again = ann.stability(Jitter(copies=4, noise=0.05))
    assert again.score == result.score and np.array_equal(again.unstable, result.unstable)  # seeded copies
    with pytest.raises(TypeError, match="Jitter"):
        ann.show_stability(True, 8)
    with pytest.raises(ValueError, match="at least 2"):
        Jitter(copies=1)
    ann.undo()  # no prompts left: no value, no error
    ann.show_stability(True)
    ann.wait()
    assert ann.controller.info()["stability"] is None
    ann.close()
