"""Sink: WebDataset tar shards (or the offline folder layout) and the manifest that makes runs resumable.

A unit of output (a shard, or a chunk of the folder layout) is written under a temporary name and
renamed when complete; only then does the manifest list it. A killed run leaves at most hidden
`.*.tmp` files, which the next run deletes before it makes the missing units again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import webdataset as wds

from . import __version__
from .errors import UsageError

MANIFEST = "manifest.json"
FORMAT = "smalldepthmask/v1"


def shard_name(unit: int) -> str:
    return f"shard-{unit:06d}.tar"


def chunk_name(unit: int) -> str:
    return f"chunk-{unit:06d}"


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (the one file hash of the package)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(root: Path) -> dict:
    """OUT/manifest.json, checked to be a smalldepthmask manifest of this format; UsageError (exit 2) otherwise.
    The one manifest reader: the shard reader (data.py), the dataset tools and resume all use it."""
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{root}: no such directory")
    if not root.is_dir():
        raise UsageError(f"{root}: not a directory")
    path = root / MANIFEST
    if not path.is_file():
        raise UsageError(f"{root}: no {MANIFEST} (not a smalldepthmask dataset: were the shards made by "
                         "smalldepthmask gen?)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{path}: not a smalldepthmask manifest (unreadable: {first})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise UsageError(f"{path}: not a smalldepthmask manifest of this version: incompatible shard format "
                         f"{fmt!r} (this version reads {FORMAT!r}); make the shards again with this version")
    for name in ("units", "identity"):
        if not isinstance(manifest.get(name), dict):
            raise UsageError(f"{path}: damaged manifest (no {name!r} object)")
    if not isinstance(manifest["identity"].get("config"), dict) or "out_size" not in manifest["identity"]["config"]:
        raise UsageError(f"{path}: damaged manifest (no identity.config.out_size)")
    return manifest


class _HashingFile:
    """A write-only file wrapper that hashes what goes through it."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class ShardWriter:
    """Writes one unit as `shard-NNNNNN.tar` (deterministic tar headers: fixed mtime, user, mode)."""

    def __init__(self, out: Path, unit: int):
        self.final = out / shard_name(unit)
        self.tmp = out / f".{shard_name(unit)}.tmp"
        self.file = open(self.tmp, "wb")
        self.hfile = _HashingFile(self.file)
        self.tar = wds.TarWriter(self.hfile, encoder=False, mtime=0, user="smalldepthmask",
                                 group="smalldepthmask", mode=0o444)
        self.count = 0

    def add(self, sample: dict) -> None:
        self.tar.write(sample)
        self.count += 1

    def commit(self) -> dict:
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.final)
        return {"count": self.count, "sha256": self.hfile.sha.hexdigest()}

    def abort(self) -> None:
        self.tar.close()  # finish the tar stream first, so nothing writes to the file after it is closed
        self.file.close()
        self.tmp.unlink(missing_ok=True)


FOLDER_EXT = {"jpg": ("images", ".jpg"), "mask.png": ("masks", ".png"), "depth.png": ("depth", ".png"),
              "json": ("meta", ".json")}


class FolderWriter:
    """Writes one unit of the offline layout: images/KEY.jpg, masks/KEY.png, depth/KEY.png, meta/KEY.json."""

    def __init__(self, out: Path, unit: int):
        self.out, self.unit, self.count, self.sha = out, unit, 0, hashlib.sha256()

    def add(self, sample: dict) -> None:
        key = sample["__key__"]
        for comp in sorted(k for k in sample if k != "__key__"):
            folder, ext = FOLDER_EXT[comp]
            path = self.out / folder / f"{key}{ext}"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(sample[comp])
            os.replace(tmp, path)
            self.sha.update(key.encode() + comp.encode() + sample[comp])
        self.count += 1

    def commit(self) -> dict:
        return {"count": self.count, "sha256": self.sha.hexdigest()}

    def abort(self) -> None:
        pass


def open_unit(layout: str, out: Path, unit: int):
    return ShardWriter(out, unit) if layout == "shards" else FolderWriter(out, unit)


def unit_name(layout: str, unit: int) -> str:
    return shard_name(unit) if layout == "shards" else chunk_name(unit)


def prepare_out(out: Path, layout: str, identity: dict, overwrite: bool) -> dict:
    """Check OUT against the run about to be made; return the manifest to continue from (maybe fresh).

    `identity` holds what the bytes depend on (version, config, inputs, teacher): a manifest with a
    different identity is another run, refused unless `overwrite`.
    """
    path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    manifest = None
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: unreadable manifest ({e}); use --overwrite to start again") from None
        if manifest.get("identity") != identity and not overwrite:
            diff = sorted(k for k in set(identity) | set(manifest.get("identity") or {})
                          if (manifest.get("identity") or {}).get(k) != identity.get(k))
            raise UsageError(f"{out} holds a different run (differs in: {', '.join(diff) or 'format'}); "
                             "use another directory or --overwrite")
    elif out.is_dir() and any(out.glob("shard-*.tar")) and not overwrite:
        raise UsageError(f"{out} holds shards without {MANIFEST}; use another directory or --overwrite")
    if manifest is not None and manifest.get("identity") != identity:
        clear_out(out)
        manifest = None
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):
        stale.unlink()
    if layout == "folders":
        for folder in ("images", "masks", "depth", "meta"):
            (out / folder).mkdir(exist_ok=True)
            for stale in (out / folder).glob(".*.tmp"):
                stale.unlink()
    if manifest is None:
        manifest = {"format": FORMAT, "tool": "smalldepthmask", "version": __version__, "identity": identity,
                    "units": {}, "complete": False}
    return manifest


def clear_out(out: Path) -> None:
    """Remove what an earlier run wrote into OUT (its shards, folders, manifest, index)."""
    for p in list(out.glob("shard-*.tar")) + list(out.glob(".*.tmp")) + [out / MANIFEST, out / "index.csv"]:
        if p.exists():
            p.unlink()
    for folder in ("images", "masks", "depth", "meta"):
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)


def done_units(out: Path, manifest: dict) -> set[str]:
    """Units the manifest lists whose files are still there (shards: present with the right size)."""
    done = set()
    for name, info in manifest.get("units", {}).items():
        if name.startswith("shard-") and not (out / name).is_file():
            continue
        if name.startswith("shard-") and info.get("bytes") not in (None, (out / name).stat().st_size):
            continue
        done.add(name)
    return done


def write_index_csv(out: Path, rows: list[dict]) -> None:
    """The folder layout's index: one row per sample, sorted by output position."""
    tmp = out / ".index.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["key"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out / "index.csv")
