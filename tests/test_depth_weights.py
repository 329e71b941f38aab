"""Weights: fetcher (against a local HTTP server only), cache dir, converted cache, gen rules."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np
import pytest
import torch

from smalldepthmask.depth import cli, fetch, resolve_for_gen, weights
from smalldepthmask.depth.fetch import DEAD_LINK_HINT, DownloadError, download, install_weights
from smalldepthmask.errors import UsageError, run_cli

pytestmark = pytest.mark.usefixtures("private_cache")  # SMALLDEPTHMASK_CACHE in tmp_path

PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `files`; honours Range unless the path is in `no_range`; `cut` truncates a body."""

    files: ClassVar[dict[str, bytes]] = {}
    no_range: ClassVar[set[str]] = set()
    cut: ClassVar[dict[str, int]] = {}
    ranges: ClassVar[list[str | None]] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        start = 0
        if header and self.path not in self.no_range:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        limit = self.cut.pop(self.path, None)
        self.wfile.write(body if limit is None else body[:limit])


@pytest.fixture
def server():
    RangeHandler.files = {"/w.bin": PAYLOAD, "/norange.bin": PAYLOAD, "/junk.h5": b"not an hdf5 file" * 100}
    RangeHandler.no_range = {"/norange.bin"}
    RangeHandler.cut = {}
    RangeHandler.ranges = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nyu.h5"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cache_dir_env_override(private_cache, monkeypatch):
    assert weights.cache_dir() == private_cache
    monkeypatch.delenv("SMALLDEPTHMASK_CACHE")
    assert "smalldepthmask" in str(weights.cache_dir())


def test_download_verifies_and_returns_sha(server, tmp_path):
    dest = tmp_path / "w.bin"
    digest = download(f"{server}/w.bin", dest, size=len(PAYLOAD), sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and digest == sha(PAYLOAD)
    assert not (tmp_path / "w.bin.part").exists()


def test_resume_uses_range(server, tmp_path):
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD[:120_000])
    download(f"{server}/w.bin", dest, sha256=sha(PAYLOAD), progress=False)
    assert RangeHandler.ranges == ["bytes=120000-"]
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_part_then_resumes(server, tmp_path):
    dest = tmp_path / "w.bin"
    RangeHandler.cut["/w.bin"] = 100_000
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download(f"{server}/w.bin", dest, progress=False)
    assert (tmp_path / "w.bin.part").stat().st_size == 100_000
    download(f"{server}/w.bin", dest, sha256=sha(PAYLOAD), progress=False)
    assert RangeHandler.ranges[-1] == "bytes=100000-" and dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    dest = tmp_path / "norange.bin"
    (tmp_path / "norange.bin.part").write_bytes(b"x" * 5000)
    download(f"{server}/norange.bin", dest, sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_is_accepted(server, tmp_path):
    (tmp_path / "w.bin.part").write_bytes(PAYLOAD)  # server answers 416: nothing left
    download(f"{server}/w.bin", tmp_path / "w.bin", sha256=sha(PAYLOAD), progress=False)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD


def test_wrong_size_refused(server, tmp_path):
    with pytest.raises(DownloadError, match=f"{len(PAYLOAD)} bytes, expected 123"):
        download(f"{server}/w.bin", tmp_path / "w.bin", size=123, progress=False)
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.part").exists()


def test_wrong_sha_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="does not match"):
        download(f"{server}/w.bin", tmp_path / "w.bin", sha256="0" * 64, progress=False)
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.part").exists()


def test_http_404_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server}/missing.h5", tmp_path / "m.h5", progress=False)


def test_dead_published_address_says_so(dead_url, monkeypatch):
    entry = dataclasses.replace(weights.REGISTRY["densedepth-nyu"], url=dead_url)
    monkeypatch.setitem(fetch.REGISTRY, "densedepth-nyu", entry)
    with pytest.raises(DownloadError) as e:
        install_weights("densedepth-nyu", progress=False)
    assert "could not download" in e.value.message and DEAD_LINK_HINT in e.value.details


def test_install_from_url_writes_sidecar_and_is_found(server, private_cache):
    checked = []
    path = install_weights("densedepth-kitti", url=f"{server}/w.bin", progress=False, check=checked.append)
    assert path == private_cache / "weights" / "kitti.h5" and checked == [path]
    record = weights.read_sidecar(path)
    assert record["sha256"] == sha(PAYLOAD) and record["convention"] == "kitti" and record["source"].endswith("/w.bin")
    assert weights.find_cached("densedepth-kitti") == path
    assert weights.guess_convention(path) == ("kitti", "sidecar")
    assert install_weights("densedepth-kitti", progress=False, check=checked.append) == path  # kept, no download
    assert len(RangeHandler.ranges) == 1


def test_install_from_local_file(tmp_path, private_cache):
    local = tmp_path / "copy.h5"
    local.write_bytes(PAYLOAD)
    path = install_weights("densedepth-nyu", file=local, progress=False, check=lambda p: None)
    assert path.read_bytes() == PAYLOAD and weights.read_sidecar(path)["source"] == str(local.resolve())


def test_install_refuses_non_densedepth_file(server, private_cache):
    with pytest.raises(UsageError, match="not a readable HDF5 file"):
        install_weights("densedepth-nyu", url=f"{server}/junk.h5", progress=False)
    assert weights.find_cached("densedepth-nyu") is None


def test_h5_without_model_config_refused(tmp_path):
    path = tmp_path / "nyu.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(UsageError, match="no model_config"):
        weights.load_state_dict(path)


def test_cli_fetch_dead_address_exit_2(dead_url, capsys):
    code = run_cli(cli.weights_main, ["fetch", "densedepth-nyu", "--url", dead_url, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "could not download" in err and "Traceback" not in err


def test_cli_list(capsys):
    assert cli.weights_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "densedepth-nyu" in out and "densedepth-kitti" in out and "not fetched" in out


def test_converted_cache_keyed_by_sha(tmp_path, monkeypatch):
    calls = []
    fake = {"conv3.bias": torch.ones(1)}

    def read(path: Path):
        calls.append(path)
        return dict(fake)

    monkeypatch.setattr(weights, "read_h5_state", read)
    a, b = tmp_path / "a.h5", tmp_path / "kitti_copy.h5"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    _, info = weights.load_state_dict(a)
    assert not info.from_cache and weights.converted_path(info.sha256).is_file()
    state2, info2 = weights.load_state_dict(b)  # same content, other name: conversion reused
    assert info2.from_cache and len(calls) == 1 and torch.equal(state2["conv3.bias"], fake["conv3.bias"])
    assert info2.convention == "kitti" and info.convention == "nyu"


def test_resolve_for_gen_rules(tmp_path, capsys):
    assert resolve_for_gen("none", None, "auto", "auto", "cpu", demo_inputs=False) is None
    assert resolve_for_gen("densedepth", None, "auto", "auto", "cpu", demo_inputs=True) is None
    assert "weights fetch densedepth-nyu" in capsys.readouterr().err
    with pytest.raises(UsageError) as e:
        resolve_for_gen("densedepth", None, "auto", "auto", "cpu", demo_inputs=False)
    text = " ".join([e.value.message, *e.value.details])
    assert "weights fetch densedepth-nyu" in text and "--depth-weights" in text and "--depth none" in text
    with pytest.raises(UsageError, match="no such file"):
        resolve_for_gen("densedepth", str(tmp_path / "nope.h5"), "auto", "auto", "cpu", demo_inputs=True)
