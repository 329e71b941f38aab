"""Files the teacher builds once and keeps in the cache dir: ONNX exports, TensorRT engines and timing
caches, and the timed choice of graph per GPU.

Every file is written under a unique temporary name in its own folder and renamed into place (readers see
the old file or the whole new one, never a part), and every build holds a lock file beside its target, so
processes started together build a file once and the others wait for it and read it. The locks are
`filelock.FileLock` (an OS lock on `<name>.lock`: released when its process dies, so a killed build never
blocks the next run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

CHOICES_FILE = "variant-choice.json"


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)


def key_digest(key: dict, length: int = 24) -> str:
    """A short stable hash of a JSON-able key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:length]


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a unique temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path, what: str, log: Callable[[str], None] = stderr_log) -> Iterator[None]:
    """Hold the lock file of `path`; says once that it waits when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(path)))
    try:
        lock.acquire(timeout=1.0)
    except Timeout:
        log(f"smalldepthmask: waiting for another process to finish {what} ({lock_path(path)})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_once(
    path: Path, build: Callable[[], bytes], what: str, log: Callable[[str], None] = stderr_log
) -> tuple[bytes, float | None]:
    """The bytes at `path`, built by `build()` and written atomically when missing.

    Returns (data, seconds the build took, or None when the file was already there). Concurrent callers
    for the same path build once: the others wait on the lock and read the result."""
    if path.is_file():
        return path.read_bytes(), None
    with locked(path, what, log):
        if path.is_file():  # built by another process while we waited
            return path.read_bytes(), None
        start = time.perf_counter()
        data = build()
        seconds = time.perf_counter() - start
        atomic_write(path, data)
    return data, seconds


def remembered_choice(
    cache: Path, key: dict, decide: Callable[[], dict], log: Callable[[str], None] = stderr_log
) -> tuple[dict, bool]:
    """The record stored under `key` in the JSON file `cache`, made by `decide()` (once) when missing.

    Returns (record, True when it came from the file). The file maps key digests to {"key", ...record}."""
    digest = key_digest(key)

    def lookup() -> dict | None:
        try:
            entry = json.loads(cache.read_text()).get(digest)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return entry if entry is not None and entry.get("key") == key else None

    found = lookup()
    if found is not None:
        return found, True
    with locked(cache, "timing the depth network", log):
        found = lookup()
        if found is not None:
            return found, True
        record = {"key": key, **decide()}
        try:
            table = json.loads(cache.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            table = {}
        table[digest] = record
        atomic_write(cache, (json.dumps(table, indent=1, sort_keys=True) + "\n").encode())
    return record, False
