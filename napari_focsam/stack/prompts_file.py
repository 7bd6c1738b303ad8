"""Prompts files for batch segmentation: CSV or JSON; each prompt names a slice, an object, and a click or a box.

CSV (a header row, then one prompt per row; column names are case-insensitive)::

    slice,object_id,y,x,label            # a click: label 1/positive/pos/+/true/yes or 0/negative/neg/-/false/no
    3,1,120.5,88,positive
    3,1,130,95,negative
    4,2,,,,40,30,80,75                   # (with y0,x0,y1,x1 columns) a box, y0 x0 y1 x1 inclusive

``slice`` (aliases ``z``, ``index``) is the flat slice number (for a (Z, Y, X) stack simply z); with a ``t`` column
too, (t, slice) is the index into a (T, Z, Y, X) stack. ``object_id`` (aliases ``object``, ``id``) is the positive
integer written into the label stack. ``label`` may be left out (every click positive). Box columns are optional.

JSON: a list of prompts (or ``{"prompts": [...]}``); each is either one click or box with the CSV's keys, or one
object on one slice with ``"points": [[y, x], ...]``, optional ``"labels": [1, 0, ...]`` and optional ``"box"``.

Clicks of one object on one slice are applied in file order, as a user would have clicked them. An object with only
negative clicks on a slice is *absent* there: it gets no pixels, and it stops propagation through z.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.types import Prompts

__all__ = ["PromptRecord", "PromptSet", "PromptsFileError", "build_prompt_set", "read_prompts"]

_ALIASES = {
    "slice": ("slice", "z", "index"),
    "t": ("t", "time", "frame"),
    "object_id": ("object_id", "object", "id", "obj"),
    "y": ("y", "row"),
    "x": ("x", "col", "column"),
    "label": ("label", "positive", "polarity", "sign", "is_positive"),
    "y0": ("y0",), "x0": ("x0",), "y1": ("y1",), "x1": ("x1",),
}
_POSITIVE = {"1", "positive", "pos", "+", "true", "yes", "p", "fg", "foreground"}
_NEGATIVE = {"0", "negative", "neg", "-", "false", "no", "n", "bg", "background", "-1"}


class PromptsFileError(ValueError):
    """A prompts file that cannot be used; the message names the file, line or record, and the problem."""


@dataclass(frozen=True)
class PromptRecord:
    """One click or box as read from the file (not yet checked against a stack)."""

    where: str  #: "file.csv:12" or "file.json[3]", for error messages
    slice: int
    t: int | None
    object_id: int
    point: tuple[float, float] | None = None
    positive: bool = True
    box: tuple[float, float, float, float] | None = None


@dataclass
class PromptSet:
    """Prompts by flat slice number and object id, checked against one stack."""

    prompts: dict[int, dict[int, Prompts]]

    @property
    def slices(self) -> list[int]:
        return sorted(self.prompts)

    @property
    def object_ids(self) -> list[int]:
        return sorted({oid for objects in self.prompts.values() for oid in objects})

    @property
    def has_boxes(self) -> bool:
        return any(p.box is not None for objects in self.prompts.values() for p in objects.values())

    def objects(self, index: int) -> list[tuple[int, Prompts]]:
        return sorted(self.prompts.get(index, {}).items())

    def __len__(self) -> int:
        return sum(len(objects) for objects in self.prompts.values())


def read_prompts(path: str | os.PathLike[str]) -> list[PromptRecord]:
    """Read a CSV or JSON prompts file (by its suffix; anything else is tried as CSV)."""
    path = Path(os.fspath(path)).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise PromptsFileError(f"{path}: no such prompts file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsFileError(f"{path}: cannot read the prompts file ({exc})") from exc
    if path.suffix.lower() == ".json":
        return _read_json(text, path.name)
    return _read_csv(text, path.name)


def _number(value: Any, what: str, where: str, *, integer: bool = False) -> float | int:
    if isinstance(value, bool):
        raise PromptsFileError(f"{where}: {what} must be a number, got {value!r}")
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise PromptsFileError(f"{where}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PromptsFileError(f"{where}: {what} must be finite, got {value!r}")
    if integer:
        if number != int(number):
            raise PromptsFileError(f"{where}: {what} must be a whole number, got {value!r}")
        return int(number)
    return number


def _polarity(value: Any, where: str) -> bool:
    text = str(value).strip().lower()
    if isinstance(value, bool):
        return value
    if text in _POSITIVE:
        return True
    if text in _NEGATIVE:
        return False
    raise PromptsFileError(f"{where}: label must be positive/negative (1/0), got {value!r}")


def _record(fields: dict[str, Any], where: str) -> PromptRecord:
    """One flat click-or-box record from canonical field names (values may be strings or numbers)."""
    def present(name: str) -> bool:
        value = fields.get(name)
        return value is not None and str(value).strip() != ""

    for name in ("slice", "object_id"):
        if not present(name):
            raise PromptsFileError(f"{where}: missing {name}")
    index = _number(fields["slice"], "slice", where, integer=True)
    t = _number(fields["t"], "t", where, integer=True) if present("t") else None
    object_id = _number(fields["object_id"], "object_id", where, integer=True)
    if object_id < 1:
        raise PromptsFileError(f"{where}: object_id must be a positive integer (0 is background), got {object_id}")
    has_point = present("y") or present("x")
    box_fields = [present(n) for n in ("y0", "x0", "y1", "x1")]
    if any(box_fields) and not all(box_fields):
        raise PromptsFileError(f"{where}: a box needs all of y0, x0, y1, x1")
    if has_point and not (present("y") and present("x")):
        raise PromptsFileError(f"{where}: a click needs both y and x")
    if not has_point and not all(box_fields):
        raise PromptsFileError(f"{where}: neither a click (y, x) nor a box (y0, x0, y1, x1)")
    point = (_number(fields["y"], "y", where), _number(fields["x"], "x", where)) if has_point else None
    box = tuple(_number(fields[n], n, where) for n in ("y0", "x0", "y1", "x1")) if all(box_fields) else None
    positive = _polarity(fields["label"], where) if present("label") else True
    if box is not None and not positive and point is None:
        raise PromptsFileError(f"{where}: a box cannot be negative")
    return PromptRecord(where, index, t, object_id, point, positive, box)


def _canonical(names: Iterable[str], where: str) -> dict[str, str]:
    """Map the file's column names onto canonical names; unknown or duplicated columns are errors."""
    out: dict[str, str] = {}
    for name in names:
        key = (name or "").strip().lower()
        canonical = next((c for c, aliases in _ALIASES.items() if key in aliases), None)
        if canonical is None:
            known = ", ".join(aliases[0] for aliases in _ALIASES.values())
            raise PromptsFileError(f"{where}: unknown column {name!r} (known: {known})")
        if canonical in out.values():
            raise PromptsFileError(f"{where}: two columns mean {canonical!r}")
        out[name] = canonical
    return out


