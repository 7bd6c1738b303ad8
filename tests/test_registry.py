"""The model registry, the offline instructions, `models list | download | verify` and verify_file."""

from __future__ import annotations

import argparse
import os
import re

import pytest
import test_download
import torch
from test_download import Route, add_entry, closed_port_url, focsam_entry, sha256

from napari_focsam.models.sam import build_model
from napari_focsam.models.specs import SPECS, get_spec
from napari_focsam.weights.checkpoint import CheckpointError
from napari_focsam.weights.cli import list_models, register
from napari_focsam.weights.download import ModelUnavailable, offline_message, resolve_checkpoint
from napari_focsam.weights.registry import REGISTRY, ModelEntry, get_entry, models_dir, register_entry
from napari_focsam.weights.verify import verify_file

# fixtures shared with test_download (a real HTTP server on 127.0.0.1, checkpoints written by the tests)
cache, focsam_zip, sam_file, server = test_download.cache, test_download.focsam_zip, test_download.sam_file, \
    test_download.server


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="napari-focsam")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


# ---------------------------------------------------------------------------------------------------------- registry
def test_builtin_entries():
    assert list(REGISTRY)[:5] == ["sam_vit_b", "sam_vit_l", "sam_vit_h", "focsam_vit_h", "fallback"]
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        entry = get_entry(name)
        spec = SPECS[entry.spec_name]
        assert entry.file_name == spec.checkpoint_name and entry.preprocessing == spec.preprocessing == "sam"
        assert entry.urls == (f"https://dl.fbaipublicfiles.com/segment_anything/{entry.file_name}",)
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.size > 300e6 and "Apache-2.0" in entry.licence
    assert [get_entry(n).size for n in ("sam_vit_b", "sam_vit_l", "sam_vit_h")] == [
        375_042_383, 1_249_524_607, 2_564_550_879]
    focsam = get_entry("focsam_vit_h")
    assert focsam.spec_name == "focsam_vit_h" and focsam.preprocessing == SPECS["focsam_vit_h"].preprocessing
    assert focsam.file_name == SPECS["focsam_vit_h"].checkpoint_name == "iter_160000.pth"
    assert focsam.archive == "zip" and focsam.sha256 is None and "structure" in focsam.hash_note
    assert "1VOeMkY9LovfWYi66JMR8q79gFiC4n3Az" in focsam.urls[0] and "drive.google.com" in focsam.page_url
    fallback = get_entry("fallback")
    assert not fallback.has_weights and fallback.spec_name is None and resolve_checkpoint("fallback") is None


def test_unknown_names_and_bad_entries():
    with pytest.raises(ValueError, match="unknown model 'sam_vit_x'; registered models: sam_vit_b"):
        get_entry("sam_vit_x")
    with pytest.raises(ValueError, match="already registered"):
        register_entry(get_entry("sam_vit_b"))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        register_entry(ModelEntry("x", "X", "nope", "sam"))


def test_offline_instructions_for_the_real_models(cache):
    sam = offline_message(get_entry("sam_vit_h"), "no network")
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth (2.6 GB)" in sam
    assert "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e" in sam
    assert str(cache / "models") in sam and "named sam_vit_h_4b8939.pth" in sam
    focsam = offline_message(get_entry("focsam_vit_h"), "no network")
    assert "https://drive.google.com/file/d/1VOeMkY9LovfWYi66JMR8q79gFiC4n3Az/view" in focsam
    assert "put iter_160000.pth from inside it (or the zip itself, named focsam_vit_h.zip)" in focsam
    assert "none published" in focsam


# ---------------------------------------------------------------------------------------------------------- resolve
def test_explicit_checkpoint_wins(cache, monkeypatch, tmp_path, sam_file):
    entry = add_entry(monkeypatch, urls=(closed_port_url(),), sha256="00" * 32)
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(sam_file[0])
    assert resolve_checkpoint(entry.name, explicit) == explicit
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(entry.name, tmp_path / "missing.pth")
    assert resolve_checkpoint("fallback") is None


def test_hand_placed_file_without_hash_is_checked_by_structure(cache, monkeypatch, tmp_path):
    entry = add_entry(monkeypatch, urls=(closed_port_url(),), sha256=None)
    (cache / "models").mkdir(parents=True)
    placed = cache / "models" / entry.file_name
    torch.save(build_model(get_spec("sam_tiny"), seed=1).state_dict(), placed)
    assert resolve_checkpoint(entry.name, download=False) == placed
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 8)}, placed)
    with pytest.raises(ModelUnavailable, match="does not fit"):
        resolve_checkpoint(entry.name, download=False)


