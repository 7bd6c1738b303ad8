"""What a user feels: click → mask visible in a shown napari window, idle and under background load, with the
engine's own click next to micro-sam's in the same run.

    xvfb-run -a python benchmarks/bench_widget.py [--clicks 30] [--size 1024] [--loads idle,busy,torch2]
        [--backends fallback,sam_tiny,sam_vit_b] [--hidden] [--micro-sam PYTHON] [--gui-cpu]
        [--clicks-as mouse:0,points:0,mouse:80,points:80]

Each backend gets a real viewer (``napari.Viewer(show=True)``; under Xvfb + Mesa it renders for real) with the
annotator attached. Clicks are made in the ways ``--clicks-as`` lists (``_clicks.py``), taking turns click by
click: ``mouse:MS`` is real Qt mouse events on the canvas, through vispy and napari's mouse handling (press, MS ms
of the event loop, release; a hand holds the button for tens of milliseconds, ``mouse:0`` is the strictest case),
and the annotator starts the model at the press (``plugin/click_requests.py``); ``points:MS`` adds the point
through the Points layer MS ms after the press, as napari does on the release, without a press: the way clicks
reached the model before.
Times run from the press, and from the release (when napari adds the point), until the canvas has drawn the first
frame after the mask was written into the Labels layer (``--hidden``: until the write, since a hidden canvas never
draws). The split shows where the time goes: the model's click in the worker,
the hand-off to the GUI thread, the Labels write, the redraw. ``--gui-cpu`` adds, per backend, the CPU time a click
costs the GUI thread by part (napari's point, the frames, the layer list, the plugin's own work) and Mesa's
rasterizer threads (``_gui_cpu.py``): CPU time hardly depends on the machine's other load.

Background loads (started by this script, stopped after each condition):

* ``idle``: nothing else runs;
* ``busy``: one pure-Python busy loop (one core taken, like a browser tab or an indexer);
* ``torch2``: another process running torch on 2 threads (matrix products of ViT-B's MLP size: another
  embedding, a training run);
* ``mouse``: the mouse moves over the canvas (60 moves per second, as a user's hand does between clicks): napari
  answers each move on the GUI thread (cursor position, status bar), Python work that competes for the GIL.

Engine only (no viewer): our click (``ObjectSession.click`` in a click thread, the interactive thread policy
applied) against micro-sam's ``segment_from_points`` with its precomputed embedding on the same random SAM ViT-B
weights and image, clicks interleaved one by one (``_engine_vs_microsam.py``). micro-sam runs in its own virtual
environment (``--micro-sam PATH/TO/python``; default ``$MICROSAM_PYTHON`` or ``~/.cache/microsam-venv/bin/python``);
without one that column is left out. The embedding with the window shown vs hidden is timed idle,
``--embed-rounds`` pairs in alternating order after one untimed embedding.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _clicks import MouseMoves, click_modes, wait
from _engine_vs_microsam import MicroSam, engine_vs_microsam, write_sam_checkpoint
from _gui_cpu import GuiCpu

LOADS = {
    "idle": None,
    "mouse": None,  # not a process: see MouseMoves
    "busy": "while True:\n    pass\n",
    "torch2": ("import torch\ntorch.set_num_threads(2)\na = torch.randn(4096, 768)\nw = torch.randn(768, 3072) * 0.02\n"
               "while True:\n    torch.nn.functional.gelu(a @ w)\n"),
}


@contextlib.contextmanager
def background_load(kind: str):
    """Run one of :data:`LOADS` in another process for the duration of the block."""
    code = LOADS[kind]
    if code is None:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)  # let it start (torch import) and take its cores
        yield
    finally:
        proc.kill()
        proc.wait()


def test_image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 40, np.uint8)
    for _ in range(14):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.03, 0.08)
        image[((yy / size - cy) ** 2 + (xx / size - cx) ** 2) < r * r] = 200
    return image


def percentiles(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values) * 1000
    return float(np.median(arr)), float(np.percentile(arr, 95))


# ---------------------------------------------------------------------- the widget
def _settle(seconds: float) -> None:
    """Process Qt events for ``seconds``."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


