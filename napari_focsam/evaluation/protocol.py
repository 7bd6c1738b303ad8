"""The evaluation protocol's settings: number of clicks, ignore-pixel policy, tie breaking, reported metrics.

**Ignore pixels (value 255 in the ground truth, GrabCut's "unknown" band).** The official FocSAM code never ignores
anything: its clicker and its IoU both test ``gt == 1``, so a 255 pixel is plain background (a prediction there is a
false positive, and a negative click may land there). The project issue and the datasets README ask instead that
ignore pixels be excluded (the RITM convention). ``ignore_mode`` makes this explicit:

* ``"clicks"`` (default): 255 pixels are excluded from the click simulator's error maps (the simulator never
  clicks into the unknown band, as the issue specifies), while the IoU is the paper's (255 = background);
* ``"none"``: the official FocSAM code bit for bit (255 = background for clicks and IoU) — use it to reproduce
  Table 1 of the paper;
* ``"all"``: the RITM convention: 255 pixels are excluded from the clicks and from the IoU.

Only GrabCut has ignore pixels among the bundled datasets; on the others all three modes are identical.

**Ties** (several pixels at the maximal distance): ``"random"`` (default) picks uniformly, as the official
``random.choice``, with a generator seeded from ``(seed, object key)`` so that every object's clicks are
reproducible whatever the order of evaluation or resumption; ``"first"`` takes the first in row-major order.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

IGNORE_VALUE = 255
IGNORE_MODES = ("clicks", "none", "all")
TIE_BREAKS = ("random", "first")
#: the official ClickTestLoop's reported clicks (mIoU at these click counts)
MIOU_CLICKS = (1, 2, 3, 4, 5, 10, 15, 20)
#: NoC thresholds (IoU), as the official noc85/noc90/noc95
NOC_THRESHOLDS = (0.85, 0.90, 0.95)
#: the paper's §4.3: ΔIoU between consecutive clicks, kept when it is a drop of at least 1 %
DELTA_IOU_THRESHOLD = -0.01


@dataclass(frozen=True)
class Protocol:
    """How objects are evaluated; stored with every result folder so that a resumed run cannot mix protocols."""

    n_clicks: int = 20
    ignore_mode: str = "clicks"
    tie_break: str = "random"
    seed: int = 42
    noc_thresholds: tuple[float, ...] = field(default=NOC_THRESHOLDS)
    miou_clicks: tuple[int, ...] = field(default=MIOU_CLICKS)
    delta_threshold: float = DELTA_IOU_THRESHOLD
    #: the first step's prompt: "click" (the simulator's), or one simulated from the ground truth (box, polygon,
    #: scribble, mask; see :mod:`.first_prompts`), after which the click simulator goes on
    first_prompt: str = "click"

    def __post_init__(self) -> None:
        if self.n_clicks < 1:
            raise ValueError(f"n_clicks must be at least 1, got {self.n_clicks}")
        if self.ignore_mode not in IGNORE_MODES:
            raise ValueError(f"ignore_mode must be one of {IGNORE_MODES}, got {self.ignore_mode!r}")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {self.tie_break!r}")
        from .first_prompts import FIRST_PROMPTS

        if self.first_prompt not in FIRST_PROMPTS:
            raise ValueError(f"first_prompt must be one of {FIRST_PROMPTS}, got {self.first_prompt!r}")
        object.__setattr__(self, "noc_thresholds", tuple(float(t) for t in self.noc_thresholds))
        object.__setattr__(self, "miou_clicks", tuple(int(k) for k in self.miou_clicks))

    @classmethod
    def official(cls, n_clicks: int = 20) -> Protocol:
        """The FocSAM code's protocol: no ignore pixels anywhere, uniform tie breaking."""
        return cls(n_clicks=n_clicks, ignore_mode="none")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["noc_thresholds"] = list(self.noc_thresholds)
        data["miou_clicks"] = list(self.miou_clicks)
        if self.first_prompt == "click":
            del data["first_prompt"]  # as before first prompts existed, so earlier results stay resumable
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def ignore_masks(self, gt: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The (click ignore, IoU ignore) masks of a ground truth under this protocol; ``None`` = nothing ignored."""
        if self.ignore_mode == "none":
            return None, None
        ignore = np.asarray(gt) == IGNORE_VALUE
        if not ignore.any():
            return None, None
        return ignore, (ignore if self.ignore_mode == "all" else None)

    def first_prompt_rng(self, key: str) -> np.random.Generator:
        """The generator of one object's simulated first prompt (independent of the tie-breaking one)."""
        digest = hashlib.sha256(f"{self.seed}:first-prompt:{self.first_prompt}:{key}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def rng(self, key: str) -> np.random.Generator | None:
        """The tie-breaking generator of one object (``None`` for row-major-first ties)."""
        if self.tie_break == "first":
            return None
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))