# ---------------------------------------------------------------------------------------------------------- CLI
def test_models_list(cache, monkeypatch, capsys, sam_file):
    entry = add_entry(monkeypatch, sha256=sha256(sam_file[0]))
    assert run_cli("models", "list") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"models folder: {cache / 'models'}" and "NAPARI_FOCSAM_CACHE" in lines[1]
    assert lines[3].split() == ["name", "model", "file", "size", "licence", "cached"]
    row = {line.split()[0]: line for line in lines[4:]}
    assert "SAM ViT-B" in row["sam_vit_b"] and "sam_vit_b_01ec64.pth" in row["sam_vit_b"]
    assert "375 MB" in row["sam_vit_b"] and row["sam_vit_b"].rstrip().endswith("no")
    assert "2.6 GB" in row["sam_vit_h"] and "~2.7 GB (estimate)" in row["focsam_vit_h"]
    assert row["fallback"].rstrip().endswith("no file needed")

    (cache / "models").mkdir(parents=True)
    (cache / "models" / entry.file_name).write_bytes(sam_file[0])
    resolve_checkpoint(entry.name, download=False)
    assert run_cli("models", "list") == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("test_sam "))
    assert line.endswith(f"yes: {cache / 'models' / entry.file_name}")
    assert {r["name"]: r["cached"] for r in list_models()}["test_sam"] == "yes"


def test_models_download_and_verify(server, cache, monkeypatch, capsys, sam_file):
    data, _ = sam_file
    server.routes["/sam_test.pth"] = Route(data)
    entry = add_entry(monkeypatch, urls=(server.url("/sam_test.pth"),), sha256=sha256(data))
    assert run_cli("models", "download", entry.name) == 0
    path = cache / "models" / entry.file_name
    captured = capsys.readouterr()
    assert f"ready: {path}" in captured.out and "sam_test_123abc.pth: 100%" in captured.err  # the tqdm bar
    assert run_cli("models", "download", entry.name, "--quiet") == 0 and len(server.hits) == 1  # cached
    assert run_cli("models", "download", entry.name, "--quiet", "--force") == 0 and len(server.hits) == 2
    capsys.readouterr()

    assert run_cli("models", "verify", str(path)) == 0
    out = capsys.readouterr().out
    assert f"sha256:     {sha256(data)}: the official Test SAM file (sam_test_123abc.pth)" in out
    assert "looks like: SAM tiny" in out and "fits sam_tiny" in out and "result:     OK" in out

    damaged = bytearray(data)
    damaged[1000] ^= 1
    stat = path.stat()
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: the record is trusted (documented)
    assert resolve_checkpoint(entry.name, download=False) == path
    # ... but a full check sees it
    assert run_cli("models", "verify") == 1
    out = capsys.readouterr().out
    assert "NOT the official Test SAM file" in out and "result:     FAILED" in out


def test_models_download_offline_fails_with_instructions(cache, monkeypatch, capsys):
    entry = add_entry(monkeypatch, urls=(closed_port_url(),), sha256="cd" * 32)
    assert run_cli("models", "download", entry.name, "--quiet") == 1
    err = capsys.readouterr().err
    assert "is not available" in err and "cd" * 32 in err and str(models_dir()) in err


def test_verify_describes_foreign_and_zipped_files(cache, monkeypatch, tmp_path, focsam_zip):
    other = tmp_path / "mystery.pth"
    torch.save({"w": torch.zeros(3)}, other)
    report = verify_file(other)
    assert report.entry is None and "an unknown model" in report.looks_like and not report.ok  # no model loads it

    truncated = tmp_path / "sam_vit_b_01ec64.pth"
    truncated.write_bytes(other.read_bytes()[:200])
    report = verify_file(truncated)
    assert report.entry is get_entry("sam_vit_b") and report.hash_ok is False and not report.ok
    assert "truncated or corrupt" in report.summary()

    entry = focsam_entry(monkeypatch, closed_port_url())
    archive = tmp_path / "download.zip"
    archive.write_bytes(focsam_zip[0])
    report = verify_file(archive, entry.name)
    assert report.kind == "zip archive holding focsam_vit_huge_eval/iter_160000.pth"
    assert report.sha256 == sha256(focsam_zip[0])  # printed, so that the hash can be recorded once known
    assert "(no published hash for test_focsam: checked by structure)" in report.summary()
    assert report.structure_ok and report.ok and "FocSAM tiny" in report.looks_like
    assert "result:     OK" in report.summary()
