"""Streaming without disk: the generator itself as an iterable dataset of ready batches on its device.

Every batch is made by the same code as the gen command (plan -> composite -> teacher, see
`generator.Generator`), so sample `g` of the stream equals sample `g` of the shards made with the same
config and inputs (the shards' image is that image after JPEG; mask and record are identical; the
shards' depth is this depth rounded to millimetres).

Order. The stream covers a fixed list of output positions (by default all of [0, total); for training,
the positions of one split). Epoch e visits them in a fresh keyed permutation seeded from
(seed, epoch) (`plan.permute`); rank r of W takes the epoch's positions r, r + W, r + 2W, ...; they
are cut into batches, and DataLoader worker w of N (CPU generators only) takes batches w, w + N, ...
so a DataLoader with batch_size=None yields them in order. Everything is a function of
(seed, epoch, rank, world), so ranks are disjoint, their union is every position once, and a resumed
run sees the same batches. With drop_last (the default for training) every rank gets the same number
of full batches and up to W * batch_size - 1 positions sit out that epoch (others the next).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .config import GenConfig
from .data import mix, split_by_background
from .encode import sample_key
from .generator import Generator
from .plan import decompose, permute


def stream_config(**kw) -> GenConfig:
    """A GenConfig for streaming (no output directory); keyword arguments as GenConfig's fields."""
    kw.setdefault("out", "<stream>")
    kw.setdefault("quiet", True)
    return GenConfig(**kw)


def split_positions(gen: Generator, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Output positions of the train and validation splits, grouped by background file (as for shards)."""
    pos = np.arange(gen.total, dtype=np.int64)
    index = gen.indices(0, gen.total)
    bg, _, _, _ = decompose(index, len(gen.inputs.fg), gen.cfg.k)
    shas = [gen.inputs.bg[int(b)].sha256 for b in bg]
    tr, va, how = split_by_background(index, shas, fraction, seed)
    is_train = np.isin(index, tr)
    return pos[is_train], pos[np.isin(index, va)], how


class StreamDataset(IterableDataset):
    """Batches of samples made on the fly: dicts like `data.collate`'s, tensors on the generator's device.

    positions: output positions to cover ([n] int64, default all of [0, total)).
    shuffle: a fresh keyed permutation per epoch (False: positions in the given order).
    rank, world: default from torch.distributed (or RANK / WORLD_SIZE) when iteration starts.
    """

    def __init__(self, gen: Generator, batch_size: int, positions: np.ndarray | None = None, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, rank: int | None = None, world: int | None = None):
        super().__init__()
        self.gen, self.batch_size, self.seed, self.shuffle, self.drop_last = gen, batch_size, seed, shuffle, drop_last
        self.positions = np.arange(gen.total, dtype=np.int64) if positions is None else np.asarray(positions, np.int64)
        self.rank, self.world = rank, world
        self.has_depth = gen.teacher is not None
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.positions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_world(self) -> tuple[int, int]:
        import webdataset as wds
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        return (rank if self.rank is None else self.rank), (world if self.world is None else self.world)

    def rank_positions(self, rank: int, world: int) -> np.ndarray:
        """This epoch's positions for `rank` ([m] int64), in visiting order."""
        n = len(self.positions)
        order = permute(np.arange(n), n, mix(self.seed, self.epoch)) if self.shuffle else np.arange(n)
        mine = self.positions[order][rank::world]
        if self.drop_last:
            per_rank = (n // world) // self.batch_size * self.batch_size  # equal for every rank
            mine = mine[:per_rank]
        return mine

    def batches(self, rank: int, world: int) -> list[np.ndarray]:
        """The epoch's batches (output positions) for `rank`."""
        mine = self.rank_positions(rank, world)
        return [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def __len__(self) -> int:
        return len(self.batches(*self._rank_world()))

    def __iter__(self):
        rank, world = self._rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers > 1 and self.gen.device.type == "cuda":
            raise RuntimeError("StreamDataset on CUDA runs in the main process: use it without DataLoader workers")
        for pos in self.batches(rank, world)[worker::workers]:
            yield self.make(pos)

    def make(self, positions: np.ndarray) -> dict:
        """The batch at output positions ([B] int64), on the generator's device."""
        gen = self.gen
        index = permute(np.asarray(positions, np.int64), gen.population, gen.cfg.seed)  # = gen.indices
        b = gen.batch(index)
        out = {"__key__": [sample_key(int(i)) for i in index], "meta": gen.records(b.params),
               "image": b.image.permute(0, 3, 1, 2).float().div_(255.0),  # [B, 3, O, O] float32 in [0, 1]
               "mask": b.mask[:, None].float()}  # [B, 1, O, O] float32 in {0, 1}
        if b.depth is not None:
            out["depth"] = b.depth.to(torch.float32, copy=True)  # [B, 1, O, O] metres (a normal tensor)
        return out
