"""Download (with resume) and install DenseDepth weights into the user cache.

`download` resumes an interrupted `.part` file with an HTTP Range request, shows a tqdm
progress bar, and verifies the size and sha256 when they are known. `install_weights` fetches
a registry entry from its published address, a user-given address or a local file, checks that
it is the released DenseDepth architecture, and records what was installed in a JSON sidecar.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from .weights import REGISTRY, WeightsEntry, load_state_dict, sha256_of, sidecar_path, weights_dir

CHUNK = 1 << 20
DEAD_LINK_HINT = (
    "the published DenseDepth links are reported dead; pass another address with --url URL "
    "or a local copy with --file FILE"
)


class DownloadError(UsageError):
    """A download that failed; the partial file (if any) is kept for resuming."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "smalldepthmask"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_size(response, start: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return (int(length) + (start if response.status == 206 else 0)) if length else None


def _copy_stream(response, part: Path, start: int, total: int | None, label: str, progress: bool) -> None:
    from tqdm import tqdm

    mode = "ab" if start else "wb"
    with (
        open(part, mode) as out,
        tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
        ) as bar,
    ):
        while block := response.read(CHUNK):
            out.write(block)
            bar.update(len(block))


def _fetch_to_part(url: str, part: Path, label: str, progress: bool, timeout: float) -> None:
    """Append the rest of `url` to `part` (restarting if the server ignores Range)."""
    start = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing left to fetch: the part is already complete
            return
        raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not download {url}: {reason}") from None
    with response:
        if start and response.status != 206:
            start = 0  # the server sent the whole file
        elif start and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
            part.unlink()
            raise DownloadError(f"{url}: the server answered a different range; removed the partial file, run again")
        total = _total_size(response, start)
        problem = None
        try:
            _copy_stream(response, part, start, total, label, progress)
        except (OSError, http.client.HTTPException) as e:
            problem = str(e) or type(e).__name__
    got = part.stat().st_size if part.is_file() else 0
    if problem is None and total is not None and got < total:
        problem = f"the connection closed early, expected {total} bytes"
    if problem is not None:
        raise DownloadError(
            f"download of {url} interrupted after {got} bytes ({problem}); run the same command again to resume"
        )


def verify_file(path: Path, size: int | None, sha256: str | None) -> str:
    """sha256 of `path` after checking the expected size and hash; a mismatch removes the file."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink()
        raise DownloadError(f"{path.name}: {actual_size} bytes, expected {size}; removed it, try again")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256.lower():
        path.unlink()
        raise DownloadError(f"{path.name}: sha256 {digest} does not match the expected {sha256}; removed it")
    return digest


def download(
    url: str,
    dest: Path,
    size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> str:
    """Download `url` to `dest`, resuming `dest.part`; returns the sha256 of the verified file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    if size is not None and part.is_file() and part.stat().st_size > size:
        part.unlink()
    _fetch_to_part(url, part, dest.name, progress, timeout)
    digest = verify_file(part, size, sha256)
    os.replace(part, dest)
    return digest


def copy_local(source: Path, dest: Path, size: int | None = None, sha256: str | None = None) -> str:
    """Copy a local file to `dest` with the same checks as a download; returns its sha256."""
    if not source.is_file():
        raise UsageError(f"--file {source}: no such file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    shutil.copyfile(source, part)
    digest = verify_file(part, size, sha256)
    os.replace(part, dest)
    return digest


def check_densedepth(path: Path) -> None:
    """Load (and so convert and cache) the file; a wrong file raises WeightsFileError."""
    load_state_dict(path)


def install_weights(
    name: str,
    url: str | None = None,
    file: Path | None = None,
    dest_dir: Path | None = None,
    sha256: str | None = None,
    progress: bool = True,
    check: Callable[[Path], None] = check_densedepth,
    force: bool = False,
) -> Path:
    """Fetch registry entry `name` (or a given address / local file) into the cache; returns its path.

    An installed file is kept unless `force`, `url` or `file` asks for a new one."""
    entry = registry_entry(name)
    dest = (dest_dir or weights_dir()) / entry.filename
    if dest.is_file() and sidecar_path(dest).is_file() and not (force or url or file):
        return dest
    expected_sha = sha256 or entry.sha256
    expected_size = entry.size if (url is None and file is None) else None
    if file is not None:
        source = str(Path(file).expanduser().resolve())
        digest = copy_local(Path(file).expanduser(), dest, expected_size, expected_sha)
    else:
        source = url or entry.url
        try:
            digest = download(source, dest, expected_size, expected_sha, progress)
        except DownloadError as e:
            if url is None:
                e.details.append(DEAD_LINK_HINT)
            raise
    try:
        check(dest)
    except UsageError:
        dest.unlink(missing_ok=True)
        raise
    _write_sidecar(dest, entry, source, digest)
    return dest


def registry_entry(name: str) -> WeightsEntry:
    if name not in REGISTRY:
        raise UsageError(f"unknown weights {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _write_sidecar(dest: Path, entry: WeightsEntry, source: str, digest: str) -> None:
    record = {
        "name": entry.name,
        "source": source,
        "size": dest.stat().st_size,
        "sha256": digest,
        "convention": entry.convention,
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    sidecar_path(dest).write_text(json.dumps(record, indent=2) + "\n")