class WidgetRig:
    """A viewer with the annotator attached to one backend, and the probes that time a click."""

    def __init__(self, backend: str, image: np.ndarray, show: bool) -> None:
        import napari

        from napari_focsam.engine.manager import ModelManager
        from napari_focsam.plugin.widget import FocsamWidget

        self.show = show
        self.released = 0.0  # when the last click's button was released (the point added)
        self.pressing = False  # a mouse button is down (MouseMoves waits)
        self.viewer = napari.Viewer(show=show)
        self.viewer.window._qt_window.resize(1200, 900)
        self.viewer.add_image(image, name="image")
        self.widget = FocsamWidget(self.viewer)
        self.viewer.window.add_dock_widget(self.widget, name="FocSAM")
        self.controller = c = self.widget.controller
        manager = ModelManager.load(backend, device="cpu", allow_random_weights=backend != "fallback")
        _settle(3.0 if show else 0.5)  # the window's first frames (shader compilation) before timing anything
        start = time.perf_counter()
        c.set_manager(manager)
        self.widget.use_layers()
        c.wait(900)
        self.embed_seconds = time.perf_counter() - start
        self.drawn: list[float] = []
        self.written: list[float] = []
        self.results: list = []
        self.updates: list[float] = []  # the Labels layer's partial updates (none when a mask did not change)
        self.controller.labels.events.labels_update.connect(lambda event: self.updates.append(time.perf_counter()))
        canvas = self.viewer.window._qt_viewer.canvas._scene_canvas
        canvas.events.draw.connect(lambda event: self.drawn.append(time.perf_counter()), position="last")
        original = c._on_result

        def on_result(result) -> None:
            entered = time.perf_counter()
            original(result)
            self.written.append(time.perf_counter())
            self.results.append((entered, result))

        c._on_result = on_result

    def click(self, y: float, x: float, positive: bool, mode: tuple[str, float] = ("mouse", 0.0),
              timeout: float = 60.0) -> dict[str, float]:
        """One click as ``mode`` makes it (see :func:`click_modes`); returns the phases (seconds, from the press)
        once the mask is visible."""
        from qtpy.QtCore import QEventLoop, QTimer
        from qtpy.QtWidgets import QApplication

        c = self.controller
        n_written, n_updates = len(self.written), len(self.updates)
        how, hold = mode
        start = time.perf_counter()
        if how == "mouse":
            self._mouse_click(y, x, positive, hold)
        else:  # the point arrives when the button is released, hold seconds after the press
            wait(hold)
            self.released = time.perf_counter()
            c.click(y, x, positive=positive)
        deadline = start + timeout
        watchdog = QTimer()
        watchdog.timeout.connect(lambda: None)  # wakes the loop below now and then, so the timeout is seen
        watchdog.start(50)
        while True:
            # like Qt's own event loop: sleep (GIL released) until an event comes; a busy processEvents() loop would
            # hold the GIL and slow the worker thread down
            QApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents
                                       | QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
            if len(self.written) > n_written:
                written = self.written[-1]
                changed = len(self.updates) > n_updates
                if not self.show or not changed or any(t > written for t in self.drawn):
                    break
            if time.perf_counter() > deadline:
                raise TimeoutError("no mask within the timeout")
        watchdog.stop()
        end = written if not (self.show and changed) else min(t for t in self.drawn if t > written)
        entered, result = self.results[-1]
        return {"total": end - start, "released": end - self.released,
                "prep": result.finished_at - result.seconds - start, "model": result.seconds,
                "handoff": entered - result.finished_at,
                "write": written - entered, "draw": end - written}

    def _mouse_click(self, y: float, x: float, positive: bool, hold: float) -> None:
        """A real mouse click on the canvas: press, ``hold`` seconds of the event loop, release (Shift: negative)."""
        from napari_focsam.plugin.mouse import mouse_press, mouse_release, world_of

        where = world_of(self.viewer.layers["image"], (y, x))
        modifiers = () if positive else ("Shift",)
        self.pressing = True
        try:
            mouse_press(self.viewer, where, modifiers=modifiers)
            wait(hold)
            self.released = time.perf_counter()
            mouse_release(self.viewer, where, modifiers=modifiers)
        finally:
            self.pressing = False

    def session_clicks(self, n: int, rng: np.random.Generator, modes: list[tuple[str, float]],
                       cpu: GuiCpu | None = None) -> dict[tuple[str, float], list[dict[str, float]]]:
        """``n`` clicks per mode, the modes taking turns click by click, a new object every 5 clicks; ``cpu``
        (optional) accounts the GUI thread's CPU time of each."""
        out: dict[tuple[str, float], list[dict[str, float]]] = {mode: [] for mode in modes}
        size = self.viewer.layers["image"].data.shape
        for i in range(n * len(modes)):
            if i % 5 == 0:
                self.controller.commit()  # a new object every 5 clicks (FocSAM's refiner step included)
            y, x = rng.uniform(0.05, 0.95) * size[0], rng.uniform(0.05, 0.95) * size[1]
            mode = modes[i % len(modes)]
            with cpu if cpu is not None else contextlib.nullcontext():
                out[mode].append(self.click(y, x, positive=i % 5 != 3, mode=mode))
            time.sleep(0.05)  # a user's clicks are never back to back
        return out

    def close(self) -> None:
        self.controller.detach()
        self.viewer.close()


