"""Memory per click on a large tiled slice in the napari annotator: what the click job and the write into the Labels
layer allocate, with the weight-free fallback on an 8,192² image (int32 labels: 256 MiB).

    PYTHONPATH=. xvfb-run -a python benchmarks/bench_tiles_memory.py               # 8,192²
    PYTHONPATH=. xvfb-run -a python benchmarks/bench_tiles_memory.py --hidden      # the annotator's own
    PYTHONPATH=. xvfb-run -a python benchmarks/bench_tiles_memory.py --side 4096   # quick check

The viewer is not shown. An object is clicked once (its tile embedded and cached; the prefetch of its neighbours is
stopped and waited for, so that it does not count), then measured with ``tracemalloc`` (every thread; numpy's
buffers are traced): the *first click of a new object* on that tile (the controller keeps the labels as they were
before the object, for Cancel) and *next clicks* on it, each from the click to its mask written, with the Labels
layer shown (napari then redraws it: converting the slice to a texture costs it several slice-sized arrays, the
same in every version) or, with ``--hidden``, hidden from the start (what is left is the annotator's own).
Printed: the peak allocation per click in MiB and as a multiple of one bool mask of the slice, the wall time, and
the load average. Run it from a checkout to compare versions (the same script runs on the code before region
writes).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--hidden", action="store_true", help="hide the Labels layer (no redraw by napari)")
    args = parser.parse_args()

    import napari

    from napari_focsam import ModelManager
    from napari_focsam.engine.tiles import tiled_image_for
    from napari_focsam.plugin.widget import FocsamWidget

    side = args.side
    yy, xx = np.ogrid[:side, :side]
    image = np.full((side, side), 30, np.uint8)
    centres = [(side // 2 + 100 * k, side // 2 + 80 * k) for k in range(args.clicks + 2)]
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 20**2] = 200
    manager = ModelManager.load("fallback")
    viewer = napari.Viewer(show=False)
    viewer.add_image(image, name="image")
    widget = FocsamWidget(viewer)
    c = widget.controller
    c.set_manager(manager)
    widget.use_layers()
    c.labels.visible = not args.hidden
    c.wait()

    def click(y: float, x: float) -> tuple[float, float]:
        tracemalloc.reset_peak()
        start = time.perf_counter()
        c.click(y, x)
        c.wait()
        seconds = time.perf_counter() - start
        return tracemalloc.get_traced_memory()[1] / 2**20, seconds

    cy, cx = centres[0]
    c.click(cy, cx)
    c.wait()
    tiled = tiled_image_for(manager, c.image.data, (), False, tuple(float(v) for v in c.image.contrast_limits))
    tiled.prefetch_rings = 0
    tiled.stop_prefetch()
    if "prefetch" in type(c.tiles).__dataclass_fields__:  # the widget's own prefetch (on the job runner): off
        c.tiles = type(c.tiles)(prefetch=0)
    c.wait()
    c.commit()
    tracemalloc.start()
    rows = []
    for k in range(1, args.clicks + 1):
        cy, cx = centres[k]
        first = click(cy, cx)
        nxt = click(cy + 3, cx - 2)
        rows.append((first, nxt))
        c.commit()
    tracemalloc.stop()
    mask_mib = side * side / 2**20
    print(f"{side}² uint8 image, int32 labels ({4 * mask_mib:.0f} MiB), fallback; a bool mask of the slice is "
          f"{mask_mib:.0f} MiB; median of {args.clicks}; load {os.getloadavg()[0]:.1f}")
    layer = "hidden (the annotator's own)" if args.hidden else "shown (with napari's redraw)"
    print("| labels layer | click | peak allocated (MiB) | x slice mask | wall (ms) |\n|---|---|---|---|---|")
    for name, i in (("first of an object", 0), ("next", 1)):
        peaks, walls = [r[i][0] for r in rows], [1000 * r[i][1] for r in rows]
        print(f"| {layer} | {name} | {np.median(peaks):.1f} | {np.median(peaks) / mask_mib:.2f} | "
              f"{np.median(walls):.0f} |")
    viewer.close()


if __name__ == "__main__":
    main()
