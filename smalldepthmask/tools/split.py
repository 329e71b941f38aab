"""`smalldepthmask split OUT/ --test 0.3`: a reproducible train/test split, grouped by background by default.

The paper's random 70/30 split by sample puts every scene on both sides, so test accuracy measures
memorised backgrounds. Here whole groups (backgrounds, foregrounds, or both) go to one side. Groups are
ordered by a keyed hash of (seed, group id) — reproducible on any machine and numpy version — and taken
in that order while doing so brings the test share of *samples* closer to --test.

Shards mix every group, so the split is a list of sample keys: OUT/train.txt and OUT/test.txt (one key a
line) with OUT/split.json describing it. Training code reads it with `load_split` / `select`:

    train_keys, test_keys = load_split("OUT")
    ds = wds.WebDataset(shard_urls("OUT"), shardshuffle=False).select(select("OUT", "train"))
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UsageError
from ..sink import MANIFEST
from .dataset import Dataset, iter_samples, open_dataset, output_dir, warn_incomplete, write_json, write_text_atomic

PROG = "smalldepthmask split"
SPLIT_JSON = "split.json"
SPLIT_FORMAT = "smalldepthmask-split/v1"
BY_CHOICES = ("bg", "fg", "bg+fg", "sample")


@dataclass
class Membership:
    """Which background and foreground each sample shows (compact: 16 bytes a sample)."""
    keys: np.ndarray  # [N] int64 global sample index
    bg: np.ndarray    # [N] int64 background id
    fg: np.ndarray    # [N] int64 foreground id


def read_membership(ds: Dataset, quiet: bool) -> Membership:
    """Stream the JSON records only (images are not decoded)."""
    keys, bg, fg = array("q"), array("q"), array("q")
    for sample in iter_samples(ds, components=["json"], quiet=quiet, desc="split"):
        try:
            rec = json.loads(sample["json"])
            keys.append(int(sample["__key__"]))
            bg.append(int(rec["bg"]["id"]))
            fg.append(int(rec["fg"]["id"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{ds.root / sample['__unit__']}: sample {sample['__key__']}: bad record "
                             f"({' '.join(str(e).split())}); run "
                             f"`smalldepthmask verify {ds.root}`") from None
    if len(set(keys)) != len(keys):
        raise UsageError(f"{ds.root}: duplicate sample keys; run `smalldepthmask verify {ds.root}`")
    return Membership(np.frombuffer(keys, np.int64), np.frombuffer(bg, np.int64), np.frombuffer(fg, np.int64))


def hash_order(ids: np.ndarray, seed: int, salt: str) -> np.ndarray:
    """ids: [G] -> the same ids ordered by blake2b(seed, salt, id): a seeded permutation, platform-independent."""
    def h(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{salt}:{i}".encode(), digest_size=8).digest()
    return np.array(sorted((int(i) for i in ids), key=h), np.int64)


def choose_test_groups(ids: np.ndarray, fraction: float, seed: int, salt: str) -> set[int]:
    """ids: [N] group of each sample -> test groups whose share of samples is close to `fraction`: a greedy
    walk in seeded hash order, then single moves that get closer; never empty, never all groups."""
    groups, counts = np.unique(ids, return_counts=True)
    count = dict(zip(groups.tolist(), counts.tolist()))
    target, taken, test = fraction * len(ids), 0, set()
    for g in hash_order(groups, seed, salt).tolist():
        if len(test) == len(groups) - 1:
            break
        if abs(taken + count[g] - target) < abs(taken - target) or not test:
            test.add(g)
            taken += count[g]
    return refine(test, count, target)


def refine(test: set[int], count: dict[int, int], target: float) -> set[int]:
    """Add, drop or swap one group at a time while that brings the test sample count strictly closer to
    `target` (with unequal group sizes the greedy walk can stop short); both sides stay non-empty."""
    test = set(test)
    while True:
        taken = sum(count[g] for g in test)
        train = sorted((g for g in count if g not in test), key=lambda g: (count[g], g))
        sizes = np.array([count[g] for g in train])  # [R] ascending
        best, move = abs(taken - target), None
        for t in [None] + sorted(test):  # t: the test group to give back (None: give none back)
            base = taken - (count[t] if t is not None else 0)
            if t is not None and len(test) > 1 and abs(base - target) < best:
                best, move = abs(base - target), (t, None)
            if t is None and len(train) < 2:
                continue  # adding without giving back would leave no train group
            j = int(np.searchsorted(sizes, target - base))
            for r in (train[k] for k in (j - 1, j) if 0 <= k < len(train)):
                if abs(base + count[r] - target) < best:
                    best, move = abs(base + count[r] - target), (t, r)
        if move is None:
            return test
        test.discard(move[0])
        if move[1] is not None:
            test.add(move[1])


def axis_fraction(fraction: float) -> float:
    """Per-axis group share p for --by bg+fg: kept test / kept = p^2 / (p^2 + (1-p)^2) = fraction."""
    return math.sqrt(fraction) / (math.sqrt(fraction) + math.sqrt(1 - fraction))


def assign(m: Membership, by: str, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """-> (is_test [N] bool, is_train [N] bool, test groups {"bg": set, "fg": set}); neither = dropped."""
    if by == "sample":
        order = hash_order(m.keys, seed, "sample")
        n_test = min(max(round(fraction * len(order)), 1), len(order) - 1)
        is_test = np.isin(m.keys, order[:n_test])
        return is_test, ~is_test, {}
    axes = ["bg", "fg"] if by == "bg+fg" else [by]
    share = axis_fraction(fraction) if by == "bg+fg" else fraction
    groups, is_test, is_train = {}, np.ones(len(m.keys), bool), np.ones(len(m.keys), bool)
    for axis in axes:
        ids = getattr(m, axis)
        n_groups = len(np.unique(ids))
        if n_groups < 2:
            name = {"bg": "background", "fg": "foreground"}[axis]
            raise UsageError(f"--by {by}: the dataset has {n_groups} {name}{'s' if n_groups != 1 else ''}; a "
                             f"grouped split needs at least 2 (use --by sample)")
        groups[axis] = choose_test_groups(ids, share, seed, axis)
        in_test = np.isin(ids, sorted(groups[axis]))
        is_test &= in_test
        is_train &= ~in_test
    return is_test, is_train, groups


def group_list(ds: Dataset, axis: str, ids: np.ndarray, mask: np.ndarray, chosen: set[int] | None) -> list[dict]:
    """Groups (with their sample counts) of the samples in `mask`, or the chosen groups if given."""
    files = ds.input_files(axis)
    groups, counts = np.unique(ids[mask], return_counts=True)
    rows = [{"id": int(g), "file": files.get(int(g), f"#{int(g)}"), "samples": int(c)} for g, c in zip(groups, counts)]
    return [r for r in rows if chosen is None or r["id"] in chosen]


def fingerprint(manifest: dict) -> str:
    """What identifies the dataset a split belongs to: the hash of its manifest identity and units."""
    body = json.dumps({"identity": manifest.get("identity"), "units": manifest.get("units")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def describe(ds: Dataset, m: Membership, by: str, fraction: float, seed: int,
             is_test: np.ndarray, is_train: np.ndarray, chosen: dict) -> dict:
    """The split.json object."""
    n_test, n_train = int(is_test.sum()), int(is_train.sum())
    info = {"format": SPLIT_FORMAT, "tool_version": __version__, "dataset_fingerprint": fingerprint(ds.manifest),
            "by": by, "seed": seed, "test_requested": fraction,
            "test_fraction": n_test / (n_test + n_train), "files": {"train": "train.txt", "test": "test.txt"},
            "counts": {"samples": len(m.keys), "train": n_train, "test": n_test,
                       "dropped": len(m.keys) - n_test - n_train},
            "complete_dataset": ds.complete}
    if by != "sample":
        info["groups"] = {axis: {"test": group_list(ds, axis, getattr(m, axis), is_test, None),
                                 "train": group_list(ds, axis, getattr(m, axis), is_train, None)}
                          for axis in ("bg", "fg")}
        info["test_groups"] = {axis: sorted(ids) for axis, ids in chosen.items()}
    if by == "bg+fg":
        info["note"] = ("samples pairing a test background with a train foreground (or the reverse) are in "
                        "neither list: they are counted as dropped")
    return info


def write_split(out: Path, m: Membership, is_test: np.ndarray, is_train: np.ndarray, info: dict) -> None:
    for part, mask in (("train", is_train), ("test", is_test)):
        keys = np.sort(m.keys[mask])
        write_text_atomic(out / f"{part}.txt", "".join(f"{int(k):010d}\n" for k in keys))
    write_json(out / SPLIT_JSON, info)


# ---- reading a split (used by training code) -------------------------------------------------------------


def _split_dir(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.name == SPLIT_JSON else p


def load_split(path: str | Path) -> tuple[set[str], set[str]]:
    """(train keys, test keys) of the split in `path` (the dataset directory, the split's -o directory, or its
    split.json); keys are the 10-digit WebDataset `__key__` strings. UsageError if absent or damaged, or if the
    dataset beside it is not the one the split was made from."""
    d = _split_dir(path)
    try:
        info = json.loads((d / SPLIT_JSON).read_text())
        parts = [set((d / info["files"][p]).read_text().split()) for p in ("train", "test")]
    except FileNotFoundError:
        raise UsageError(f"{d}: no split here; run `smalldepthmask split {d}` first") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{d / SPLIT_JSON}: damaged split ({' '.join(str(e).split())})") from None
    if info.get("format") != SPLIT_FORMAT:
        raise UsageError(f"{d / SPLIT_JSON}: not a smalldepthmask split (format {info.get('format')!r})")
    if len(parts[0]) != info["counts"]["train"] or len(parts[1]) != info["counts"]["test"] or parts[0] & parts[1]:
        raise UsageError(f"{d}: train.txt/test.txt do not match {SPLIT_JSON}; run `smalldepthmask split` again")
    if (d / MANIFEST).is_file():
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except ValueError:
            manifest = None
        if manifest is not None and fingerprint(manifest) != info.get("dataset_fingerprint"):
            raise UsageError(f"{d}: the split was made for another dataset (or before it changed); run "
                             f"`smalldepthmask split {d}` again")
    return parts[0], parts[1]


class KeySelector:
    """A picklable predicate (DataLoader workers may be spawned): True for samples whose key is in `keys`."""

    def __init__(self, keys: set[str]):
        self.keys = frozenset(keys)

    def __call__(self, sample: dict) -> bool:
        return sample["__key__"] in self.keys


def select(path: str | Path, part: str) -> KeySelector:
    """A WebDataset `.select(...)` predicate keeping the samples of `part` ("train" or "test")."""
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    return KeySelector(load_split(path)[0 if part == "train" else 1])


def shard_urls(path: str | Path) -> list[str]:
    """The dataset's shard paths in manifest order (what `wds.WebDataset(...)` takes; every split reads all)."""
    ds = open_dataset(path)
    if ds.layout != "shards":
        raise UsageError(f"{ds.root}: folder layout has no shards")
    return [str(ds.root / name) for name in ds.unit_names()]


