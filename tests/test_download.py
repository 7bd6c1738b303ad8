"""Downloads against a real HTTP server on 127.0.0.1 (started by the tests): hashes, atomicity, offline use, zips."""

from __future__ import annotations

import hashlib
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from test_checkpoint import _write_mmengine_checkpoint

from napari_focsam.engine.manager import ModelManager
from napari_focsam.models.sam import build_model
from napari_focsam.models.specs import get_spec
from napari_focsam.weights.download import (
    DownloadCancelled,
    ModelUnavailable,
    make_lean,
    resolve_checkpoint,
)
from napari_focsam.weights.loader import load_model
from napari_focsam.weights.registry import REGISTRY, ModelEntry, models_dir


# ---------------------------------------------------------------------------------------------------------- server
@dataclass
class Route:
    body: bytes
    #: "full"; "truncate": announce the full Content-Length, send half, close; "truncate-no-length": same, no length
    mode: str = "full"
    content_type: str = "application/octet-stream"


@dataclass
class FileServer:
    """A real HTTP server on 127.0.0.1 serving ``routes`` (path with query → Route) and counting requests."""

    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: FileServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.files.hits.append(self.path)
        route = self.files.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body = route.body
        self.send_response(200)
        self.send_header("Content-Type", route.content_type)
        if route.mode != "truncate-no-length":
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        if route.mode == "full":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up half-way (a cancelled download) is expected here


@pytest.fixture
def server() -> Iterator[FileServer]:
    files = FileServer(port=0)
    handler = type("Handler", (_Handler,), {"files": files})
    httpd = _Server(("127.0.0.1", 0), handler)
    files.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield files
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def closed_port_url(path: str = "/model.pth") -> str:
    """A URL on 127.0.0.1 where nothing listens: the connection is refused, like a machine without network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# ---------------------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def sam_file(tmp_path_factory) -> tuple[bytes, dict[str, torch.Tensor]]:
    """An official-layout SAM checkpoint of the tiny architecture (torch.save of the state dict), and its weights."""
    state = build_model(get_spec("sam_tiny"), seed=11).state_dict()
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(state, path)
    return path.read_bytes(), state


@pytest.fixture(scope="session")
def focsam_zip(tmp_path_factory) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A zip like the FocSAM Google-Drive download: ``focsam_vit_huge_eval/iter_160000.pth`` (mmengine layout)."""
    state = build_model(get_spec("focsam_tiny"), seed=12).state_dict()
    folder = tmp_path_factory.mktemp("focsam")
    checkpoint = folder / "iter_160000.pth"
    _write_mmengine_checkpoint(checkpoint, state)
    archive = folder / "focsam.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("focsam_vit_huge_eval/focsam_vit_huge_eval.py", "model = dict()\n")
        zf.write(checkpoint, "focsam_vit_huge_eval/iter_160000.pth")
    return archive.read_bytes(), state


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache folder through NAPARI_FOCSAM_CACHE."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(folder))
    return folder


def add_entry(monkeypatch, **fields: object) -> ModelEntry:
    """Register a test entry for the duration of one test."""
    defaults: dict[str, object] = dict(name="test_sam", display_name="Test SAM", spec_name="sam_tiny",
                                       preprocessing="sam", file_name="sam_test_123abc.pth", licence="test")
    entry = ModelEntry(**{**defaults, **fields})
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    return entry


def focsam_entry(monkeypatch, *urls: str) -> ModelEntry:
    return add_entry(monkeypatch, name="test_focsam", display_name="Test FocSAM", spec_name="focsam_tiny",
                     preprocessing="focsam", file_name="iter_160000.pth", urls=urls, page_url="https://example.org/d",
                     archive="zip", archive_name="test_focsam.zip", hash_note="no published hash")


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden staging and records included), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


# ---------------------------------------------------------------------------------------------------------- tests
def test_download_checks_the_hash_and_the_model_loads(server, cache, monkeypatch, sam_file):
    data, state = sam_file
    server.routes["/sam_test.pth"] = Route(data)
    entry = add_entry(monkeypatch, urls=(server.url("/sam_test.pth"),), sha256=sha256(data), size=len(data))
    calls: list[tuple[int, int | None]] = []

    path = resolve_checkpoint(entry.name, progress=lambda done, total: calls.append((done, total)))

    assert path == cache / "models" / entry.file_name and path.read_bytes() == data
    assert calls[-1] == (len(data), len(data)) and len(calls) > 2
    assert all(0 <= done <= len(data) and total == len(data) for done, total in calls)
    assert files_under(cache / "models") == [".verified/sam_test_123abc.pth.json", entry.file_name]
    manager = ModelManager.load("sam_tiny", checkpoint=path, device="cpu")
    assert manager.name == "sam_tiny"
    assert_same_weights(manager.predictor.model, state)
    # later calls use the verified file without touching the network
    assert resolve_checkpoint(entry.name) == path and server.hits == ["/sam_test.pth"]


