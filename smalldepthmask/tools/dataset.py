"""Reading a generator output directory: the manifest, its units (shards or folder chunks), one sample at a time.

Shards are read with webdataset (`shardshuffle=False`, so the order is the manifest's); the folder layout
(images/, masks/, depth/, meta/, index.csv) yields the same sample dicts. Samples are dicts of raw bytes,
`{"__key__": "0000000042", "jpg": b"...", "mask.png": b"...", "json": b"...", ["depth.png": b"..."]}`;
the `decode_*` helpers turn one component into an array.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..codec import decode_depth_png_mm, decode_mask_png
from ..errors import UsageError
from ..sink import MANIFEST, read_manifest

# Files the tools write beside the shards (verify does not count them as unexpected).
TOOL_OUTPUTS = ("stats.json", "stats.png", "split.json", "train.txt", "test.txt", "preview.png", "profile.json")
INDEX_CSV = "index.csv"
FOLDER_COLUMNS = {"jpg": "image", "mask.png": "mask", "depth.png": "depth", "json": "meta"}


class UnitError(Exception):
    """A unit (shard or chunk) that cannot be read to the end: `unit`, one-line `reason`, samples read before."""

    def __init__(self, unit: str, reason: str, read: int):
        super().__init__(f"{unit}: {reason}")
        self.unit, self.reason, self.read = unit, reason, read


@dataclass
class Dataset:
    root: Path
    manifest: dict

    @property
    def layout(self) -> str:
        return self.manifest.get("layout", "shards")

    @property
    def config(self) -> dict:
        return self.manifest["identity"]["config"]

    @property
    def units(self) -> dict[str, dict]:
        """Units the manifest lists as complete: name -> {"count", "sha256", ["bytes"]}."""
        return self.manifest["units"]

    def unit_names(self) -> list[str]:
        return sorted(self.units)

    @property
    def components(self) -> list[str]:
        return list(self.manifest.get("components") or ["jpg", "mask.png", "json"])

    @property
    def has_depth(self) -> bool:
        return "depth.png" in self.components

    @property
    def out_size(self) -> int:
        return int(self.config["out_size"])

    @property
    def population(self) -> int:
        return int(self.manifest.get("population", 0))

    @property
    def total(self) -> int:
        return int(self.manifest.get("total", 0))

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def listed_samples(self) -> int:
        """Samples in the units the manifest lists (the total once the run is complete)."""
        return sum(int(u.get("count", 0)) for u in self.units.values())

    def input_files(self, kind: str) -> dict[int, str]:
        """kind "bg" or "fg": input id -> file name, from the manifest's identity."""
        return {int(r["id"]): str(r["file"]) for r in self.manifest["identity"].get("inputs", {}).get(kind, [])}

    def unit_word(self, n: int) -> str:
        """ "3 shards", "1 shard", "2 chunks" (folder layout)."""
        return f"{n} {'shard' if self.layout == 'shards' else 'chunk'}{'' if n == 1 else 's'}"

    def describe(self) -> str:
        return f"{self.listed_samples()} samples in {self.unit_word(len(self.units))}"


load_manifest = read_manifest  # OUT/manifest.json, checked (sink.read_manifest)


def open_dataset(path: str | os.PathLike, need_units: bool = True) -> Dataset:
    """The dataset in `path`. With `need_units`, every listed unit must be there and there must be one."""
    ds = Dataset(Path(path), load_manifest(Path(path)))
    if ds.layout not in ("shards", "folders"):
        raise UsageError(f"{ds.root / MANIFEST}: unknown layout {ds.layout!r}")
    if not need_units:
        return ds
    if not ds.units:
        raise UsageError(f"{ds.root}: no complete {'shards' if ds.layout == 'shards' else 'chunks'} yet "
                         "(run the generator to the end)")
    if ds.layout == "folders" and not (ds.root / INDEX_CSV).is_file():
        raise UsageError(f"{ds.root / INDEX_CSV}: missing (the run did not finish); run `smalldepthmask verify "
                         f"{ds.root}`")
    if ds.layout == "shards":
        for name in ds.unit_names():
            if not (ds.root / name).is_file():
                raise UsageError(f"{ds.root / name}: listed in {MANIFEST} but missing; run `smalldepthmask "
                                 f"verify {ds.root}`")
    return ds


def warn_incomplete(ds: Dataset, prog: str) -> None:
    if not ds.complete:
        print(f"{prog}: warning: {ds.root} is an incomplete run ({ds.describe()} of {ds.total}); "
              "using what is there", file=sys.stderr)


def one_line(e: BaseException | str) -> str:
    """An exception's message on one line (webdataset appends ' @ <stream>' and extra args)."""
    msg = str(e.args[0]) if isinstance(e, BaseException) and e.args else str(e)
    msg = msg.split(" @ ")[0]
    return " ".join(msg.split()) or type(e).__name__


