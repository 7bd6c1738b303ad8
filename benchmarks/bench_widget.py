"""Widget latency: from adding a click to the Labels layer holding the new mask, in a real napari viewer.

    xvfb-run -a python benchmarks/bench_widget.py [--clicks 50] [--size 1024]

For each backend (the weight-free fallback and the tiny random FocSAM), clicks are added through the Points layer
exactly as a mouse click adds them; the time runs until the result is written into the Labels layer (main
thread). The model's own click time (measured in the worker) is printed next to it: the difference is what the
plugin adds (thread hand-off, reading layers, writing the changed pixels, redraw).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def run(backend: str, clicks: int, size: int) -> tuple[float, float]:
    import napari

    from napari_focsam.engine.manager import ModelManager
    from napari_focsam.plugin.widget import FocsamWidget

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 40, np.uint8)
    for _ in range(12):
        cy, cx, r = rng.uniform(0.1, 0.9, 2).tolist() + [rng.uniform(0.03, 0.08)]
        image[((yy / size - cy) ** 2 + (xx / size - cx) ** 2) < r * r] = 200
    viewer = napari.Viewer(show=False)
    viewer.add_image(image, name="image")
    widget = FocsamWidget(viewer)
    if backend == "fallback":
        manager = ModelManager.load("fallback")
    else:
        manager = ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)
    c = widget.controller
    c.set_manager(manager)
    widget.use_layers()
    c.wait(600)
    totals, model = [], []
    for i in range(clicks):
        if i % 5 == 0:
            c.commit()  # a new object every 5 clicks, so the refiner step is included like in real use
        y, x = rng.uniform(0, size - 1, 2)
        start = time.perf_counter()
        c.click(y, x, positive=bool(i % 5 != 3))
        c.wait(60)
        totals.append(time.perf_counter() - start)
        model.append(c.last_click_seconds)
    c.detach()  # (closing the viewer removes the layers: no "layer was removed" warning for that)
    viewer.close()
    return statistics.median(totals), statistics.median(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    print(f"{'backend':<14} {'click→Labels (ms)':>18} {'model click (ms)':>17} {'plugin overhead (ms)':>21}")
    for backend in ("fallback", "focsam_tiny"):
        total, model = run(backend, args.clicks, args.size)
        print(f"{backend:<14} {1000 * total:18.1f} {1000 * model:17.1f} {1000 * (total - model):21.1f}")


if __name__ == "__main__":
    main()