# ---- command line ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Reproducible train/test split written as two key lists "
                                "(train.txt, test.txt) and split.json. By default whole backgrounds go to one "
                                "side, so no test background is seen in training.")
    p.add_argument("dataset", metavar="OUT", help="directory written by `smalldepthmask gen`")
    p.add_argument("--test", type=float, default=0.3, metavar="FRACTION",
                   help="share of samples for the test side, in (0, 1) (default 0.3)")
    p.add_argument("--by", choices=BY_CHOICES, default="bg",
                   help="bg: whole backgrounds (default); fg: whole foregrounds; bg+fg: both, dropping samples "
                        "that mix a test and a train group; sample: the paper's per-sample split (leaks scenes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", metavar="DIR", help="where to write split.json, train.txt, test.txt "
                   "(default OUT)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.test < 1:
        raise UsageError(f"--test: must be in (0, 1), got {args.test}")
    if args.seed < 0:
        raise UsageError(f"--seed: must be >= 0, got {args.seed}")
    ds = open_dataset(args.dataset)
    out = output_dir(ds, args.output, "-o")
    warn_incomplete(ds, PROG)
    m = read_membership(ds, args.quiet)
    if len(m.keys) < 2:
        raise UsageError(f"{ds.root}: {len(m.keys)} sample(s); a split needs at least 2")
    is_test, is_train, chosen = assign(m, args.by, args.test, args.seed)
    if not is_test.any() or not is_train.any():
        raise UsageError(f"--by {args.by}: the split leaves no {'test' if not is_test.any() else 'train'} samples "
                         f"(try another --seed or --by)")
    info = describe(ds, m, args.by, args.test, args.seed, is_test, is_train, chosen)
    write_split(out, m, is_test, is_train, info)
    c = info["counts"]
    groups = ""
    if args.by != "sample":
        groups = "; test " + ", ".join(f"{len(info['groups'][a]['test'])} of "
                                       f"{len(info['groups'][a]['test']) + len(info['groups'][a]['train'])} "
                                       f"{'backgrounds' if a == 'bg' else 'foregrounds'}"
                                       for a in (["bg", "fg"] if args.by == "bg+fg" else [args.by]))
    dropped = f", {c['dropped']} dropped (mixed test/train groups)" if c["dropped"] else ""
    print(f"split by {args.by}: {c['train']} train, {c['test']} test (test fraction {info['test_fraction']:.4f}, "
          f"asked {args.test}){dropped}{groups}")
    print(f"wrote {out / SPLIT_JSON}, {out / 'train.txt'}, {out / 'test.txt'}", file=sys.stderr)
    return 0