def test_corrupted_cached_file_is_rejected_and_downloaded_again(server, cache, monkeypatch, sam_file):
    data, _ = sam_file
    server.routes["/sam_test.pth"] = Route(data)
    entry = add_entry(monkeypatch, urls=(server.url("/sam_test.pth"),), sha256=sha256(data))
    path = resolve_checkpoint(entry.name)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))  # same size, new modification time

    with pytest.raises(ModelUnavailable, match="failed its check"):
        resolve_checkpoint(entry.name, download=False)  # offline: says why, leaves the file for inspection
    assert path.exists()
    assert resolve_checkpoint(entry.name) == path
    assert path.read_bytes() == data and server.hits == ["/sam_test.pth"] * 2


def test_server_sending_the_wrong_bytes_leaves_nothing(server, cache, monkeypatch, sam_file):
    data, _ = sam_file
    server.routes["/sam_test.pth"] = Route(data[:-10] + b"0123456789")
    entry = add_entry(monkeypatch, urls=(server.url("/sam_test.pth"),), sha256=sha256(data))
    with pytest.raises(ModelUnavailable, match="corrupt or not the expected file") as info:
        resolve_checkpoint(entry.name)
    assert sha256(data) in str(info.value)
    assert files_under(cache / "models") == []


@pytest.mark.parametrize("mode", ["truncate", "truncate-no-length"])
def test_interrupted_download_leaves_no_complete_looking_file(server, cache, monkeypatch, sam_file, mode):
    data, _ = sam_file
    server.routes["/sam_test.pth"] = Route(data, mode=mode)
    entry = add_entry(monkeypatch, urls=(server.url("/sam_test.pth"),), sha256=sha256(data))
    with pytest.raises(ModelUnavailable) as info:
        resolve_checkpoint(entry.name)
    assert server.url("/sam_test.pth") in str(info.value)
    assert files_under(cache / "models") == []


def test_interrupted_zip_without_hash_leaves_nothing(server, cache, monkeypatch, focsam_zip):
    data, _ = focsam_zip
    server.routes["/focsam.zip"] = Route(data, mode="truncate-no-length")  # looks complete to HTTP, no hash to check
    entry = focsam_entry(monkeypatch, server.url("/focsam.zip"))
    with pytest.raises(ModelUnavailable, match="not a complete zip archive"):
        resolve_checkpoint(entry.name)
    assert files_under(cache / "models") == []


def test_no_network_gives_the_offline_message(cache, monkeypatch):
    url = closed_port_url("/sam_vit_q_0123ab.pth")
    entry = add_entry(monkeypatch, urls=(url,), sha256="ab" * 32, size=123_456_789)
    with pytest.raises(ModelUnavailable) as info:
        resolve_checkpoint(entry.name)
    message = str(info.value)
    for part in (url, entry.file_name, "ab" * 32, str(cache / "models"), "NAPARI_FOCSAM_CACHE", "checkpoint=PATH",
                 "123 MB", "Connection refused; is there network access?"):
        assert part in message, part
    assert files_under(cache / "models") == []
    with pytest.raises(ModelUnavailable, match="downloads are off"):
        resolve_checkpoint(entry.name, download=False)


def test_cache_variable_is_honoured(server, tmp_path, monkeypatch, sam_file):
    import pooch

    monkeypatch.delenv("NAPARI_FOCSAM_CACHE", raising=False)
    assert models_dir() == Path(pooch.os_cache("napari-focsam")) / "models"
    data, _ = sam_file
    server.routes["/sam_test.pth"] = Route(data)
    entry = add_entry(monkeypatch, urls=(server.url("/sam_test.pth"),), sha256=sha256(data))
    for name in ("first", "second"):
        monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path / name))
        assert models_dir() == tmp_path / name / "models"
        assert resolve_checkpoint(entry.name) == tmp_path / name / "models" / entry.file_name
    assert len(server.hits) == 2


def test_hand_placed_file_is_verified_and_used_offline(cache, monkeypatch, sam_file):
    data, state = sam_file
    entry = add_entry(monkeypatch, urls=(closed_port_url(),), sha256=sha256(data))
    (cache / "models").mkdir(parents=True)
    placed = cache / "models" / entry.file_name
    placed.write_bytes(data)
    calls: list[tuple[int, int | None]] = []
    assert resolve_checkpoint(entry.name, progress=lambda *a: calls.append(a)) == placed
    assert calls[-1] == (len(data), len(data))  # the first check (hashing) reports progress too
    assert (cache / "models" / ".verified" / f"{entry.file_name}.json").exists()
    assert_same_weights(load_model("sam_tiny", placed).model, state)

    placed.write_bytes(data[:-1] + b"!")  # a different file under the official name: refused, never used
    with pytest.raises(ModelUnavailable, match="is corrupt or not the official Test SAM file"):
        resolve_checkpoint(entry.name, download=False)


