"""The notebook annotator in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Selenium.

One JupyterLab and one page for everything (about a minute): a notebook with four annotators (the fallback, a tiny
SAM with seeded random weights, an image of unsupported shape, a deliberately slow model) is run cell by cell by
JupyterLab; the test clicks on the widgets' canvases at known pixels (positive, Shift+click negative, undo, commit, a
box drag, a click outside the image), reads ``ann.labels`` back from the kernel and compares them with the engine's
own result for the same prompts; it measures the latency of 30 clicks in the browser; and it restarts the kernel
while a click job runs. ``.ci/run`` installs Debian's ``chromium`` and ``chromium-driver``; without them the test
is skipped with that reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _jupyter_browser import (
    JupyterLab,
    NotebookPage,
    WidgetDriver,
    chromium,
    measure_latency,
    median,
    require_browser,
    write_notebook,
)

require_browser()

H, W = 160, 240
A, A_NEG, B = (40, 60), (40, 84), (60, 180)
B_BOX = (22, 142, 98, 218)
SLOW_SECONDS = 4


def make_image() -> np.ndarray:
    """Two bright discs on a dark, slightly graded background (uint8)."""
    yy, xx = np.mgrid[:H, :W]
    image = 30 + (xx // 12).astype(np.int32)
    image[(yy - A[0]) ** 2 + (xx - A[1]) ** 2 < 22 ** 2] = 200
    image[(yy - B[0]) ** 2 + (xx - B[1]) ** 2 < 30 ** 2] = 140
    return image.astype(np.uint8)


CELLS = [
    "import json, time\nimport numpy as np\nfrom napari_focsam import ModelManager\n"
    "from napari_focsam.engine.fallback import FallbackPredictor\nfrom napari_focsam.notebook import Annotator\n"
    "image = np.load('image.npy')",
    "fallback = Annotator(image, 'fallback')\nfallback.wait()\nfallback",
    "tiny = Annotator(image, 'sam_tiny', device='cpu', allow_random_weights=True)\ntiny.wait()\ntiny",
    "bad = Annotator(np.zeros((3, 4, 5, 6)))\nbad",
    f"class Slow(FallbackPredictor):\n    def predict(self, *args, **kwargs):\n"
    f"        time.sleep({SLOW_SECONDS})\n        return super().predict(*args, **kwargs)\n\n"
    "slow = Annotator(image, ModelManager(Slow()), save_to='restart.tif')\n"
    f"slow.click({A[0]}, {A[1]})\nslow.commit()\nslow.wait()\nslow",
]
READ = "print(json.dumps({{'labels': {name}.labels.tolist(), 'prompts': {name}.controller.prompt_state()}}))"


def expected_labels(manager, image: np.ndarray) -> np.ndarray:
    """What the scenario must give: object 1 from the click on A, object 2 from the box and click on B (never
    taking object 1's pixels)."""
    from napari_focsam.engine.types import Prompts

    first = manager.segment_prompts(image, Prompts([A], [1]))
    second = manager.segment_prompts(image, Prompts([B], [1], box=np.array(B_BOX, float)))
    labels = np.zeros((H, W), np.int32)
    labels[first] = 1
    labels[second & (labels == 0)] = 2
    return labels


def read(page: NotebookPage, name: str) -> dict:
    out = page.execute(READ.format(name=name))
    assert not out.startswith("ERROR"), out
    return json.loads(out)


def scenario(page: NotebookPage, widget: WidgetDriver, name: str) -> np.ndarray:
    widget.click(*A)
    widget.wait_settled("the first click's mask")
    widget.click(*A_NEG, negative=True)
    widget.wait_settled("the negative click's mask")
    state = read(page, name)["prompts"]
    assert state["points"] == [[A[0], A[1], 1], [A_NEG[0], A_NEG[1], 0]]  # the very pixels clicked, signs right
    widget.button("undo")
    page.wait_for(lambda: read(page, name)["prompts"]["points"] == [[A[0], A[1], 1]], "the undo")
    widget.wait_settled()
    widget.button("commit")
    page.wait_for(lambda: "committed object 1" in widget.status(), "the commit")
    widget.drag(B_BOX[0], B_BOX[1], B_BOX[2], B_BOX[3])
    widget.wait_settled("the box's mask")
    widget.click(*B)
    widget.wait_settled("the click in the box")
    assert read(page, name)["prompts"]["box"] == [float(v) for v in B_BOX]
    widget.button("commit")
    page.wait_for(lambda: "committed object 2" in widget.status(), "the second commit")
    widget.click(-6, 30)  # in the frame around the image
    page.wait_for(lambda: "outside the image" in widget.status(), "the message about the click outside")
    return np.asarray(read(page, name)["labels"], np.int32)


def keys(page: NotebookPage, widget: WidgetDriver) -> None:
    """The widget's keys reach it, and JupyterLab's own shortcuts stay out of it (``B`` would add a cell)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    cells = len(page.driver.find_elements(By.CSS_SELECTOR, ".jp-Cell"))
    widget.click(*A)
    widget.wait_settled()
    ActionChains(page.driver).send_keys("t").perform()
    page.wait_for(lambda: "next click: negative" in widget.status(), "T to flip the sign")
    ActionChains(page.driver).send_keys("tb").send_keys(Keys.ESCAPE).perform()
    page.wait_for(lambda: "object 3 cancelled" in widget.status(), "Esc to cancel the object")
    assert len(page.driver.find_elements(By.CSS_SELECTOR, ".jp-Cell")) == cells


@pytest.mark.slow
def test_annotate_in_a_real_browser(tmp_path):
    from napari_focsam.engine.manager import ModelManager

    image = make_image()
    np.save(tmp_path / "image.npy", image)
    write_notebook(tmp_path / "annotate.ipynb", CELLS)
    figures = {}
    with JupyterLab(tmp_path) as lab:
        driver = chromium()
        try:
            page = NotebookPage(lab, driver, "annotate.ipynb")
            page.run_all()
            page.wait_for(lambda: len(page.widgets()) == 4, "the four widgets")
            fallback, tiny, bad, slow = (WidgetDriver(page, root) for root in page.widgets())
            for widget in (fallback, tiny, slow):
                page.wait_for(lambda w=widget: w.data("image") is not None and w.data("model"), "the image shown")
                widget.wait_settled("the model and the embedding")

            # bad input: an unsupported shape is a message in its widget
            assert bad.data("error") == "1" and "cannot annotate an image of shape (3, 4, 5, 6)" in bad.status()

            # the scenario, read back from the kernel, against the engine's own masks
            got = scenario(page, fallback, "fallback")
            np.testing.assert_array_equal(got, expected_labels(ModelManager.load("fallback"), image))
            assert set(np.unique(got)) == {0, 1, 2}
            keys(page, fallback)
            got = scenario(page, tiny, "tiny")
            reference = expected_labels(ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True),
                                        image)
            assert np.mean(got == reference) > 0.995  # the same model in another process (bf16 rounding aside)

            # latency: click event in the browser to the overlay updated, 30 clicks each, then cancel them
            grid = [(12 + 9 * (i // 6), 8 + 40 * (i % 6)) for i in range(30)]
            for name, widget in (("fallback", fallback), ("sam_tiny", tiny)):
                before = read(page, "fallback" if name == "fallback" else "tiny")["labels"]
                runs = measure_latency(page, widget, grid)
                assert len(runs) == 30
                figures[name] = {key: median([r[key] for r in runs]) for key in ("applied_ms", "painted_ms",
                                                                                   "model_ms")}
                widget.button("cancel")
                page.wait_for(lambda w=widget: "cancelled" in w.status(), "the cancel")
                after = read(page, "fallback" if name == "fallback" else "tiny")["labels"]
                assert after == before  # the cancelled object's pixels are gone, committed ones intact

            # a kernel restart while a job runs: a message in the widget, no traceback, committed labels kept
            slow.click(*B)
            page.wait_for(lambda: slow.data("pending") == "1", "the slow click to be under way")
            page.restart_kernel()
            page.wait_for(lambda: slow.data("disconnected") == "1", "the widget to notice the restart")
            assert "kernel restarted or stopped" in slow.status()
            outputs = page.output_texts()
            assert not any("Traceback" in text or "Error" in text for text in outputs), outputs
            out = page.execute("import numpy as np\nfrom napari_focsam.notebook import Annotator\n"
                               "again = Annotator(np.load('image.npy'), 'fallback', save_to='restart.tif')\n"
                               "print(again.objects[0].label, again.objects[0].pixels, len(again.objects))")
            first = ModelManager.load("fallback").segment(image, [A])
            assert out.split() == ["1", str(int(first.sum())), "1"], out
        finally:
            driver.quit()
    print("latency medians (ms):", json.dumps(figures))
    for name, values in figures.items():
        # the target is <= 100 ms on top of the model; the bound here only catches a broken path on a busy CI
        assert values["applied_ms"] - values["model_ms"] < 1000, (name, values)
