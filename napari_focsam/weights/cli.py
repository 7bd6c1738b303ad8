"""``napari-focsam models list | download NAME | verify [PATH]``, and the same as Python functions.

Wire it into the main parser with ``register(subparsers)``; every command returns an exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..models.specs import SPECS
from .registry import CACHE_ENV, GROUPS, REGISTRY, ModelEntry, get_entry, models_dir


# ---------------------------------------------------------------------------------------------------------- Python
def list_models() -> list[dict[str, Any]]:
    """One row per registered model, by group (general, microscopy, medical): name, model, file, size, licence,
    cached (state), where (path or None) and group."""
    from .download import cache_status

    rows = []
    for entry in sorted(REGISTRY.values(), key=lambda e: GROUPS.index(e.group)):  # stable: registry order within
        state, where = cache_status(entry)
        rows.append({"name": entry.name, "model": entry.display_name, "file": entry.file_name or "-",
                     "size": entry.human_size if entry.has_weights else "-", "licence": entry.licence,
                     "cached": state, "where": str(where) if where is not None else "", "group": entry.group,
                     "entry": entry})
    return rows


def models_table() -> str:
    """The ``models list`` table, one ``[group]`` heading per group, with the models folder and how to move it."""
    columns = ("name", "model", "file", "size", "licence", "cached")
    rows = list_models()
    cells = [[row[c] + (f": {row['where']}" if c == "cached" and row["where"] else "") for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns[:-1])]
    lines = [f"models folder: {models_dir()}",
             f"  (set {CACHE_ENV} to move the cache; files dropped in this folder are used offline)", ""]
    group = None
    for row, source in [(list(columns), None), *zip(cells, rows, strict=True)]:
        if source is not None and source["group"] != group:
            group = source["group"]
            lines.append(f"[{group}]")
        lines.append("  ".join(v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return "\n".join(lines)


class TqdmProgress:
    """A ``progress(done_bytes, total_bytes)`` callback drawing a tqdm bar (a new bar when a new transfer starts)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def __call__(self, done: int, total: int | None) -> None:
        from tqdm import tqdm

        if self.bar is None or done < self.bar.n or total != self.bar.total:
            self.close()
            self.bar = tqdm(total=total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024, leave=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------------------------------------- commands
def _cmd_list(_: argparse.Namespace) -> int:
    print(models_table())
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .download import DownloadCancelled, download_model

    entry = get_entry(args.name)
    if not entry.has_weights:
        print(f"{entry.name} needs no download: {entry.description}")
        return 0
    size = f", {entry.human_size}" if entry.size is not None or entry.size_note else ""
    print(f"{entry.display_name} ({entry.name}{size}) → {models_dir()}")
    progress = None if args.quiet else TqdmProgress(entry.download_name or entry.name)
    try:
        path = download_model(entry.name, progress=progress, force=args.force, lean=args.lean)
    except (CheckpointError, DownloadCancelled, KeyboardInterrupt) as exc:
        print(f"napari-focsam models: error: {exc or 'interrupted'}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.close()
    print(f"ready: {path}")
    if args.lean:
        print(f"lean copy (preferred by later loads): {models_dir() / entry.lean_name}")
    return 0


def _verify_cached() -> int:
    from .verify import verify_file

    failures = checked = 0
    for entry in REGISTRY.values():
        for path in _present_files(entry):
            report = verify_file(path, entry.name)
            print(report.summary())
            checked += 1
            failures += not report.ok
    if not checked:
        print(f"nothing is cached in {models_dir()}")
    return 1 if failures else 0


def _present_files(entry: ModelEntry) -> list[Path]:
    folder = models_dir()
    names = (entry.lean_name, entry.file_name, entry.archive_name) if entry.has_weights else ()
    return [folder / n for n in names if n and (folder / n).is_file()]


def _cmd_verify(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .verify import verify_file

    if args.path is None:
        return _verify_cached()
    try:
        report = verify_file(args.path, args.model)
    except CheckpointError as exc:
        print(f"napari-focsam models: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if report.ok else 1


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``models`` (with ``list``, ``download``, ``verify``) to the main parser's subparsers."""
    models = subparsers.add_parser("models", help="list, download and verify model weights",
                                   description=f"Model weights live in {models_dir()} (set {CACHE_ENV} to move it).")
    sub = models.add_subparsers(dest="models_command")
    sub.add_parser("list", help="the known models and what is cached").set_defaults(func=_cmd_list)
    download = sub.add_parser("download", help="download (and check) a model's official checkpoint")
    download.add_argument("name", choices=list(REGISTRY), metavar="NAME", help=", ".join(REGISTRY))
    download.add_argument("--force", action="store_true", help="download again even if a good copy is cached")
    download.add_argument("--lean", action="store_true",
                          help="also write a lean tensors-only copy (NAME.safetensors) that later loads prefer")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.set_defaults(func=_cmd_download)
    verify = sub.add_parser("verify", help="check a file (or everything cached): hash, format and structure")
    verify.add_argument("path", nargs="?", help="a checkpoint, lean file or FocSAM zip (default: the whole cache)")
    verify.add_argument("--model", choices=[*REGISTRY, *(n for n in SPECS if n not in REGISTRY)], metavar="NAME",
                        help="check against this model (a registered one, or sam_tiny / focsam_tiny by structure)")
    verify.set_defaults(func=_cmd_verify)
    models.set_defaults(func=lambda _: models.print_help() or 0)
    return models
