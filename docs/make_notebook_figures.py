"""The notebook annotator's screenshot (docs/images/notebook.png) and its latency in the browser.

Runs the browser test's set-up (tests/_jupyter_browser.py: JupyterLab on 127.0.0.1, headless Chromium under
Selenium), annotates four coins with the fallback by clicking on the widget's canvas, saves the cell as shown, then
measures 30 clicks with the fallback and with the tiny SAM (random weights): from the click event in the browser to
the overlay updated (``performance.now()``), next to the model's own time for the click in the kernel.

    python docs/make_notebook_figures.py [--out docs/images/notebook.png] [--clicks 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _jupyter_browser import JupyterLab, NotebookPage, WidgetDriver, chromium, measure_latency, median, write_notebook  # noqa: E402

CELLS = [
    "from skimage import data\nfrom napari_focsam.notebook import Annotator\n\n"
    "ann = Annotator(data.coins(), 'fallback')\nann",
    "tiny = Annotator(data.coins(), 'sam_tiny', device='cpu', allow_random_weights=True)\ntiny",
]
COINS = [((51, 215), None), ((124, 44), (124, 20)), ((193, 212), None), ((263, 300), None)]  # (y, x): + and -


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "notebook.png")
    parser.add_argument("--clicks", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_notebook(Path(folder) / "annotate.ipynb", CELLS)
        with JupyterLab(Path(folder)) as lab:
            driver = chromium()
            try:
                page = NotebookPage(lab, driver, "annotate.ipynb")
                page.run_all()
                page.wait_for(lambda: len(page.widgets()) == 2, "the widgets")
                fallback, tiny = (WidgetDriver(page, root) for root in page.widgets())
                for widget in (fallback, tiny):
                    page.wait_for(lambda w=widget: w.data("image") is not None and w.data("model"), "the image")
                    widget.wait_settled()
                for positive, negative in COINS:
                    fallback.click(*positive)
                    fallback.wait_settled()
                    if negative is not None:
                        fallback.click(*negative, negative=True)
                        fallback.wait_settled()
                    fallback.button("commit")
                fallback.click(260, 172)  # the object being annotated: drawn stronger, its click shown
                fallback.wait_settled()
                cell = driver.execute_script("return arguments[0].closest('.jp-Cell');", fallback.root)
                driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", cell)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                cell.screenshot(os.fspath(args.out))
                print(f"wrote {args.out}")
                fallback.button("cancel")
                grid = [(20 + 10 * (i // 6), 20 + 60 * (i % 6)) for i in range(args.clicks)]
                print("| model | click → overlay applied (median ms) | → next frame | model's own click | overhead |")
                print("|---|---|---|---|---|")
                for name, widget in (("fallback", fallback), ("sam_tiny", tiny)):
                    runs = measure_latency(page, widget, grid)
                    applied, painted, model = (median([r[k] for r in runs]) for k in
                                               ("applied_ms", "painted_ms", "model_ms"))
                    print(f"| {name} | {applied:.0f} | {painted:.0f} | {model:.0f} | {applied - model:.0f} |")
                    widget.button("cancel")
            finally:
                driver.quit()


if __name__ == "__main__":
    main()
