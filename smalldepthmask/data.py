"""Reading the gen command's shards into PyTorch (built on webdataset).

A sample (from here and from `smalldepthmask.stream`, the same dict):

    "__key__"  str, the global index zero-padded to 10 digits
    "image"    [3, H, W] float32 in [0, 1]
    "mask"     [1, H, W] float32 in {0, 1}
    "depth"    [1, H, W] float32 metres (0 = no depth at that pixel); the key is ABSENT when the data
               has no depth (the dataset's `has_depth` says so) -- never zeros standing in for depth
    "meta"     dict, the sample's JSON record (index, bg, fg, flip, crop, center, scale, box, ...)

`collate` stacks samples into a batch of the same keys ("__key__" and "meta" become lists).

Splitting: shards are dealt out to (rank, worker) pairs: with W ranks and N DataLoader workers per
rank, shard i of the epoch's order goes to rank i % W, and among that rank's shards every N-th to a
worker. Every shard is read exactly once per epoch, so every sample once. The shard order is
shuffled per epoch with a seed from (seed, epoch) that all ranks share; then samples are shuffled in
a buffer seeded from (seed, epoch, rank, worker). With fewer shards than W * N some workers idle;
ranks may see different sample counts when the shard count is not a multiple of W (DDP loops should
cap their steps per epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .codec import decode_depth_png_mm
from .codec import decode_mask_png as _decode_mask_png
from .errors import UsageError
from .plan import decompose, hash64, permute, uniform
from .sink import FORMAT, MANIFEST  # noqa: F401 - FORMAT: the shard format this reader understands
from .sink import read_manifest as sink_read_manifest

REQUIRED = ("jpg", "mask.png", "json")
DEPTH_UNITS = {"millimetres": 0.001}  # manifest depth_units prefix -> metres per stored unit
_MIX_STREAM = 0x44415441  # "DATA"
_SPLIT_STREAM = 0x53504C54  # "SPLT"


class ShardError(UsageError):
    """A shard that cannot be read. Re-raised from a DataLoader worker, it keeps a one-line message."""

    def __init__(self, message: str):
        if "Original Traceback" in message:  # DataLoader re-raise: keep the original last line
            last = message.strip().splitlines()[-1]
            message = last.split(": ", 1)[1] if last.startswith(("smalldepthmask.", "ShardError")) else last
        super().__init__(message)


def mix(*values: int) -> int:
    """A 63-bit seed from a tuple of integers (counter-based, like the plan)."""
    h = 0
    for v in values:
        h = int(hash64(h, np.array([v & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64), _MIX_STREAM)[0])
    return h >> 1


# ---------------------------------------------------------------------------------------------- shards


@dataclass
class ShardSet:
    """Shards of one gen run, checked against its manifest."""

    paths: list[Path]
    manifest: dict
    root: Path
    counts: dict[str, int] = field(default_factory=dict)  # shard name -> samples

    @property
    def out_size(self) -> int:
        return int(self.manifest["identity"]["config"]["out_size"])

    @property
    def has_depth(self) -> bool:
        return "depth.png" in self.manifest.get("components", [])

    @property
    def depth_scale(self) -> float | None:
        """Metres per stored depth unit, from the manifest's `depth_units`."""
        if not self.has_depth:
            return None
        units = str(self.manifest.get("depth_units") or "")
        for prefix, scale in DEPTH_UNITS.items():
            if units.startswith(prefix):
                return scale
        raise UsageError(f"{self.root / MANIFEST}: unknown depth units {units!r} (this version reads millimetres)")

    @property
    def teacher(self) -> dict | None:
        return self.manifest["identity"].get("teacher")

    @property
    def num_samples(self) -> int:
        return sum(self.counts[p.name] for p in self.paths)

    def keys(self, name: str) -> np.ndarray:
        """Global indices ([n] int64) in shard `name`, from the plan (no need to read the shard)."""
        m, cfg = self.manifest, self.manifest["identity"]["config"]
        unit = int(name[len("shard-"):-len(".tar")])
        pos = np.arange(unit * cfg["shard_size"], min((unit + 1) * cfg["shard_size"], m["total"]), dtype=np.int64)
        return permute(pos, int(m["population"]), int(cfg["seed"]))

    def all_indices(self) -> np.ndarray:  # [N] int64 global indices of every selected shard
        return np.concatenate([self.keys(p.name) for p in self.paths]) if self.paths else np.zeros(0, np.int64)

    def background_shas(self, index: np.ndarray) -> list[str]:
        """The background file (sha256) of each global index; the same id as the sample's json record."""
        ident = self.manifest["identity"]
        bg, _, _, _ = decompose(index, len(ident["inputs"]["fg"]), int(ident["config"]["k"]))
        shas = [b["sha256"] for b in ident["inputs"]["bg"]]
        return [shas[int(b)] for b in bg]


