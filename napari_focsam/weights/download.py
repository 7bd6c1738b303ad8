"""Finding, downloading and checking model weights: :func:`resolve_checkpoint` is the one entry point.

Order of preference for a registered model:

1. an explicit ``checkpoint`` path (used as it is; a FocSAM zip is extracted into the cache first);
2. the lean copy ``<models_dir>/<name>.safetensors`` made by :func:`make_lean`, if it is sound;
3. the checkpoint in ``<models_dir>`` (downloaded earlier or dropped there by hand), checked once (hash when known,
   else structure) and then trusted while unchanged; a FocSAM zip dropped there is extracted;
4. a download with pooch into a private staging folder: hash-checked (or, without a published hash, structure-checked
   after extraction) and only then moved under its final name, so an interrupted or corrupt download never leaves a
   file that looks complete; a cached file that fails its check is deleted and downloaded again;
5. otherwise :class:`ModelUnavailable`, whose message names the URL, the expected file name and hash, and the folder
   to drop the file into.

Progress is reported through a plain callback ``progress(done_bytes, total_bytes)`` (``total_bytes`` is None when the
server does not say), for downloads and for the first check (hash) or extraction of a large file; a new transfer
starts again from 0. The CLI feeds a tqdm bar, the widget a napari progress bar. Raising :class:`DownloadCancelled`
(or anything else) from the callback stops the download and leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from html import unescape
from pathlib import Path
from urllib.parse import urlencode, urljoin

from .checkpoint import CheckpointError, read_checkpoint, save_lean
from .registry import CACHE_ENV, ModelEntry, get_entry, models_dir
from .verify import (
    ProgressCallback,
    archive_member,
    check_lean,
    check_structure,
    ensure_verified,
    extract_member,
    forget_verified,
    record_verified,
    recorded,
)

log = logging.getLogger("napari_focsam.models")
_TIMEOUT = (15, 60)  # connect, read (seconds)
_CHUNK = 1 << 20


class ModelUnavailable(CheckpointError):
    """A registered model's weights are neither on disk nor downloadable; the message says how to get them."""


class DownloadCancelled(Exception):
    """Raised from a progress callback to stop a download (nothing is left behind)."""


class DownloadError(OSError):
    """The server answered, but not with the file (e.g. a web page)."""


# ---------------------------------------------------------------------------------------------------------- API
def resolve_checkpoint(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: ProgressCallback | None = None,
    prefer_lean: bool = True,
) -> Path | None:
    """The checkpoint file to load model ``name`` from (None for entries without weights, i.e. the fallback).

    ``ModelManager.load(name, checkpoint=resolve_checkpoint(name))`` works for every registered model. Raises
    :class:`ModelUnavailable` (offline, or ``download=False`` and nothing usable cached) with instructions, and
    :class:`~napari_focsam.weights.checkpoint.CheckpointError` for an explicit path that does not exist.
    """
    entry = get_entry(name)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint file not found: {path}")
        if entry.archive and entry.file_name and archive_member(path, entry.file_name):
            return _extract(entry, path, progress, remove_archive=False)
        return path
    if not entry.has_weights:
        return None
    found, problems = _find_cached(entry, prefer_lean=prefer_lean, remove_bad=download, progress=progress)
    if found is not None:
        return found
    if not download:
        reason = "; ".join(problems) if problems else f"it is not in {models_dir()} and downloads are off"
        raise ModelUnavailable(offline_message(entry, reason))
    return _download(entry, progress, problems)


