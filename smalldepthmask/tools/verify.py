"""`smalldepthmask verify OUT/`: check every shard against the manifest; one line per problem, exit 1 if any.

Checks: the manifest (format, complete run, unit and sample totals); every listed unit is present with the
recorded size and sha256; no unlisted shard or leftover temporary file; each unit holds the recorded
number of samples; every sample has exactly the manifest's components, each decodes at the right size
(JPEG RGB, 1-bit mask PNG, 16-bit depth PNG, JSON record naming the same index), and keys are unique and
within [0, population). This is the command to run after copying a dataset somewhere.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..codec import DEPTH_MODES, MASK_MODES
from ..sink import MANIFEST, sha256_file
from .dataset import INDEX_CSV, Dataset, UnitError, iter_unit, one_line, open_dataset

PROG = "smalldepthmask verify"
MAX_PER_UNIT = 20                      # problem lines per unit before "... and N more"
KEY_RE = re.compile(r"^[0-9]{10}$")
EXPECTED_MODES = {"jpg": ("RGB",), "mask.png": MASK_MODES, "depth.png": DEPTH_MODES}


@dataclass
class Report:
    """Problem lines, capped per unit so that one ruined shard does not bury the others."""
    lines: list[str] = field(default_factory=list)
    per_unit: dict[str, int] = field(default_factory=dict)

    def add(self, where: str, message: str) -> None:
        n = self.per_unit[where] = self.per_unit.get(where, 0) + 1
        if n <= MAX_PER_UNIT:
            self.lines.append(f"{where}: {message}")

    def overflow(self) -> list[str]:
        return [f"{w}: ... and {n - MAX_PER_UNIT} more problems" for w, n in self.per_unit.items() if n > MAX_PER_UNIT]

    @property
    def count(self) -> int:
        return sum(self.per_unit.values())


class KeySet:
    """Keys seen so far: a bitmap over [0, population) (flat memory), or a set if the population is unknown."""

    def __init__(self, population: int):
        self.bits = np.zeros(population, bool) if 0 < population <= 1 << 31 else None
        self.seen: set[int] = set()

    def add(self, index: int) -> bool:
        """Record `index`; False if it was seen before."""
        if self.bits is not None:
            old = bool(self.bits[index])
            self.bits[index] = True
            return not old
        if index in self.seen:
            return False
        self.seen.add(index)
        return True


def check_manifest(ds: Dataset, report: Report) -> None:
    m, where = ds.manifest, MANIFEST
    listed, num_units = len(ds.units), m.get("num_units")
    if not ds.complete:
        report.add(where, f"incomplete run ({listed} of {num_units} units complete); run the same gen command "
                          "again to finish it")
        return
    if num_units is not None and listed != num_units:
        report.add(where, f"lists {listed} units, num_units says {num_units}")
    if m.get("total") is not None and ds.listed_samples() != m["total"]:
        report.add(where, f"units hold {ds.listed_samples()} samples, total says {m['total']}")
    for name, info in ds.units.items():
        if not isinstance(info, dict) or not isinstance(info.get("count"), int) or not info.get("sha256"):
            report.add(where, f"entry for {name} lacks count or sha256")


def check_files(ds: Dataset, report: Report) -> list[str]:
    """Presence, size and sha256 of each listed shard, and files that should not be there; -> units to read."""
    readable = []
    listed = set(ds.units)
    for tmp in sorted(ds.root.glob(".*.tmp")):
        report.add(tmp.name, "leftover temporary file (an interrupted run or copy)")
    if ds.layout == "folders":
        if not (ds.root / INDEX_CSV).is_file():
            report.add(INDEX_CSV, "missing (the samples cannot be located)")
            return []
        return ds.unit_names()
    for path in sorted(ds.root.glob("*.tar")):
        if path.name not in listed:
            report.add(path.name, f"not listed in {MANIFEST} (from another run, or a copy of a shard?)")
    for name in ds.unit_names():
        path, info = ds.root / name, ds.units[name]
        if not path.is_file():
            report.add(name, f"missing (listed in {MANIFEST})")
            continue
        size = path.stat().st_size
        if info.get("bytes") is not None and size != info["bytes"]:
            report.add(name, f"size {size} bytes, {MANIFEST} says {info['bytes']} (truncated or damaged)")
        if sha256_file(path) != info.get("sha256"):
            report.add(name, "sha256 mismatch (the file changed since it was written)")
        readable.append(name)
    return readable


def decode_problem(comp: str, data: bytes, out_size: int) -> str | None:
    """Why component `comp` does not decode as expected, or None."""
    if comp == "json":
        return None  # checked with the key in check_sample
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode, size = im.mode, im.size
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... on damaged data
        return f"{comp} does not decode ({one_line(e)})"
    if mode not in EXPECTED_MODES.get(comp, (mode,)):
        return f"{comp} has mode {mode}, expected {' or '.join(EXPECTED_MODES[comp])}"
    if size != (out_size, out_size):
        return f"{comp} is {size[0]}x{size[1]}, expected {out_size}x{out_size}"
    return None


def check_sample(sample: dict, ds: Dataset, keys: KeySet) -> Iterator[str]:
    """Problems of one sample (without the unit prefix)."""
    key = sample["__key__"]
    if not KEY_RE.match(key) or (ds.population and int(key) >= ds.population):
        yield f"sample {key}: key is not a 10-digit index in [0, {ds.population})"
    elif not keys.add(int(key)):
        yield f"sample {key}: duplicate key"
    have = set(sample) - {"__key__"}
    for comp in ds.components:
        if comp not in have:
            yield f"sample {key}: missing {comp}"
    for comp in sorted(have - set(ds.components)):
        yield f"sample {key}: unexpected component {comp}"
    for comp in sorted(have & set(ds.components)):
        problem = decode_problem(comp, sample[comp], ds.out_size)
        if problem:
            yield f"sample {key}: {problem}"
    if "json" in have:
        try:
            rec = json.loads(sample["json"])
            if not isinstance(rec, dict) or rec.get("index") != int(key):
                yield f"sample {key}: json record is for index {rec.get('index') if isinstance(rec, dict) else '?'}"
        except ValueError as e:
            yield f"sample {key}: json does not parse ({one_line(e)})"


def folder_digest(sample: dict) -> bytes:
    """What the folder writer hashed for one sample (key + component name + bytes, components sorted)."""
    key = sample["__key__"]
    return b"".join(key.encode() + c.encode() + sample[c] for c in sorted(k for k in sample if k != "__key__"))


def check_unit(ds: Dataset, name: str, report: Report, keys: KeySet, bar) -> int:
    """Read one unit sample by sample; -> samples read."""
    n, sha = 0, hashlib.sha256()
    try:
        for sample in iter_unit(ds, name):
            n += 1
            bar.update(1)
            for problem in check_sample(sample, ds, keys):
                report.add(name, problem)
            if ds.layout == "folders":
                sha.update(folder_digest(sample))
    except UnitError as e:
        report.add(name, f"truncated or corrupt: {e.reason}")
        return n
    expected = int(ds.units[name].get("count", -1))
    if n != expected:
        why = " (the tar ends early: truncated or damaged)" if n < expected else ""
        report.add(name, f"{n} samples, {MANIFEST} says {expected}{why}")
    if ds.layout == "folders" and sha.hexdigest() != ds.units[name].get("sha256"):
        report.add(name, "sha256 mismatch (a file of this chunk changed since it was written)")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Check every shard against manifest.json: presence, "
                                "sha256, sample counts, components, decoding. Exit 0 if all is well, 1 if any "
                                "problem (one line each), 2 if OUT is not a dataset.")
    p.add_argument("dataset", metavar="OUT", help="directory written by `smalldepthmask gen`")
    p.add_argument("--quick", action="store_true", help="only presence, size and sha256 (do not read samples)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm
    args = build_parser().parse_args(argv)
    ds = open_dataset(args.dataset, need_units=False)
    report, keys = Report(), KeySet(ds.population)
    check_manifest(ds, report)
    readable = check_files(ds, report)
    if not args.quick:
        total = sum(int(ds.units[u].get("count", 0)) for u in readable)
        with tqdm(total=total, unit="sample", desc="verify", disable=args.quiet, dynamic_ncols=True,
                  file=sys.stderr) as bar:
            for name in readable:
                check_unit(ds, name, report, keys, bar)
    if report.count:
        print("\n".join(report.lines + report.overflow()))
        print(f"FAILED: {report.count} problem{'s' if report.count != 1 else ''} in {ds.root}", file=sys.stderr)
        return 1
    what = "sizes and sha256 (samples not read)" if args.quick else "sizes, sha256, counts, components, decoding"
    print(f"OK: {ds.listed_samples()} samples in {ds.unit_word(len(ds.units))} match {ds.root / MANIFEST} ({what})")
    return 0