def _read_csv(text: str, name: str) -> list[PromptRecord]:
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
                if line.strip() and not line.lstrip().startswith("#")]  # comments and blank lines are skipped
    if not numbered:
        raise PromptsFileError(f"{name}: the prompts file is empty")
    try:
        dialect = csv.Sniffer().sniff(numbered[0][1], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader([line for _, line in numbered], dialect=dialect)
    if reader.fieldnames is None:
        raise PromptsFileError(f"{name}: no header row")
    columns = _canonical(reader.fieldnames, f"{name}:{numbered[0][0]} (header)")
    missing = [c for c in ("slice", "object_id") if c not in columns.values()]
    if missing:
        raise PromptsFileError(f"{name}: missing column(s) {', '.join(missing)} in the header "
                               f"{', '.join(reader.fieldnames)}")
    if not ({"y", "x"} <= set(columns.values()) or {"y0", "x0", "y1", "x1"} <= set(columns.values())):
        raise PromptsFileError(f"{name}: the header needs y and x columns (clicks) or y0, x0, y1, x1 (boxes)")
    records = []
    for row in reader:
        where = f"{name}:{numbered[min(reader.line_num, len(numbered)) - 1][0]}"
        if None in row:
            raise PromptsFileError(f"{where}: more values than columns")
        records.append(_record({columns[k]: v for k, v in row.items()}, where))
    if not records:
        raise PromptsFileError(f"{name}: no prompts after the header")
    return records


def _read_json(text: str, name: str) -> list[PromptRecord]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptsFileError(f"{name}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if not isinstance(data, list):
        raise PromptsFileError(f"{name}: expected a list of prompts (or {{\"prompts\": [...]}})")
    records: list[PromptRecord] = []
    for i, item in enumerate(data):
        where = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise PromptsFileError(f"{where}: each prompt must be an object, got {type(item).__name__}")
        columns = _canonical([k for k in item if k not in ("points", "labels", "box")], where)
        fields = {columns[k]: v for k, v in item.items() if k in columns}
        if "points" not in item and "box" not in item:
            records.append(_record(fields, where))
            continue
        points = item.get("points") or []
        labels = item.get("labels", [1] * len(points))
        if not isinstance(points, list) or not isinstance(labels, list) or len(labels) != len(points):
            raise PromptsFileError(f"{where}: 'points' must be a list of [y, x] and 'labels' a list as long")
        box = item.get("box")
        if box is not None:
            if not isinstance(box, list) or len(box) != 4:
                raise PromptsFileError(f"{where}: 'box' must be [y0, x0, y1, x1]")
            records.append(_record({**fields, **dict(zip(("y0", "x0", "y1", "x1"), box))}, where))
        for j, (point, label) in enumerate(zip(points, labels)):
            if not isinstance(point, list) or len(point) != 2:
                raise PromptsFileError(f"{where}.points[{j}]: a point is [y, x], got {point!r}")
            records.append(_record({**fields, "y": point[0], "x": point[1], "label": label}, f"{where}.points[{j}]"))
    if not records:
        raise PromptsFileError(f"{name}: no prompts")
    return records


def build_prompt_set(records: Iterable[PromptRecord], leading_shape: tuple[int, ...],
                     image_shape: tuple[int, int]) -> PromptSet:
    """Check the records against a stack (slice range, clicks and boxes inside the image) and group them."""
    n_slices = math.prod(leading_shape)
    height, width = image_shape
    grouped: dict[int, dict[int, Prompts]] = {}
    for record in records:
        if record.t is not None:
            if len(leading_shape) != 2:
                raise PromptsFileError(f"{record.where}: a t column needs a (T, Z, Y, X) stack; this stack's "
                                       f"leading axes are {leading_shape}")
            if not (0 <= record.t < leading_shape[0] and 0 <= record.slice < leading_shape[1]):
                raise PromptsFileError(f"{record.where}: (t={record.t}, slice={record.slice}) is outside the stack "
                                       f"of {leading_shape[0]} time points x {leading_shape[1]} slices")
            index = record.t * leading_shape[1] + record.slice
        else:
            index = record.slice
            if not 0 <= index < n_slices:
                raise PromptsFileError(f"{record.where}: slice {index} is outside the stack of {n_slices} slices "
                                       f"(0..{n_slices - 1})")
        coords = ([record.point] if record.point else []) + ([record.box[:2], record.box[2:]] if record.box else [])
        for y, x in coords:
            if not (-0.5 <= y < height - 0.5 and -0.5 <= x < width - 0.5):
                raise PromptsFileError(f"{record.where}: (y={y:g}, x={x:g}) is outside the {height}x{width} slice")
        objects = grouped.setdefault(index, {})
        prompts = objects.get(record.object_id, Prompts())
        if record.box is not None:
            if prompts.box is not None:
                raise PromptsFileError(f"{record.where}: object {record.object_id} already has a box on slice {index}")
            prompts = prompts.with_box(record.box)
        if record.point is not None:
            prompts = prompts.with_point(record.point[0], record.point[1], record.positive)
        objects[record.object_id] = prompts
    return PromptSet(grouped)
