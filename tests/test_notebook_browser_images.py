"""The notebook annotator's microscopy controls in a real browser (JupyterLab on 127.0.0.1, headless Chromium under
Selenium, as in ``test_notebook_browser.py``): an anisotropic three-channel image is shown in its true proportions,
the pointer's world position is read out, the channel checkboxes change what the model sees, auto zoom and *Refine
detail* decode a small object on its zoom, and undo leaves it. Read back from the kernel each time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _jupyter_browser import JupyterLab, NotebookPage, WidgetDriver, chromium, require_browser, write_notebook

require_browser()

H, W = 200, 240
SMALL = ((60, 70), (140, 170))  # two small nuclei in channel 0
SCALE, TRANSLATE = (0.5, 0.25), (10.0, 20.0)


def make_image() -> np.ndarray:
    """(3, H, W) uint8: small bright discs, one large dim disc, noise."""
    yy, xx = np.mgrid[:H, :W]
    nuclei = np.full((H, W), 30, np.uint8)
    for y, x in SMALL:
        nuclei[(yy - y) ** 2 + (xx - x) ** 2 < 6**2] = 220
    cell = np.full((H, W), 20, np.uint8)
    cell[(yy - 100) ** 2 + (xx - 120) ** 2 < 40**2] = 120
    noise = np.random.default_rng(0).integers(0, 30, (H, W)).astype(np.uint8)
    return np.stack([nuclei, cell, noise])


CELLS = [
    "import json\nimport numpy as np\nfrom napari_focsam import ModelManager\n"
    "from napari_focsam.engine.fallback import FallbackPredictor\nfrom napari_focsam.notebook import Annotator\n"
    "image = np.load('image.npy')",
    # a fallback working at 96 px, so a 240-px image is shrunk to reach it (not tiled) and small objects gain from a
    # zoom
    "ann = Annotator(image, ModelManager(FallbackPredictor(max_side=96)), channel_axis=0, channels=[0], tiles=False, "
    f"scale={SCALE}, translate={TRANSLATE}, units='µm', display_width=480)\nann.wait()\nann",
    # a slice too tall to show whole: a 256-px window and an overview
    "yy, xx = np.mgrid[:4400, :300]\ntall = np.where((yy - 150) ** 2 + (xx - 150) ** 2 < 25 ** 2, 200, 30)"
    ".astype(np.uint8)\nbig = Annotator(tall, 'fallback', window_side=256)\nbig.wait()\nbig",
]
READ = ("print(json.dumps({'channels': list(ann.channel_mix.channels), 'zoomed': ann.zoomed, "
        "'auto_zoom': ann.auto_zoom, 'prompts': ann.controller.prompt_state(), 'labels': int(ann.labels.max())}))")


class ScaledWidget(WidgetDriver):
    """Canvas pixels (of the shown window, ``shape``) → CSS pixels on a canvas shown at any size."""

    def __init__(self, page, root, shape=(H, W)) -> None:
        super().__init__(page, root)
        self.shape = shape

    def _point(self, y: float, x: float) -> tuple[int, int]:
        left, top, width, height = self.page.driver.execute_script(
            "arguments[0].scrollIntoView({block: 'center', inline: 'nearest'});"
            "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height];", self.canvas)
        h, w = self.shape
        return round(left + (x + 0.5) * width / w), round(top + (y + 0.5) * height / h)

    def hover(self, y: float, x: float) -> None:
        self._chain(y, x).perform()


def read(page: NotebookPage) -> dict:
    out = page.execute(READ)
    assert not out.startswith("ERROR"), out
    return json.loads(out)


@pytest.mark.slow
def test_microscopy_controls_in_a_real_browser(tmp_path):
    from selenium.webdriver.common.by import By

    np.save(tmp_path / "image.npy", make_image())
    write_notebook(tmp_path / "microscopy.ipynb", CELLS)
    with JupyterLab(tmp_path) as lab:
        driver = chromium()
        try:
            page = NotebookPage(lab, driver, "microscopy.ipynb")
            page.run_all()
            page.wait_for(lambda: len(page.widgets()) == 2, "the widgets")
            widget = ScaledWidget(page, page.widgets()[0])
            big = ScaledWidget(page, page.widgets()[1], (256, 256))
            page.wait_for(lambda: widget.data("image") is not None and widget.data("model"), "the image shown")
            widget.wait_settled("the model and the embedding")

            # true proportions: 200 × 0.5 µm tall, 240 × 0.25 µm wide (shown 480 CSS px wide)
            width, height = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                                  "return [r.width, r.height];", widget.canvas)
            assert width == pytest.approx(480, abs=1)
            assert height / width == pytest.approx((H * SCALE[0]) / (W * SCALE[1]), rel=0.02)

            # the readout: world position of the pixel under the pointer
            widget.hover(40, 80)
            coords = widget.root.find_element(By.CSS_SELECTOR, ".focsam-coords")
            page.wait_for(lambda: "pixel (" in coords.text, "the pointer's readout", timeout=10)
            assert "y 30.000, x 40.000 µm · pixel (40, 80)" in coords.text, coords.text

            # channels: the checkboxes are the kernel's choice; ticking one more changes what the model sees
            boxes = widget.root.find_elements(By.CSS_SELECTOR, "input.focsam-channel")
            assert [b.is_selected() for b in boxes] == [True, False, False]
            boxes[1].click()
            page.wait_for(lambda: read(page)["channels"] == [0, 1], "channel 1 chosen in the kernel")
            widget.wait_settled("the new embedding")
            boxes[1].click()
            page.wait_for(lambda: read(page)["channels"] == [0], "back to channel 0")
            widget.wait_settled()
            boxes[0].click()  # the last channel cannot be unticked
            page.wait_for(lambda: "at least one channel" in widget.status(), "the refusal")
            assert boxes[0].is_selected() and read(page)["channels"] == [0]

            # auto zoom: the second click on a small nucleus is decoded on its zoom; undo leaves it
            widget.click(*SMALL[0])
            widget.wait_settled("the first click")
            widget.click(SMALL[0][0] + 1, SMALL[0][1] + 1)
            widget.wait_settled("the click on the zoom")
            page.wait_for(lambda: widget.data("zoom") == "1", "the zoom")
            assert "on its zoom" in widget.root.find_element(By.CSS_SELECTOR, ".focsam-object").text
            state = read(page)
            assert state["zoomed"] is not None and state["prompts"]["points"][0] == [*SMALL[0], 1]
            widget.button("undo")
            page.wait_for(lambda: widget.data("zoom") == "0", "undo to leave the zoom")
            assert read(page)["zoomed"] is None
            widget.button("commit")
            page.wait_for(lambda: "committed object 1" in widget.status(), "the commit")

            # auto zoom off (the checkbox), then Refine detail (the button) zooms on request
            widget.root.find_element(By.CSS_SELECTOR, "input.focsam-auto-zoom").click()
            page.wait_for(lambda: read(page)["auto_zoom"] is False, "auto zoom off in the kernel")
            widget.click(*SMALL[1])
            widget.wait_settled()
            widget.click(SMALL[1][0] + 1, SMALL[1][1] + 1)
            widget.wait_settled()
            assert widget.data("zoom") == "0" and read(page)["zoomed"] is None
            widget.button("refine")
            page.wait_for(lambda: widget.data("zoom") == "1", "Refine detail to zoom")
            widget.wait_settled()
            assert read(page)["zoomed"] is not None and read(page)["labels"] == 2

            # a tall slice: a window of it, moved by a click on the overview; clicks land on slice pixels
            page.wait_for(lambda: big.data("overview") == "2072,22,2328,278", "the overview")
            assert big.data("window") == "2072,22,2328,278"
            mini = big.root.find_element(By.CSS_SELECTOR, "canvas.focsam-overview")
            assert mini.is_displayed()
            from selenium.webdriver.common.action_chains import ActionChains
            from selenium.webdriver.common.keys import Keys

            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", mini)
            ActionChains(driver).move_to_element_with_offset(mini, 0, -mini.size["height"] // 2 + 2).click().perform()
            page.wait_for(lambda: big.data("window").startswith("0,"), "the window at the top of the slice")
            shown = [int(v) for v in big.data("window").split(",")]
            page.wait_for(lambda: big.data("overview") == big.data("window"), "the overview's frame moved")
            assert json.loads(page.execute("print(json.dumps(big.window))")) == shown
            assert shown[2] == 256 and shown[3] - shown[1] == 256
            big.wait_settled()
            big.click(150, 150 - shown[1])  # canvas pixels of the window: slice pixel (150, 150)
            big.wait_settled("the click in the window")
            got = json.loads(page.execute("print(json.dumps(big.controller.prompt_state()['points']))"))
            assert got == [[150.0, 150.0, 1]], got
            page.wait_for(lambda: page.execute("print(int(big.labels[150, 150]))").strip() == "1", "the mask")
            ActionChains(driver).send_keys(Keys.ARROW_DOWN).perform()  # half a window down
            page.wait_for(lambda: big.data("window").startswith("128,"), "the window moved by the arrow key")
            outputs = page.output_texts()
            assert not any("Traceback" in text or "Error" in text for text in outputs), outputs
        finally:
            driver.quit()
