"""Checking model files: SHA-256 (or xxh128, where the authors pin that; see :mod:`.hashing`), structure (every key
and shape), and a record of the files already checked.

A file in the models folder is checked once, in full (hash when the registry knows it, else structure), and the
result is recorded in ``<models_dir>/.verified/<file name>.json`` with the file's size and modification time; later
uses trust the record while both are unchanged, so a 2.5 GB file is not hashed at every start. Anything that changes
the file (a partial copy, an overwrite, bit rot noticed by the OS) changes one of them and triggers a new check;
``napari-focsam models verify`` always re-checks everything in full.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch

from ..models.specs import SPECS, get_spec
from .checkpoint import (
    LEAN_FORMAT,
    CheckpointError,
    best_matching_spec,
    check_compatible,
    describe_weights,
    read_checkpoint,
    to_model_keys,
)
from .hashing import ProgressCallback, check_hash, hash_file, qualified_hash, sha256_file
from .registry import REGISTRY, ModelEntry, format_bytes, get_entry, models_dir

_CHUNK = 1 << 20
_MARKERS = ".verified"
log = logging.getLogger("napari_focsam.models")


# ---------------------------------------------------------------------------------------------------------- formats
def is_torch_zip(path: Path) -> bool:
    """True for PyTorch's zip checkpoint format (one ``<folder>/data.pkl``), which is also a zip file."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def archive_member(path: Path, file_name: str) -> str | None:
    """The member of zip ``path`` called ``file_name`` (in any folder; the shallowest wins), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and PurePosixPath(n).name == file_name]
    except (zipfile.BadZipFile, OSError):
        return None
    return min(names, key=lambda n: (n.count("/"), n)) if names else None


def extract_member(
    archive_path: Path, member: str, destination: Path, progress: ProgressCallback | None = None
) -> Path:
    """Copy one zip member to ``destination`` (CRC-checked by :mod:`zipfile`); errors become CheckpointError."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            total = archive.getinfo(member).file_size
            done = 0
            with archive.open(member) as src, open(destination, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        destination.unlink(missing_ok=True)
        raise CheckpointError(f"{archive_path} is a damaged zip archive ({exc}); download it again") from None
    return destination


def mapped_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors in our key layout; safetensors files yield shape-only (meta) tensors, read cheaply."""
    if path.suffix == ".safetensors":
        return {k: torch.empty(shape, device="meta") for k, shape in _safetensors_header(path)[1].items()}
    return to_model_keys(read_checkpoint(path))


def _safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    return metadata, shapes


def check_structure(path: Path, spec_name: str) -> str:
    """Raise CheckpointError unless the file's keys and shapes fit ``spec_name``; return what it looks like."""
    from .segnext import check_segnext_file, is_segnext

    if is_segnext(spec_name):
        return check_segnext_file(path, spec_name)
    state = mapped_state(path)
    spec = get_spec(spec_name)
    check_compatible(spec, state, str(path), decoder_only=spec.decoder == "pa")  # PA-SAM: the decoder file alone
    return describe_weights(state)


def check_lean(path: Path, entry: ModelEntry) -> str:
    """A lean file made for ``entry``: our format tag, the right model, every key and shape (header only)."""
    metadata, _ = _safetensors_header(path)
    if metadata.get("format") != LEAN_FORMAT or metadata.get("model") != entry.spec_name:
        raise CheckpointError(f"{path} is not a napari-focsam lean file of {entry.spec_name} (metadata {metadata})")
    assert entry.spec_name is not None
    return check_structure(path, entry.spec_name)


# ---------------------------------------------------------------------------------------------------------- records
def _marker(path: Path) -> Path:
    return path.parent / _MARKERS / f"{path.name}.json"


def record_verified(path: Path, sha256: str | None, looks_like: str) -> None:
    """Remember that ``path`` (as it is now: size and mtime) passed its check (best effort: a read-only cache
    folder only means the check is repeated next time). ``sha256``: the digest checked, ``"algorithm:hex"`` or a
    bare SHA-256 hex digest; None: checked by structure."""
    stat = path.stat()
    marker = _marker(path)
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256, "looks_like": looks_like}
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(marker.name + ".partial")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, marker)
    except OSError as exc:
        log.info("could not record the check of %s: %s", path, exc)