def download_model(name: str, *, progress: ProgressCallback | None = None, force: bool = False,
                   lean: bool = False) -> Path:
    """Make sure ``name``'s official checkpoint is in the cache (download it if needed) and return its path.

    ``force`` downloads again even when a good copy is cached; ``lean`` also writes the lean safetensors copy.
    """
    entry = get_entry(name)
    if not entry.has_weights:
        raise ValueError(f"{name!r} has no weights to download")
    if force:  # the good copy (if any) is replaced only once the new download has passed its check
        path = _download(entry, progress, [])
        _remove(models_dir() / entry.lean_name)  # derived from the previous copy
    else:
        found = resolve_checkpoint(name, download=True, progress=progress, prefer_lean=False)
        assert found is not None
        path = found
    if lean:
        make_lean(name, path)
    return path


def make_lean(name: str, checkpoint: str | os.PathLike | None = None) -> Path:
    """Write ``<models_dir>/<name>.safetensors``: tensors only, our key layout; later loads prefer it.

    It loads faster and needs no unpickling at all; the original file stays and still loads directly.
    """
    entry = get_entry(name)
    if entry.spec_name is None:
        raise ValueError(f"{name!r} has no weights")
    source = resolve_checkpoint(name, checkpoint, prefer_lean=False)
    assert source is not None
    check_structure(source, entry.spec_name)
    target = models_dir() / entry.lean_name
    target.parent.mkdir(parents=True, exist_ok=True)
    save_lean(read_checkpoint(source), target, entry.spec_name)
    record_verified(target, None, check_lean(target, entry))
    return target


def offline_message(entry: ModelEntry, reason: str) -> str:
    """What to do when ``entry`` cannot be downloaded: URL, expected file name, hash, and where to put the file."""
    folder = models_dir()
    lines = [f"{entry.display_name} ({entry.name}) is not available: {reason}.",
             "To use it without network access:"]
    if entry.archive:
        lines += [f"  1. on a machine with network access, download the zip from {entry.page_url}",
                  f"     (direct link: {entry.urls[0]});" if entry.urls else "",
                  f"  2. put {entry.file_name} from inside it (or the zip itself, named {entry.archive_name}) in",
                  f"     {folder}"]
    elif not entry.urls:  # a manual download (PA-SAM): where to get it and where to put it
        size = f" ({entry.human_size})" if entry.size is not None or entry.size_note else ""
        lines += [f"  It cannot be downloaded automatically. {entry.description}",
                  f"  1. get {entry.file_name}{size} as described at {entry.page_url};",
                  f"  2. put it, named {entry.file_name}, in", f"     {folder}"]
    else:
        url = entry.urls[0] if entry.urls else entry.page_url
        size = f" ({entry.human_size})" if entry.size is not None or entry.size_note else ""
        lines += [f"  1. on a machine with network access, download {url}{size};",
                  f"  2. put it, named {entry.file_name}, in", f"     {folder}"]
    if entry.known_hash:
        of = " of the zip" if entry.archive else ""
        algorithm, _, digest = entry.known_hash.partition(":")
        lines.append(f"  expected {algorithm}{of}: {digest} (check a file with `napari-focsam models verify FILE`)")
    else:
        lines.append(f"  expected sha256: none published ({entry.hash_note})")
    lines += [f"  That folder is <cache>/models; set {CACHE_ENV} to move the cache.",
              "  Or pass checkpoint=PATH (--checkpoint PATH) to use a file anywhere."]
    return "\n".join(line for line in lines if line)


def cache_status(entry: ModelEntry) -> tuple[str, Path | None]:
    """A quick (no hashing) look at what is cached for ``entry``: (state, path)."""
    if not entry.has_weights:
        return "no file needed", None
    folder = models_dir()
    lean = folder / entry.lean_name
    if lean.is_file():
        return ("lean copy" if recorded(lean, entry) else "lean copy (not yet checked)"), lean
    path = folder / (entry.file_name or "")
    if path.is_file():
        return ("yes" if recorded(path, entry) else "yes (not yet checked)"), path
    if entry.archive_name and (folder / entry.archive_name).is_file():
        return "zip (not yet extracted)", folder / entry.archive_name
    return "no", None


