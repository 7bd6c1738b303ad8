"""The engine alone next to micro-sam, for ``bench_widget.py``: micro-sam answering clicks from its own environment
over a pipe (``_microsam_server.py``), our random SAM weights written in the layout it loads, and the clicks of both
interleaved one by one."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from napari_focsam.engine.threads import threads_for, work_done

HERE = Path(__file__).resolve().parent
#: seconds between two engines' clicks in the engine-only comparison
PAUSE = 0.2


class MicroSam:
    """micro-sam in its own environment, answering clicks over a pipe (see ``_microsam_server.py``)."""

    def __init__(self, python: str, checkpoint: Path, image_path: Path) -> None:
        self.proc = subprocess.Popen([python, str(HERE / "_microsam_server.py"), str(checkpoint), str(image_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self._line())

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the micro-sam process ended; run it by hand to see why")
        return line

    def click(self, points: list[tuple[float, float]], labels: list[int]) -> float:
        self.proc.stdin.write(json.dumps({"points": points, "labels": labels}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def write_sam_checkpoint(manager, path: Path) -> None:
    """Our random SAM weights in segment-anything's checkpoint layout (what micro-sam loads)."""
    import torch

    model = manager.predictor.model
    state = {f"{part}.{k}": v for part in ("image_encoder", "prompt_encoder", "mask_decoder")
             for k, v in getattr(model, part).state_dict().items()}
    torch.save(state, path)


def engine_vs_microsam(manager, embedding, microsam: MicroSam | None, n: int,
                       rng: np.random.Generator) -> dict[str, list[float]]:
    """``n`` clicks, 5 per object, interleaved one by one (same points): ours as the Python API runs them (the
    caller's thread, torch's thread count), ours as the widget runs them (a worker thread with the interactive
    thread count, adaptive by default), and micro-sam's. Each click starts :data:`PAUSE` seconds after the previous
    one, as a user's clicks do: back to back, one engine's OpenMP threads, still spinning after its click, would
    slow the next engine's click down."""
    times: dict[str, list[float]] = {"api": [], "widget": [], "micro-sam": [], "widget threads": []}
    h, w = embedding.geometry.original_size
    sessions: dict[str, object] = {}
    points: list[tuple[float, float]] = []
    labels: list[int] = []

    def timed(session, y: float, x: float, positive: bool) -> float:
        start = time.perf_counter()
        session.click(y, x, positive=positive)
        return time.perf_counter() - start

    def widget_click(session, y: float, x: float, positive: bool, out: list) -> None:
        with threads_for("interactive") as threads:
            out.append(timed(session, y, x, positive))
        times["widget threads"].append(threads)

    for i in range(n):
        if i % 5 == 0:
            sessions = {"api": manager.new_object(embedding), "widget": manager.new_object(embedding)}
            points, labels = [], []
        y, x = float(rng.uniform(0.05, 0.95) * h), float(rng.uniform(0.05, 0.95) * w)
        positive = i % 5 != 3
        points.append((y, x))
        labels.append(int(positive))
        time.sleep(PAUSE)
        times["api"].append(timed(sessions["api"], y, x, positive))
        if microsam is not None:
            time.sleep(PAUSE)
            times["micro-sam"].append(microsam.click(points, labels))
        # the adaptive interactive count judges the load since our previous click; here the other engines' clicks
        # came in between, which a user's session never has: the window starts after them
        work_done()
        time.sleep(PAUSE)
        worker = threading.Thread(target=widget_click, args=(sessions["widget"], y, x, positive, times["widget"]))
        worker.start()
        worker.join()
    return times