def expand_shards(specs: list[str] | str) -> list[Path]:
    """Shard files from paths, directories (every shard-*.tar in it) and brace patterns."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise UsageError("no shards given")
    paths: list[Path] = []
    for spec in specs:
        if "://" in spec or spec.startswith("pipe:"):
            raise UsageError(f"{spec}: only local shard files are supported (the manifest must be next to them)")
        if Path(spec).is_dir():
            found = sorted(Path(spec).glob("shard-*.tar"))
            if not found:
                raise UsageError(f"{spec}: no shard-*.tar files in this directory")
            paths += found
            continue
        for p in wds.shardlists.expand_urls(spec):
            if not Path(p).is_file():
                raise UsageError(f"{p}: no such shard")
            paths.append(Path(p))
    if not paths:
        raise UsageError(f"no shards match {' '.join(specs)}")
    return list(dict.fromkeys(paths))


def read_manifest(root: Path) -> dict:
    """sink.read_manifest, and the shards must hold the components training needs."""
    m = sink_read_manifest(root)
    missing = [c for c in REQUIRED if c not in m.get("components", [])]
    if missing:
        raise UsageError(f"{Path(root) / MANIFEST}: the shards lack required component(s) {', '.join(missing)}")
    return m


def open_shards(specs: list[str] | str, require_depth: bool = False) -> ShardSet:
    """Expand and check shards: one directory (one gen run), each shard complete and listed in its manifest."""
    paths = expand_shards(specs)
    roots = sorted({p.resolve().parent for p in paths})
    if len(roots) > 1:
        raise UsageError(f"shards from {len(roots)} directories; give the shards of one gen run "
                         f"({', '.join(map(str, roots[:3]))}{', ...' if len(roots) > 3 else ''})")
    manifest = read_manifest(roots[0])
    counts = {}
    for p in paths:
        info = manifest.get("units", {}).get(p.name)
        if info is None:
            raise UsageError(f"{p}: not listed in {roots[0] / MANIFEST} (an unfinished or foreign shard)")
        if info.get("bytes") is not None and p.stat().st_size != info["bytes"]:
            raise UsageError(f"{p}: {p.stat().st_size} bytes, the manifest says {info['bytes']} (changed or truncated)")
        counts[p.name] = int(info["count"])
    s = ShardSet(paths, manifest, roots[0], counts)
    if require_depth and not s.has_depth:
        raise UsageError(f"{roots[0]}: the shards have no depth.png (made with --depth none)")
    s.depth_scale  # unknown units fail here, not in a worker
    return s


# -------------------------------------------------------------------------------------------- decoding


def decode_mask(data: bytes) -> torch.Tensor:  # PNG (1-bit or L) -> [1, H, W] float32 in {0, 1}
    return torch.from_numpy(_decode_mask_png(data).astype(np.float32))[None]


def decode_depth(data: bytes, scale: float) -> torch.Tensor:  # uint16 PNG -> [1, H, W] float32 metres
    a = decode_depth_png_mm(data).astype(np.float32)
    return torch.from_numpy(a * np.float32(scale))[None]


def _raise_shard_error(exn: Exception) -> bool:
    """webdataset handler: stop with a one-line message naming the shard (and sample)."""
    if isinstance(exn, ShardError):
        raise exn
    url = getattr(exn, "url", None) or next((a for a in getattr(exn, "args", ())
                                             if isinstance(a, str) and a.endswith(".tar")), "shard")
    where = f"{url}: sample {exn.key}, {exn.k}" if isinstance(exn, wds.autodecode.DecodingError) else str(url)
    cause = exn.__cause__ if exn.__cause__ is not None else exn
    raise ShardError(f"{where}: cannot read ({type(cause).__name__}: {cause})") from exn


class _ToSample:
    """Raw decoded webdataset dict -> the sample dict; a missing component is an error."""

    def __init__(self, with_depth: bool):
        self.need = REQUIRED + (("depth.png",) if with_depth else ())

    def __call__(self, s: dict) -> dict:
        for comp in self.need:
            if comp not in s:
                raise ShardError(f"{s.get('__url__', 'shard')}: sample {s.get('__key__')} has no {comp}")
        out = {"__key__": s["__key__"], "image": s["jpg"], "mask": s["mask.png"], "meta": s["json"]}
        if "depth.png" in self.need:
            out["depth"] = s["depth.png"]
        return out


class ShardDataset(IterableDataset):
    """Samples from shards: split over (rank, worker), shuffled per (seed, epoch), optionally a key subset.

    keys: global indices to keep (e.g. the training split); None keeps all.
    shuffle: sample shuffle buffer size (0: shards and samples in stored order).
    rank, world: default from torch.distributed (or RANK / WORLD_SIZE) when iteration starts.
    """

    def __init__(self, shards: ShardSet, keys: set[int] | None = None, shuffle: int = 1000, seed: int = 0,
                 rank: int | None = None, world: int | None = None, with_depth: bool | None = None):
        super().__init__()
        self.shards, self.keys, self.shuffle, self.seed = shards, keys, shuffle, seed
        self.rank, self.world = rank, world
        self.has_depth = shards.has_depth if with_depth is None else (with_depth and shards.has_depth)
        self.depth_scale = shards.depth_scale
        self.epoch = 0
        idx = shards.all_indices()
        self.keys = None if keys is None else {int(k) for k in keys}
        self.num_samples = int(len(idx) if keys is None else np.isin(idx, np.fromiter(self.keys, np.int64)).sum())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def assigned(self, rank: int, world: int, worker: int, workers: int) -> list[str]:
        """The shards (paths) that (rank, worker) reads this epoch."""
        order = [str(p) for p in self.shards.paths]
        if self.shuffle:
            random.Random(mix(self.seed, self.epoch)).shuffle(order)
        return order[rank::world][worker::workers]

    def _where(self) -> tuple[int, int, int, int]:
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        info = get_worker_info()
        rank = rank if self.rank is None else self.rank
        world = world if self.world is None else self.world
        return rank, world, (info.id if info else 0), (info.num_workers if info else 1)

    def __iter__(self):
        rank, world, worker, workers = self._where()
        urls = self.assigned(rank, world, worker, workers)
        if not urls:
            return iter(())
        stages = [wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=_raise_shard_error)]
        if self.keys is not None:
            keys = self.keys
            stages.append(wds.select(lambda s: int(s["__key__"]) in keys))
        if self.shuffle:
            rng = random.Random(mix(self.seed, self.epoch, rank, worker))
            stages.append(wds.shuffle(self.shuffle, initial=min(self.shuffle, 100), rng=rng))
        scale = self.depth_scale or 0.0
        stages += [wds.decode(wds.handle_extension("mask.png", decode_mask),
                              wds.handle_extension("depth.png", lambda b: decode_depth(b, scale)),
                              "torchrgb", only=list(REQUIRED) + (["depth.png"] if self.has_depth else []),
                              handler=_raise_shard_error),
                   wds.map(_ToSample(self.has_depth), handler=_raise_shard_error)]
        return iter(wds.DataPipeline(*stages))


# ------------------------------------------------------------------------------------------- batching


def collate(samples: list[dict], pin: bool = False) -> dict:
    """Samples -> a batch: tensors stacked ([B, ...]; into pinned memory if `pin`), "__key__", "meta" as lists."""
    out = {"__key__": [s["__key__"] for s in samples], "meta": [s["meta"] for s in samples]}
    for k in ("image", "mask", "depth"):
        if k in samples[0]:
            first = samples[0][k]
            buf = torch.empty((len(samples), *first.shape), dtype=first.dtype, pin_memory=pin)
            out[k] = torch.stack([s[k] for s in samples], out=buf)
    return out


def unbatch(batch: dict):
    """A batch -> its samples (views, no copies)."""
    for i, key in enumerate(batch["__key__"]):
        yield {k: (v[i] if k != "__key__" else key) for k, v in batch.items()}


class Batches:
    """Re-iterable batches of exactly `batch_size` (the last may be short unless drop_last).

    Workers collate chunks of `chunk` samples (cheap to pass between processes); the main process
    re-batches them (into pinned memory with pin_memory, for asynchronous copies to the GPU), so the
    batch count per epoch is exact whatever the number of workers.
    """

    def __init__(self, dataset: ShardDataset, batch_size: int, workers: int = 0, drop_last: bool = False,
                 chunk: int = 32, pin_memory: bool = False):
        self.dataset, self.batch_size, self.drop_last, self.pin = dataset, batch_size, drop_last, pin_memory
        self.has_depth = dataset.has_depth
        self.loader = DataLoader(dataset, batch_size=min(chunk, batch_size), collate_fn=collate,
                                 num_workers=workers, prefetch_factor=4 if workers else None)

    @property
    def num_samples(self) -> int:
        return self.dataset.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        n, b = self.dataset.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        pending: list[dict] = []
        for chunk in self.loader:
            pending.extend(unbatch(chunk))
            while len(pending) >= self.batch_size:
                yield collate(pending[:self.batch_size], self.pin)
                pending = pending[self.batch_size:]
        if pending and not self.drop_last:
            yield collate(pending, self.pin)


# ------------------------------------------------------------------------------------------ the split


def val_groups(groups: list[str], fraction: float, seed: int) -> set[str]:
    """The groups (background sha256s) held out for validation: a keyed choice of round(fraction * n)."""
    uniq = sorted(set(groups))
    if len(uniq) < 2 or fraction <= 0:
        return set()
    n_val = min(len(uniq) - 1, max(1, round(fraction * len(uniq))))
    order = permute(np.arange(len(uniq)), len(uniq), mix(seed, _SPLIT_STREAM))
    return {uniq[int(i)] for i in order[:n_val]}


def split_by_background(index: np.ndarray, shas: list[str], fraction: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Global indices [N] (and each one's background sha256) -> (train [n] int64, val [m] int64, how)."""
    held = val_groups(shas, fraction, seed)
    if held:
        is_val = np.array([s in held for s in shas], dtype=bool)
        how = f"grouped by background: {len(held)} of {len(set(shas))} backgrounds held out"
    elif fraction > 0:  # a single background: a keyed fraction of the samples instead
        is_val = uniform(mix(seed, _SPLIT_STREAM), index, 0) < fraction
        how = f"one background only: a keyed {fraction:.0%} of the samples held out (not grouped)"
    else:
        is_val = np.zeros(len(index), dtype=bool)
        how = "no validation split (--val-fraction 0)"
    return index[~is_val], index[is_val], how


def split_shards(shards: ShardSet, fraction: float, seed: int,
                 split: str | Path | None = None) -> tuple[set[int], set[int], str]:
    """Train and validation keys (global indices) for a shard set.

    A split made by `smalldepthmask split` (its train.txt / test.txt, read by `tools.split.load_split`) is
    used when `split` names one, or when the shards' directory holds a split.json. Otherwise the split
    is grouped by background: the background of each key (the `bg` of its json record, computed here
    from the key by the plan, so no pass over the data) decides, and a keyed choice of backgrounds
    (`val_groups`) is held out.
    """
    index = shards.all_indices()
    where = Path(split) if split is not None else shards.root
    if split is not None or (shards.root / "split.json").is_file():
        from .tools.split import load_split
        train, test = load_split(where)
        present = {int(i) for i in index}
        return ({int(k) for k in train} & present, {int(k) for k in test} & present,
                f"from {where} (smalldepthmask split; its test part validates)")
    tr, va, how = split_by_background(index, shards.background_shas(index), fraction, seed)
    return {int(i) for i in tr}, {int(i) for i in va}, how
