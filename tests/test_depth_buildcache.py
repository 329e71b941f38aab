"""The teacher's build cache: atomic writes, one build shared by concurrent processes, failed builds
leave nothing, remembered choices."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import smalldepthmask.depth.buildcache as buildcache
from smalldepthmask.depth.buildcache import atomic_write, build_once, lock_path, remembered_choice


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "engine.bin"
    atomic_write(path, b"first")
    atomic_write(path, b"second, longer")
    assert path.read_bytes() == b"second, longer" and leftovers(path.parent) == []


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "engine.bin"
    atomic_write(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(buildcache.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_build_once_builds_when_missing_then_reads(tmp_path):
    path = tmp_path / "x.engine"
    calls = []
    data, seconds = build_once(path, lambda: calls.append(1) or b"blob", "building x")
    assert data == b"blob" and seconds is not None and seconds >= 0
    data, seconds = build_once(path, lambda: calls.append(1) or b"other", "building x")
    assert data == b"blob" and seconds is None and calls == [1]


def test_failed_build_leaves_nothing_and_the_next_call_builds(tmp_path):
    path = tmp_path / "x.engine"

    def fail() -> bytes:
        raise RuntimeError("builder ran out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        build_once(path, fail, "building x")
    assert not path.exists() and leftovers(tmp_path) == []
    data, seconds = build_once(path, lambda: b"ok", "building x")
    assert data == b"ok" and seconds is not None and path.read_bytes() == b"ok"


WORKER = textwrap.dedent("""
    import importlib.util, os, sys, time
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("buildcache", sys.argv[1])
    bc = importlib.util.module_from_spec(spec); spec.loader.exec_module(bc)
    target, log, start = Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    while time.time() < start:
        time.sleep(0.005)
    def build():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.5)
        return b"engine bytes " * 1000
    data, seconds = bc.build_once(target, build, "building the test engine", log=print)
    sys.stdout.write(f"result {len(data)} {seconds is not None}\\n")
""")


def test_concurrent_processes_build_once(tmp_path):
    """Three processes ask for the same missing file at the same moment: one builds, two wait and read."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    target, log = tmp_path / "cache" / "x.engine", tmp_path / "builds.log"
    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, str(script), buildcache.__file__, str(target), str(log), str(start)],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(log.read_text().splitlines()) == 1  # one build
    results = [line for out in outs for line in out.splitlines() if line.startswith("result")]
    assert sorted(results) == ["result 13000 False", "result 13000 False", "result 13000 True"]
    waited = [out for out in outs if "waiting for another process to finish building the test engine" in out]
    assert len(waited) == 2
    assert target.read_bytes() == b"engine bytes " * 1000 and leftovers(target.parent) == []
    assert lock_path(target).name == "x.engine.lock"


def test_remembered_choice(tmp_path):
    cache = tmp_path / "choices.json"
    decided = []

    def decide(choice):
        return lambda: decided.append(choice) or {"choice": choice}

    key_a, key_b = {"gpu": "A", "batch": 64}, {"gpu": "B", "batch": 64}
    assert remembered_choice(cache, key_a, decide("fast")) == ({"key": key_a, "choice": "fast"}, False)
    assert remembered_choice(cache, key_a, decide("reference")) == ({"key": key_a, "choice": "fast"}, True)
    assert remembered_choice(cache, key_b, decide("reference"))[0]["choice"] == "reference"
    assert decided == ["fast", "reference"] and len(json.loads(cache.read_text())) == 2
    cache.write_text("{not json")  # a damaged file is decided again, not an error
    assert remembered_choice(cache, key_a, decide("fast")) == ({"key": key_a, "choice": "fast"}, False)