def test_google_drive_style_zip_is_confirmed_extracted_and_loads(server, cache, monkeypatch, focsam_zip):
    data, state = focsam_zip
    confirm = "/download?id=abc&export=download&confirm=t&uuid=42"
    page = ('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
            f'<form id="download-form" action="http://127.0.0.1:{server.port}/download" method="get">'
            '<input type="hidden" name="id" value="abc"><input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="42">'
            '</form></body></html>')
    server.routes["/uc?id=abc"] = Route(page.encode(), content_type="text/html; charset=utf-8")
    server.routes[confirm] = Route(data)
    entry = focsam_entry(monkeypatch, server.url("/uc?id=abc"))

    path = resolve_checkpoint(entry.name)

    assert server.hits == ["/uc?id=abc", confirm]
    assert path == cache / "models" / "iter_160000.pth"
    assert files_under(cache / "models") == [".verified/iter_160000.pth.json", "iter_160000.pth"]  # zip removed
    assert_same_weights(load_model("focsam_tiny", path).model, state)

    # a later lean copy is preferred, loads the same weights, and a damaged one is ignored
    lean = make_lean(entry.name)
    assert lean == cache / "models" / "test_focsam.safetensors" and resolve_checkpoint(entry.name) == lean
    assert load_model("focsam_tiny", lean).weights_id == load_model("focsam_tiny", path).weights_id
    lean.write_bytes(lean.read_bytes()[:1000])
    assert resolve_checkpoint(entry.name) == path and not lean.exists()


def test_zip_with_a_known_hash_is_hash_checked_then_extracted(server, cache, monkeypatch, focsam_zip):
    data, _ = focsam_zip
    server.routes["/focsam.zip"] = Route(data)
    entry = focsam_entry(monkeypatch, server.url("/focsam.zip"))
    monkeypatch.setitem(REGISTRY, entry.name, ModelEntry(**{**entry.__dict__, "sha256": sha256(data)}))
    path = resolve_checkpoint(entry.name)
    assert path == cache / "models" / "iter_160000.pth"
    # the zip's hash is not the checkpoint's: the extracted file stays accepted, by structure
    assert resolve_checkpoint(entry.name, download=False) == path and server.hits == ["/focsam.zip"]
    server.routes["/focsam.zip"] = Route(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    path.unlink()
    with pytest.raises(ModelUnavailable, match="corrupt or not the expected file"):
        resolve_checkpoint(entry.name)


def test_web_page_instead_of_the_file_is_an_error(server, cache, monkeypatch):
    server.routes["/quota"] = Route(b"<!DOCTYPE html><html><title>Quota exceeded</title></html>",
                                    content_type="text/html")
    entry = focsam_entry(monkeypatch, server.url("/quota"))
    with pytest.raises(ModelUnavailable, match="returned a web page instead of the file: Quota exceeded"):
        resolve_checkpoint(entry.name)
    assert files_under(cache / "models") == []


def test_zip_of_the_wrong_model_is_refused(server, cache, monkeypatch, tmp_path, sam_file):
    archive = tmp_path / "wrong.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("work_dirs/iter_160000.pth", sam_file[0])  # a SAM file under FocSAM's name
    server.routes["/wrong.zip"] = Route(archive.read_bytes())
    entry = focsam_entry(monkeypatch, server.url("/wrong.zip"))
    with pytest.raises(ModelUnavailable, match="looks like SAM tiny"):
        resolve_checkpoint(entry.name)
    assert files_under(cache / "models") == []


def test_hand_placed_zip_is_extracted_offline(cache, monkeypatch, focsam_zip):
    entry = focsam_entry(monkeypatch, closed_port_url())
    (cache / "models").mkdir(parents=True)
    (cache / "models" / entry.archive_name).write_bytes(focsam_zip[0])
    path = resolve_checkpoint(entry.name, download=False)
    assert path == cache / "models" / "iter_160000.pth"
    assert not (cache / "models" / entry.archive_name).exists()


def test_left_overs_of_killed_downloads_are_cleaned_up(server, cache, monkeypatch, sam_file):
    import os
    import time

    staging = cache / "models" / ".partial"
    (staging / "test_sam-old").mkdir(parents=True)
    (staging / "test_sam-old" / "sam_test_123abc.pth").write_bytes(b"half a file")
    (staging / "test_sam-recent").mkdir()
    day_ago = time.time() - 2 * 86400
    os.utime(staging / "test_sam-old", (day_ago, day_ago))
    data, _ = sam_file
    server.routes["/sam_test.pth"] = Route(data)
    entry = add_entry(monkeypatch, urls=(server.url("/sam_test.pth"),), sha256=sha256(data))
    resolve_checkpoint(entry.name)
    assert sorted(p.name for p in staging.iterdir()) == ["test_sam-recent"]  # possibly another process's


def test_cancelling_from_the_progress_callback_leaves_nothing(server, cache, monkeypatch, sam_file):
    data, _ = sam_file
    server.routes["/sam_test.pth"] = Route(data)
    entry = add_entry(monkeypatch, urls=(server.url("/sam_test.pth"),), sha256=sha256(data))

    def cancel_half_way(done: int, total: int | None) -> None:
        if total and done > total // 2:
            raise DownloadCancelled("stopped by the user")

    with pytest.raises(DownloadCancelled):
        resolve_checkpoint(entry.name, progress=cancel_half_way)
    assert files_under(cache / "models") == []
