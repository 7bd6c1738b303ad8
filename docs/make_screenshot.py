"""Regenerate the README's screenshot: the FocSAM annotator docked in napari, working on a real image.

    xvfb-run -a python docs/make_screenshot.py [--model fallback] [--checkpoint FILE] [--out docs/images/widget.png]

It opens scikit-image's coins image, loads the model, clicks three coins (one with a negative click) through the
widget's own code paths, commits them, and saves a screenshot of the whole window.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skimage import data, io


def main() -> None:
    import napari

    from napari_focsam.engine.manager import ModelManager
    from napari_focsam.plugin.widget import FocsamWidget

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fallback")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "widget.png"))
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.add_image(data.coins(), name="coins")
    widget = FocsamWidget(viewer)
    viewer.window.add_dock_widget(widget, name="FocSAM annotator", area="right")
    c = widget.controller
    widget.model_combo.setCurrentIndex(max(widget.model_combo.findData(args.model), 0))
    c.set_manager(ModelManager.load(args.model, args.checkpoint))
    widget.use_layers()
    c.wait(600)
    for clicks in ([(48, 50)], [(122, 104)], [(200, 190), (230, 215, False)]):
        for click in clicks:
            c.click(click[0], click[1], positive=click[2] if len(click) > 2 else True)
            c.wait(120)
        c.commit()
    c.click(46, 170)
    c.wait(120)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(out, viewer.screenshot(canvas_only=False, flash=False), check_contrast=False)
    print(f"wrote {out}")
    viewer.close()


if __name__ == "__main__":
    main()