# ---------------------------------------------------------------------------------------------------------- cache
def _find_cached(
    entry: ModelEntry, *, prefer_lean: bool, remove_bad: bool, progress: ProgressCallback | None
) -> tuple[Path | None, list[str]]:
    folder = models_dir()
    problems: list[str] = []
    lean = folder / entry.lean_name
    if prefer_lean and lean.is_file():
        try:
            if not recorded(lean, entry):
                record_verified(lean, None, check_lean(lean, entry))
            return lean, problems
        except CheckpointError as exc:
            log.warning("ignoring the damaged lean copy %s: %s", lean, exc)
            _remove(lean)  # derived data: the original is the reference
    path = folder / (entry.file_name or "")
    if path.is_file():
        try:
            ensure_verified(path, entry, progress)
            return path, problems
        except CheckpointError as exc:
            problems.append(f"the cached file failed its check ({exc})")
            if remove_bad:
                log.warning("deleting %s, which failed its check, to download it again: %s", path, exc)
                _remove(path)
    archive = folder / entry.archive_name if entry.archive_name else None
    if archive is not None and archive.is_file():
        try:
            return _extract(entry, archive, progress, remove_archive=True), problems
        except CheckpointError as exc:
            problems.append(f"the zip in the cache is unusable ({exc})")
            if remove_bad:
                _remove(archive)
    return None, problems


def _remove(path: Path) -> None:
    forget_verified(path)
    path.unlink(missing_ok=True)


def _staging() -> Path:
    """The private folder downloads and extractions happen in (left-overs of killed runs go after a day)."""
    staging = models_dir() / ".partial"
    staging.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in staging.iterdir():
        try:
            if now - old.stat().st_mtime <= 86400:
                continue
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        except OSError:
            pass  # in use by another process, or already gone
    return staging


def _install(entry: ModelEntry, staged: Path, digest: str | None) -> Path:
    """Check a staged checkpoint (structure, unless its hash ``digest`` was verified) and move it under its final
    name."""
    looks_like = entry.display_name
    if digest is None:
        assert entry.spec_name is not None
        looks_like = check_structure(staged, entry.spec_name)
    final = models_dir() / (entry.file_name or "")
    forget_verified(final)
    os.replace(staged, final)  # atomic: same folder tree
    record_verified(final, digest, looks_like)
    return final


def _extract(entry: ModelEntry, archive: Path, progress: ProgressCallback | None, *, remove_archive: bool) -> Path:
    assert entry.file_name is not None
    if not zipfile.is_zipfile(archive):
        raise CheckpointError(f"{archive} is not a complete zip archive (a truncated or damaged download?)")
    member = archive_member(archive, entry.file_name)
    if member is None:
        raise CheckpointError(f"{archive} holds no {entry.file_name}")
    with tempfile.TemporaryDirectory(dir=_staging(), prefix=f"{entry.name}-") as tmp:
        staged = extract_member(archive, member, Path(tmp) / entry.file_name, progress)
        final = _install(entry, staged, None)
    if remove_archive:
        archive.unlink(missing_ok=True)
    return final


# ---------------------------------------------------------------------------------------------------------- network
def _download(entry: ModelEntry, progress: ProgressCallback | None, problems: list[str]) -> Path:
    import pooch
    import requests

    errors = list(problems)
    known_hash = entry.known_hash  # "sha256:..." or "xxh128:..." (pooch checks both)
    for url in entry.urls:
        log.info("downloading %s from %s", entry.name, url)
        with tempfile.TemporaryDirectory(dir=_staging(), prefix=f"{entry.name}-") as tmp:
            try:
                fetched = Path(pooch.retrieve(url, known_hash, fname=entry.download_name, path=tmp,
                                              downloader=_Downloader(progress), progressbar=False))
                if entry.archive:
                    return _extract(entry, fetched, progress, remove_archive=True)
                return _install(entry, fetched, known_hash)
            except DownloadCancelled:
                raise
            except ValueError as exc:  # pooch's hash mismatch, or CheckpointError (a ValueError) from the checks
                errors.append(f"the download from {url} is corrupt or not the expected file ({_first_line(exc)})")
            except (requests.RequestException, OSError) as exc:
                errors.append(f"downloading {url} failed ({_first_line(exc)})")
    raise ModelUnavailable(offline_message(entry, "; ".join(errors) or "it has no download URL"))


