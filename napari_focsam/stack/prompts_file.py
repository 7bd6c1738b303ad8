"""Prompts files for batch segmentation: CSV or JSON; each prompt names a slice, an object, and what it is.

CSV (a header row, then one prompt per row; column names are case-insensitive)::

    slice,object_id,y,x,label            # a click: label 1/positive/pos/+/true/yes or 0/negative/neg/-/false/no
    3,1,120.5,88,positive
    3,1,130,95,negative
    4,2,,,,40,30,80,75                   # (with y0,x0,y1,x1 columns) a box, y0 x0 y1 x1 inclusive

``slice`` (aliases ``z``, ``index``) is the flat slice number (for a (Z, Y, X) stack simply z); with a ``t`` column
too, (t, slice) is the index into a (T, Z, Y, X) stack. ``object_id`` (aliases ``object``, ``id``) is the positive
integer written into the label stack. ``label`` may be left out (every click positive). Box columns are optional.

Polygons, scribbles and masks (CSV): a ``kind`` column (``click``, ``box``, ``polygon``, ``scribble``, ``mask``;
empty = click or box as above). A polygon or scribble is one row per vertex with the same slice, object and
``shape`` number, vertices in file order; a scribble's ``label`` says positive or negative. A mask row names a label
image in a ``mask`` column (a path, relative to the prompts file: .tif/.tiff, .npy, .png) and optionally the label
id in it (``mask_value``, default the object id); the label image is one slice (Y, X) or the whole stack::

    slice,object_id,kind,shape,y,x,label,mask,mask_value
    3,1,polygon,1,10,10,,,
    3,1,polygon,1,10,60,,,
    3,1,polygon,1,50,35,,,
    3,2,scribble,1,80,20,negative,,
    3,2,scribble,1,90,40,negative,,
    4,3,mask,,,,,labels.tif,7

JSON: a list of prompts (or ``{"prompts": [...]}``); each is either one click or box with the CSV's keys, or one
object on one slice with ``"points": [[y, x], ...]``, optional ``"labels": [1, 0, ...]`` and optional ``"box"``,
``"polygons": [[[y, x], ...], ...]``, ``"scribbles": [{"points": [[y, x], ...], "positive": true}, ...]`` and
``"mask": "labels.tif"`` with optional ``"mask_value"``.

One object's prompts on one slice are applied in the order box, region (its mask and polygons, the polygons
filled by the nonzero rule and united), scribbles, clicks; scribbles and clicks in file order (see
:meth:`ObjectSession.sync <napari_focsam.engine.session.ObjectSession.sync>`).

Clicks of one object on one slice are applied in file order, as a user would have clicked them. An object with only
negative clicks on a slice is *absent* there: it gets no pixels, and it stops propagation through z.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["PromptRecord", "PromptsFileError", "read_prompts"]

_ALIASES = {
    "slice": ("slice", "z", "index"),
    "t": ("t", "time", "frame"),
    "object_id": ("object_id", "object", "id", "obj"),
    "y": ("y", "row"),
    "x": ("x", "col", "column"),
    "label": ("label", "positive", "polarity", "sign", "is_positive"),
    "y0": ("y0",), "x0": ("x0",), "y1": ("y1",), "x1": ("x1",),
    "kind": ("kind", "type", "prompt", "shape_type", "shape-type"),
    "shape": ("shape", "shape_id", "stroke", "polygon_id"),
    "mask": ("mask", "mask_file", "labels_file"),
    "mask_value": ("mask_value", "mask_label", "label_id"),
}
KINDS = ("click", "box", "polygon", "scribble", "mask")
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
    kind: str = ""  #: "" (a click and/or a box), "polygon", "scribble" or "mask"
    vertices: tuple[tuple[float, float], ...] = ()  #: a polygon's or scribble's (y, x) points
    shape: int | None = None  #: which polygon/scribble of the object a CSV vertex row belongs to
    mask: str | None = None  #: a label image file (absolute, or relative to the working directory)
    mask_value: int | None = None  #: the label id in that file (default: the object id)


def read_prompts(path: str | os.PathLike[str]) -> list[PromptRecord]:
    """Read a CSV or JSON prompts file (by its suffix; anything else is tried as CSV)."""
    path = Path(os.fspath(path)).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise PromptsFileError(f"{path}: no such prompts file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsFileError(f"{path}: cannot read the prompts file ({exc})") from exc
    records = _read_json(text, path.name) if path.suffix.lower() == ".json" else _read_csv(text, path.name)
    return [replace(r, mask=str(path.parent / r.mask)) if r.mask and not Path(r.mask).expanduser().is_absolute()
            else r for r in records]


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool):
        raise PromptsFileError(f"{where}: {what} must be a number, got {value!r}")
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise PromptsFileError(f"{where}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise PromptsFileError(f"{where}: {what} must be finite, got {value!r}")
    return number


def _integer(value: Any, what: str, where: str) -> int:
    number = _number(value, what, where)
    if number != int(number):
        raise PromptsFileError(f"{where}: {what} must be a whole number, got {value!r}")
    return int(number)


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
    index = _integer(fields["slice"], "slice", where)
    t = _integer(fields["t"], "t", where) if present("t") else None
    object_id = _integer(fields["object_id"], "object_id", where)
    if object_id < 1:
        raise PromptsFileError(f"{where}: object_id must be a positive integer (0 is background), got {object_id}")
    kind = str(fields.get("kind") or "").strip().lower()
    if kind in ("click", "point", "box"):
        kind = ""
    if kind and kind not in KINDS:
        raise PromptsFileError(f"{where}: unknown kind {fields['kind']!r} (known: {', '.join(KINDS)})")
    if kind == "mask":
        if not present("mask"):
            raise PromptsFileError(f"{where}: a mask prompt needs a mask column (a label image file)")
        value = _integer(fields["mask_value"], "mask_value", where) if present("mask_value") else None
        return PromptRecord(where, index, t, object_id, kind="mask", mask=str(fields["mask"]).strip(),
                            mask_value=value)
    if kind in ("polygon", "scribble"):
        if not (present("y") and present("x")):
            raise PromptsFileError(f"{where}: a {kind} vertex needs y and x")
        shape = _integer(fields["shape"], "shape", where) if present("shape") else 0
        vertex = (_number(fields["y"], "y", where), _number(fields["x"], "x", where))
        positive = _polarity(fields["label"], where) if present("label") else True
        return PromptRecord(where, index, t, object_id, positive=positive, kind=kind, vertices=(vertex,), shape=shape)
    has_point = present("y") or present("x")
    box_fields = [present(n) for n in ("y0", "x0", "y1", "x1")]
    if any(box_fields) and not all(box_fields):
        raise PromptsFileError(f"{where}: a box needs all of y0, x0, y1, x1")
    if has_point and not (present("y") and present("x")):
        raise PromptsFileError(f"{where}: a click needs both y and x")
    if not has_point and not all(box_fields):
        raise PromptsFileError(f"{where}: neither a click (y, x) nor a box (y0, x0, y1, x1)")
    point = (_number(fields["y"], "y", where), _number(fields["x"], "x", where)) if has_point else None
    box = None
    if all(box_fields):
        y0, x0, y1, x1 = (_number(fields[n], n, where) for n in ("y0", "x0", "y1", "x1"))
        box = (y0, x0, y1, x1)
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
    if not ({"y", "x"} <= set(columns.values()) or {"y0", "x0", "y1", "x1"} <= set(columns.values())
            or {"kind", "mask"} <= set(columns.values())):
        raise PromptsFileError(f"{name}: the header needs y and x columns (clicks, polygons, scribbles), "
                               "y0, x0, y1, x1 (boxes) or kind and mask (masks)")
    records = []
    for row in reader:
        where = f"{name}:{numbered[min(reader.line_num, len(numbered)) - 1][0]}"
        if None in row:
            raise PromptsFileError(f"{where}: more values than columns")
        records.append(_record({columns[k]: v for k, v in row.items()}, where))
    if not records:
        raise PromptsFileError(f"{name}: no prompts after the header")
    return _group_shapes(records)


def _group_shapes(records: list[PromptRecord]) -> list[PromptRecord]:
    """Merge the CSV's vertex rows of one polygon or scribble (same slice, t, object, kind and shape) into one
    record, at the place of its first row."""
    out: list[PromptRecord] = []
    shapes: dict[tuple, int] = {}
    for record in records:
        if record.kind not in ("polygon", "scribble"):
            out.append(record)
            continue
        key = (record.slice, record.t, record.object_id, record.kind, record.shape)
        if key not in shapes:
            shapes[key] = len(out)
            out.append(record)
        else:
            first = out[shapes[key]]
            if first.positive != record.positive:
                raise PromptsFileError(f"{record.where}: this scribble's label differs from its first row's "
                                       f"({first.where})")
            out[shapes[key]] = replace(first, vertices=first.vertices + record.vertices)
    return out


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
        structured = ("points", "labels", "box", "polygons", "scribbles", "mask", "mask_value")
        columns = _canonical([k for k in item if k not in structured], where)
        fields = {columns[k]: v for k, v in item.items() if k in columns}
        if not any(k in item for k in structured):
            records.append(_record(fields, where))
            continue
        records.extend(_json_shapes(item, fields, where))
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


def _json_shapes(item: dict[str, Any], fields: dict[str, Any], where: str) -> list[PromptRecord]:
    """The polygon, scribble and mask records of one JSON object record."""
    base = _record({**fields, "kind": "mask", "mask": "-"}, where)  # checks slice, t, object_id
    out = []
    if item.get("mask") is not None:
        value = item.get("mask_value")
        out.append(replace(base, mask=str(item["mask"]), mask_value=None if value is None else _integer(
            value, "mask_value", where)))
    polygons = item.get("polygons") or []
    scribbles = item.get("scribbles") or []
    if not isinstance(polygons, list) or not isinstance(scribbles, list):
        raise PromptsFileError(f"{where}: 'polygons' and 'scribbles' must be lists")
    for j, polygon in enumerate(polygons):
        out.append(replace(base, where=f"{where}.polygons[{j}]", kind="polygon", mask=None,
                           vertices=_vertices(polygon, f"{where}.polygons[{j}]")))
    for j, scribble in enumerate(scribbles):
        here = f"{where}.scribbles[{j}]"
        points, positive = (scribble.get("points"), scribble.get("positive", True)) if isinstance(scribble, dict) \
            else (scribble, True)
        out.append(replace(base, where=here, kind="scribble", mask=None, vertices=_vertices(points, here),
                           positive=_polarity(positive, here)))
    return out


def _vertices(points: Any, where: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
        raise PromptsFileError(f"{where}: expected a list of [y, x] points")
    return tuple((_number(p[0], "y", where), _number(p[1], "x", where)) for p in points)