def embedding_shown_vs_hidden(backend: str, image: np.ndarray, rounds: int = 2) -> tuple[list[float], list[float]]:
    """Seconds to embed ``image`` through the widget with the window shown and hidden (each from an empty cache),
    ``rounds`` times each in the order shown, hidden, hidden, shown, ... after one untimed embedding (the process's
    first one pays one-time costs: kernel set-up, first touch of large buffers)."""
    from napari_focsam.engine.manager import ModelManager

    ModelManager.load(backend, device="cpu", allow_random_weights=backend != "fallback").embed(image)
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(rounds):
        for show in ((True, False) if round_ % 2 == 0 else (False, True)):
            rig = WidgetRig(backend, image, show=show)
            times[show].append(rig.embed_seconds)
            rig.close()
    return times[True], times[False]


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--loads", default="idle,busy,torch2")
    parser.add_argument("--backends", default="fallback,sam_tiny,sam_vit_b")
    parser.add_argument("--hidden", action="store_true", help="napari.Viewer(show=False): no redraw measured")
    parser.add_argument("--micro-sam", default=os.environ.get("MICROSAM_PYTHON",
                                                             str(Path.home() / ".cache/microsam-venv/bin/python")))
    parser.add_argument("--no-embedding", action="store_true", help="skip the shown-vs-hidden embedding timing")
    parser.add_argument("--embed-rounds", type=int, default=2, help="shown/hidden embedding pairs (order alternated)")
    parser.add_argument("--engine-model", default="sam_vit_b", help="the SAM model of the engine-only comparison")
    parser.add_argument("--clicks-as", default="mouse:0,points:0,mouse:80,points:80",
                        help="how clicks are made, taking turns (see click_modes): mouse:MS, points:MS")
    parser.add_argument("--gui-cpu", action="store_true",
                        help="also print the GUI thread's and the rasterizer's CPU time per click, by part (idle)")
    args = parser.parse_args()

    from napari_focsam.engine.manager import ModelManager
    from napari_focsam.engine.threads import current_policy

    image = test_image(args.size)
    modes = click_modes(args.clicks_as)
    backends = args.backends.split(",")
    loads = args.loads.split(",")
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} before starting; "
          f"thread policy {current_policy()}; window {'hidden' if args.hidden else 'shown'}; "
          f"{args.size}² image, {args.clicks} clicks per condition and way of clicking ({args.clicks_as})",
          flush=True)

    if not args.no_embedding and "sam_vit_b" in backends:
        shown, hidden = embedding_shown_vs_hidden("sam_vit_b", image, args.embed_rounds)
        ratios = [a / b for a, b in zip(shown, hidden, strict=True)]
        print(f"embedding sam_vit_b through the widget ({args.embed_rounds} rounds, order alternated, after one "
              f"untimed embedding): shown {' '.join(f'{t:.2f}' for t in shown)} s, hidden "
              f"{' '.join(f'{t:.2f}' for t in hidden)} s; shown/hidden per round "
              f"{' '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f}", flush=True)

    engine = ModelManager.load(args.engine_model, device="cpu", allow_random_weights=True)
    embedding = engine.embed(image)
    summary = []
    cpu_lines: list[str] = []
    print(f"\n{'':<29} {'from the press':>15} {'from the release':>16}")
    print(f"{'load':<7} {'backend':<10} {'clicks as':<10} {'p50 ms':>7} {'p95 ms':>7} {'p50 ms':>7} {'p95 ms':>7}   "
          "median split (prep / model / hand-off / write / draw, ms)")
    for backend in backends:  # one window at a time, as a user has it
        rig = WidgetRig(backend, image, show=not args.hidden)
        rig.session_clicks(2, np.random.default_rng(0), modes)  # untimed: a fresh window's first clicks pay more
        for load in loads:
            moves = MouseMoves([rig]) if load == "mouse" else contextlib.nullcontext()
            with background_load(load), moves:
                by_mode = rig.session_clicks(args.clicks, np.random.default_rng(1), modes)
            for (how, hold), phases in by_mode.items():
                p50, p95 = percentiles([p["total"] for p in phases])
                r50, r95 = percentiles([p["released"] for p in phases])
                split = " / ".join(f"{1000 * statistics.median(p[k] for p in phases):.0f}"
                                   for k in ("prep", "model", "handoff", "write", "draw"))
                name = f"{how}:{1000 * hold:.0f}"
                print(f"{load:<7} {backend:<10} {name:<10} {p50:7.0f} {p95:7.0f} {r50:7.0f} {r95:7.0f}   {split}",
                      flush=True)
                summary.append((load, f"{backend} {name}", p50, p95))
        if args.gui_cpu and not args.hidden:
            cpu = GuiCpu()
            rig.session_clicks(args.clicks, np.random.default_rng(3), modes[:1], cpu)
            cpu_lines.append(f"{backend:<10} {cpu.summary()}")
        rig.close()
    for line in cpu_lines:
        print(line)
    idle = {b: p50 for load, b, p50, _ in summary if load == "idle"}
    for load, backend, _, p95 in summary:
        if load != "idle" and backend in idle:
            print(f"{load:<7} {backend:<10} p95 / idle p50 = {p95 / idle[backend]:.2f}")

    print(f"\nengine only, {args.engine_model} random weights, {args.clicks} clicks (p50 / p95 ms; ratio of p50 to "
          "micro-sam's)")
    with tempfile.TemporaryDirectory() as tmp:
        microsam = None
        if Path(args.micro_sam).exists():
            write_sam_checkpoint(engine, Path(tmp) / "sam_vit_b_random.pth")
            np.save(Path(tmp) / "image.npy", image)
            microsam = MicroSam(args.micro_sam, Path(tmp) / "sam_vit_b_random.pth", Path(tmp) / "image.npy")
            print(f"micro-sam {microsam.ready['version']} (segment_from_points, precomputed embedding; its embedding "
                  f"took {microsam.ready['embed_seconds']:.1f} s, ours {engine.last_embed.seconds:.1f} s)")
        else:
            print(f"micro-sam: no python at {args.micro_sam}; its column is left out")
        for load in loads:
            if load == "mouse":
                continue  # no window here
            with background_load(load):
                times = engine_vs_microsam(engine, embedding, microsam, args.clicks, np.random.default_rng(2))
            cells = []
            for name in ("api", "widget", "micro-sam"):
                if times[name]:
                    p50, p95 = percentiles(times[name])
                    cells.append(f"{name} {p50:.0f} / {p95:.0f}")
            threads = times["widget threads"]
            cells.append("widget threads " + ", ".join(f"{n}: {threads.count(n)}" for n in sorted(set(threads))))
            if times["micro-sam"]:
                theirs = percentiles(times["micro-sam"])[0]
                cells.append("ratio api {:.2f}, widget {:.2f}".format(percentiles(times["api"])[0] / theirs,
                                                                       percentiles(times["widget"])[0] / theirs))
            print(f"{load:<7} " + " | ".join(cells), flush=True)
        if microsam is not None:
            microsam.close()


if __name__ == "__main__":
    main()