def _wanted(components: Iterable[str] | None) -> Callable[[str], bool] | None:
    if components is None:
        return None
    wanted = {c.lower() for c in components}
    return lambda fname: fname.partition(".")[2].lower() in wanted


def iter_shard(path: Path, components: Iterable[str] | None = None) -> Iterator[dict]:
    """Samples of one tar shard in file order (raw bytes); UnitError if it cannot be read to the end."""
    import webdataset as wds
    read = 0
    try:
        ds = wds.WebDataset([str(path)], shardshuffle=False, empty_check=False, select_files=_wanted(components),
                            nodesplitter=None, workersplitter=None)
        for sample in ds:
            sample.pop("__url__", None)
            sample.pop("__local_path__", None)
            read += 1
            yield sample
    except Exception as e:  # tarfile.ReadError, EOFError, ValueError (duplicate member), OSError, ...
        raise UnitError(path.name, f"unreadable after {read} samples ({one_line(e)})", read) from None


def _folder_rows(root: Path) -> Iterator[dict]:
    with open(root / INDEX_CSV, newline="") as f:
        yield from csv.DictReader(f)


def iter_chunk(ds: Dataset, name: str, components: Iterable[str] | None = None) -> Iterator[dict]:
    """Samples of one chunk of the folder layout (index.csv rows unit*shard_size ...); missing files are absent."""
    size = int(ds.config["shard_size"])
    start = int(name.split("-")[-1]) * size
    wanted = set(components) if components is not None else None
    read = 0
    try:
        for row in itertools.islice(_folder_rows(ds.root), start, start + size):
            sample = {"__key__": row["key"]}
            for comp, column in FOLDER_COLUMNS.items():
                rel = row.get(column) or ""
                if rel and (wanted is None or comp in wanted) and (ds.root / rel).is_file():
                    sample[comp] = (ds.root / rel).read_bytes()
            read += 1
            yield sample
    except (OSError, csv.Error, KeyError, UnicodeDecodeError) as e:
        raise UnitError(name, f"unreadable after {read} samples ({one_line(e)})", read) from None


def iter_unit(ds: Dataset, name: str, components: Iterable[str] | None = None) -> Iterator[dict]:
    if ds.layout == "shards":
        return iter_shard(ds.root / name, components)
    return iter_chunk(ds, name, components)


def iter_samples(ds: Dataset, components: Iterable[str] | None = None, quiet: bool = False,
                 desc: str = "") -> Iterator[dict]:
    """Every sample of every listed unit, in manifest order, with a progress bar; a unit that cannot be read
    or holds another number of samples than the manifest says -> UsageError. Samples carry "__unit__"."""
    from tqdm import tqdm
    components = list(components) if components is not None else None
    with tqdm(total=ds.listed_samples(), unit="sample", desc=desc, disable=quiet, dynamic_ncols=True,
              file=sys.stderr) as bar:
        for name in ds.unit_names():
            n = 0
            try:
                for sample in iter_unit(ds, name, components):
                    n += 1
                    sample["__unit__"] = name
                    yield sample
                    bar.update(1)
            except UnitError as e:
                raise UsageError(f"{ds.root / name}: {e.reason}; run `smalldepthmask verify {ds.root}`") from None
            if n != int(ds.units[name].get("count", n)):
                raise UsageError(f"{ds.root / name}: {n} samples, {MANIFEST} says {ds.units[name]['count']} "
                                 f"(truncated or damaged); run `smalldepthmask verify {ds.root}`")


# ---- decoding one component ------------------------------------------------------------------------------


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> [H, W, 3] uint8 RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


decode_mask = decode_mask_png  # 1-bit (or 8-bit) PNG bytes -> [H, W] bool, True = foreground
decode_depth_mm = decode_depth_png_mm  # 16-bit PNG bytes -> [H, W] uint16 millimetres (0 = no data)


def decode_record(data: bytes) -> dict:
    rec = json.loads(data)
    if not isinstance(rec, dict):
        raise ValueError("record is not a JSON object")
    return rec


# ---- writing tool outputs --------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write ({one_line(e)})") from None


def write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def output_dir(ds: Dataset, given: str | None, flag: str) -> Path:
    """Where a tool writes its files: `given` (created), or beside the shards; checked writable up front."""
    out = Path(given) if given else ds.root
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{out}: cannot create ({one_line(e)})") from None
    check_writable(out / ".", flag)
    return out


def check_writable(path: Path, flag: str) -> None:
    """UsageError before any work if the file `path` cannot be written there (say which `flag` moves it)."""
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{parent}: no such directory")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{parent}: not writable; use {flag} to write elsewhere")