def _first_line(exc: BaseException) -> str:
    """A short reason: the OS error behind a connection failure, else the first line of the message."""
    text = str(exc).strip()
    errno = re.search(r"\[Errno -?\d+\] ([^'\"()\]]+)", text)
    if errno:
        return f"{type(exc).__name__}: {errno.group(1).strip()}; is there network access?"
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


class _Progress:
    """The progress-bar object pooch's HTTPDownloader drives (total, update, reset, close) → a plain callback."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback
        self.total = 0
        self.done = 0
        self._finishing = False

    def update(self, n: int) -> None:
        if self._finishing:  # pooch ends with reset() + update(total): report completion
            self._finishing = False
            self.done = self.total or self.done
        else:
            self.done = min(self.done + n, self.total) if self.total else self.done + n
        self.callback(self.done, self.total or None)

    def reset(self) -> None:
        self._finishing = True

    def close(self) -> None:
        pass


class _Downloader:
    """pooch's HTTP downloader plus one rule: a checkpoint is never a web page.

    Google Drive answers large files with a "cannot scan for viruses" page whose form leads to the file; that form is
    followed once. Any other page (quota exceeded, login, error) is an error, never a file in the cache.
    """

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress

    def _get(self, url: str, output_file: str) -> None:
        import pooch

        bar = _Progress(self.progress) if self.progress is not None else False
        pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK, timeout=_TIMEOUT)(url, output_file, None)

    def __call__(self, url: str, output_file: str, pooch: object, check_only: bool = False) -> None:
        self._get(url, output_file)
        page = _read_page(Path(output_file))
        if page is None:
            return
        follow = _confirmation_url(page, url)
        if follow is None:
            raise DownloadError(f"{url} returned a web page instead of the file: {_page_title(page)}")
        self._get(follow, output_file)
        if _read_page(Path(output_file)) is not None:
            raise DownloadError(f"{url} keeps returning a web page instead of the file (download quota exceeded?)")


def _read_page(path: Path) -> str | None:
    """The text of ``path`` if it is an HTML page (checkpoints never are), else None."""
    if path.stat().st_size > 4 * _CHUNK:
        return None
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if not (head.startswith(b"<!doctype html") or head.startswith(b"<html")):
        return None
    return path.read_text(errors="replace")


def _confirmation_url(page: str, base: str) -> str | None:
    """The URL that Google Drive's download-confirmation form (``id="download-form"``) submits to, or None."""
    for form in re.finditer(r"<form\b([^>]*)>(.*?)</form>", page, flags=re.S | re.I):
        attributes = _attributes(form.group(1))
        if attributes.get("id") != "download-form" or "action" not in attributes:
            continue
        fields = {}
        for tag in re.finditer(r"<input\b([^>]*)>", form.group(2), flags=re.I):
            field = _attributes(tag.group(1))
            if field.get("type", "").lower() == "hidden" and "name" in field:
                fields[field["name"]] = field.get("value", "")
        action = urljoin(base, attributes["action"])
        return f"{action}?{urlencode(fields)}" if fields else action
    return None


def _attributes(tag: str) -> dict[str, str]:
    return {k.lower(): unescape(v) for k, v in re.findall(r"""([\w-]+)\s*=\s*["']([^"']*)["']""", tag)}


def _page_title(page: str) -> str:
    match = re.search(r"<title>(.*?)</title>", page, flags=re.S | re.I)
    return unescape(match.group(1).strip()) if match else "(untitled)"