def forget_verified(path: Path) -> None:
    try:
        _marker(path).unlink(missing_ok=True)
    except OSError:
        pass


def recorded(path: Path, entry: ModelEntry) -> bool:
    """True when ``path`` passed its check before and has not changed since (size and mtime)."""
    try:
        record = json.loads(_marker(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return False
    lean = path.suffix == ".safetensors"  # our own derived file: checked by structure, never by an official hash
    expected = entry.checkpoint_hash
    return lean or expected is None or qualified_hash(record.get("sha256")) == expected


def ensure_verified(path: Path, entry: ModelEntry, progress: ProgressCallback | None = None) -> None:
    """Check a cached checkpoint of ``entry`` (hash if known, else structure) unless already recorded as good.

    ``progress(done, total)`` follows the hashing of a large file."""
    if recorded(path, entry):
        return
    expected = entry.checkpoint_hash
    if expected is not None:
        check_hash(path, expected, f"the official {entry.display_name} file", progress)
        record_verified(path, expected, entry.display_name)
    else:
        assert entry.spec_name is not None
        record_verified(path, None, check_structure(path, entry.spec_name))


# ---------------------------------------------------------------------------------------------------------- reports
@dataclass
class VerifyReport:
    """What a file is and whether it passed: see :func:`verify_file`."""

    path: Path
    size: int
    kind: str
    sha256: str | None = None
    #: computed too when the entry's pinned hash is an xxh128 (micro-sam)
    xxh128: str | None = None
    entry: ModelEntry | None = None
    #: the official hash this file was compared with, ``"algorithm:hex"`` (None: none published, checked by
    #: structure)
    expected_hash: str | None = None
    hash_ok: bool | None = None
    looks_like: str = ""
    structure_ok: bool | None = None
    #: the architecture checked when no registry entry applies (the tiny test models)
    spec_name: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.hash_ok is not False and self.structure_ok is not False

    def summary(self) -> str:
        lines = [str(self.path), f"  size:       {self.size:,} bytes ({format_bytes(self.size)})",
                 f"  format:     {self.kind}"]
        compared = (self.expected_hash or "").partition(":")[0]
        for algorithm, digest in (("sha256", self.sha256), ("xxh128", self.xxh128)):
            if digest is None:
                continue
            verdict = ""
            if self.entry is not None and compared == algorithm and self.hash_ok is not None:
                what = f"{self.entry.display_name} {'download' if self.entry.archive else 'file'}"
                verdict = (f": the official {what} ({self.path.name})" if self.hash_ok
                           else f": NOT the official {what} (expected {(self.expected_hash or '').partition(':')[2]})")
            elif self.entry is not None and self.path.suffix == ".safetensors":
                verdict = " (a lean copy made from the checkpoint: checked by structure)"
            elif self.entry is not None and not compared:
                verdict = f" (no published hash for {self.entry.name}: checked by structure)"
            lines.append(f"  {algorithm}:{' ' * (11 - len(algorithm))}{digest}{verdict}")
        if self.looks_like:
            lines.append(f"  looks like: {self.looks_like}")
        spec_name = self.entry.spec_name if self.entry is not None else self.spec_name
        if self.structure_ok is not None and spec_name is not None:
            fits = "fits" if self.structure_ok else "does NOT fit"
            lines.append(f"  structure:  {fits} {spec_name} (every key and shape)")
        lines.extend(f"  problem:    {p}" for p in self.problems)
        lines.append(f"  result:     {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def _kind(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "safetensors (tensors only)"
    if is_torch_zip(path):
        return "PyTorch zip checkpoint"
    if zipfile.is_zipfile(path):
        return "zip archive"
    return "other (not a zip-format PyTorch checkpoint or safetensors file)"


def _match_entry(path: Path, report: VerifyReport, state: Mapping[str, torch.Tensor] | None
                 ) -> ModelEntry | None:
    candidates = [e for e in REGISTRY.values() if e.has_weights]
    for entry in candidates:
        if report.sha256 is not None and entry.checkpoint_sha256 == report.sha256:
            return entry
    pinned = [e for e in candidates if e.xxh128 and not e.archive]
    if pinned and report.sha256 is not None:  # a full check: the xxh128 too, to know files pinned that way
        report.xxh128 = hash_file(path, "xxh128")
        match = next((e for e in pinned if e.xxh128 == report.xxh128), None)
        if match is not None:
            return match
    for entry in candidates:
        if path.name in (entry.file_name, entry.lean_name, entry.archive_name):
            return entry
    spec = best_matching_spec(state) if state else None
    return next((e for e in candidates if spec is not None and e.spec_name == spec.name), None)


def verify_file(path: str | os.PathLike, name: str | None = None, *, full_hash: bool = True) -> VerifyReport:
    """Check a model file in full: hash (against ``name``'s entry, or any registry entry), format and structure.

    Zip archives holding a registered checkpoint (the FocSAM download) are checked through that member. Without
    ``name`` the entry is found by hash, then by file name, then by structure. Never raises for a bad file: the
    report says what is wrong (``report.ok``, ``report.summary()``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    spec_only = name if name is not None and name not in REGISTRY and name in SPECS else None
    entry = get_entry(name) if name is not None and spec_only is None else None
    report = VerifyReport(path=path, size=path.stat().st_size, kind=_kind(path), entry=entry, spec_name=spec_only)
    report.sha256 = sha256_file(path) if full_hash else None
    if report.kind == "zip archive":
        return _verify_archive(report)
    state = None
    try:
        state = mapped_state(path)
        report.looks_like = describe_weights(state)
    except CheckpointError as exc:
        report.problems.append(str(exc))
    if spec_only is not None:
        if state is not None:
            _check_structure(report, spec_only, state)
        return report
    if entry is None:
        report.entry = entry = _match_entry(path, report, state)
    if entry is None:
        if state is not None:
            report.problems.append("no model napari-focsam knows can load this file (no matching hash, file name "
                                   "or structure); check it against one with --model NAME")
        return report
    if path.suffix != ".safetensors":  # a lean file is ours: checked by structure only
        report.expected_hash = entry.checkpoint_hash
    if report.expected_hash is not None and report.sha256 is not None:
        if report.expected_hash.startswith("xxh128:") and report.xxh128 is None:
            report.xxh128 = hash_file(path, "xxh128")
        digest = report.xxh128 if report.expected_hash.startswith("xxh128:") else report.sha256
        report.hash_ok = report.expected_hash.partition(":")[2] == digest
    if state is not None and entry.spec_name is not None:
        _check_structure(report, entry.spec_name, state)
    if report.ok and path.parent == models_dir() and path.name in (entry.file_name, entry.lean_name):
        checked = report.expected_hash if report.hash_ok else report.sha256
        record_verified(path, checked, report.looks_like)
    return report


def _check_structure(report: VerifyReport, spec_name: str, state: Mapping[str, torch.Tensor]) -> None:
    try:
        if spec_name.startswith("segnext_"):
            check_structure(report.path, spec_name)
        else:
            spec = get_spec(spec_name)
            check_compatible(spec, state, str(report.path), decoder_only=spec.decoder == "pa")
        report.structure_ok = True
    except CheckpointError as exc:
        report.structure_ok = False
        report.problems.append(str(exc).splitlines()[0])


def _verify_archive(report: VerifyReport) -> VerifyReport:
    if report.entry is None and report.sha256 is not None:
        report.entry = next((e for e in REGISTRY.values() if e.archive and e.sha256 == report.sha256), None)
    entries = [report.entry] if report.entry else [e for e in REGISTRY.values() if e.archive]
    for entry in entries:
        file_name = entry.file_name if entry else None
        if file_name is None:
            continue
        member = archive_member(report.path, file_name)
        if member is None:
            continue
        staging = models_dir() / ".partial"
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging, prefix="verify-") as tmp:
            try:
                extracted = extract_member(report.path, member, Path(tmp) / file_name)
            except CheckpointError as exc:
                report.entry = entry
                report.problems.append(str(exc))
                return report
            inner = verify_file(extracted, entry.name)
        report.kind = f"zip archive holding {member}"
        report.entry, report.expected_hash = entry, entry.known_hash
        if entry.sha256 is not None and report.sha256 is not None:
            report.hash_ok = report.sha256 == entry.sha256
        report.looks_like, report.structure_ok = inner.looks_like, inner.structure_ok
        report.problems.extend(inner.problems)
        return report
    wanted = report.entry.file_name if report.entry else " or ".join(e.file_name or "" for e in entries)
    report.problems.append(f"the archive holds no {wanted}")
    return report
