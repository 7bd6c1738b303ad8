"""Regenerate the README's click session: four frames of the canvas while clicking coins with the fallback.

    xvfb-run -a python docs/make_click_session.py [--model fallback] [--out docs/images]

It starts napari as ``napari-focsam`` does (the coins sample, the annotator docked, the fallback loaded when no
weights are cached), clicks through the controller (the code path of a click on the canvas) and saves
``session_1.png`` … ``session_4.png``: a first click, a second click, a negative click, the next object.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

STEPS = (  # (file, clicks (y, x, positive), commit first)
    ("session_1.png", [(200, 190, True)], False),
    ("session_2.png", [(214, 200, True)], False),
    ("session_3.png", [(232, 216, False)], False),
    ("session_4.png", [(48, 50, True)], True),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: as napari-focsam chooses (the fallback here)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "images"))
    args = parser.parse_args()

    from napari_focsam.plugin.launch import launch

    viewer, widget = launch(sample="coins", model=args.model)
    viewer.window.resize(1500, 800)
    c = widget.controller
    c.wait(600)
    from qtpy.QtWidgets import QApplication

    while c.manager is None:  # the load job hands the manager over on the GUI thread
        QApplication.processEvents()
        c.wait(1)
    QApplication.processEvents()
    viewer.reset_view()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, clicks, commit in STEPS:
        if commit:
            c.commit()
        for y, x, positive in clicks:
            c.click(y, x, positive=positive)
            c.wait(120)
        frame = Image.fromarray(viewer.screenshot(canvas_only=True, flash=False)).convert("RGB")
        frame.thumbnail((400, 400))
        frame.save(out / name, optimize=True)
        print(f"wrote {out / name}")
    viewer.close()


if __name__ == "__main__":
    main()
