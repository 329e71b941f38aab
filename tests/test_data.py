"""Shard reader and online stream: the same samples, split over ranks and workers without gaps or repeats."""

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import FakeTeacher, gen_with_fake_teacher
from smalldepthmask import gen
from smalldepthmask.data import Batches, ShardDataset, expand_shards, open_shards, split_shards
from smalldepthmask.errors import UsageError
from smalldepthmask.generator import build_generator
from smalldepthmask.stream import StreamDataset, split_positions, stream_config

GEN_ARGS = ["--k", "2", "--limit", "48", "--compose-size", "64", "--out-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 samples in 6 shards of 8, with depth (fake teacher)."""
    d = tmp_path_factory.mktemp("shards")
    gen_with_fake_teacher(d, ["--shard-size", "8", *GEN_ARGS])
    return d


@pytest.fixture(scope="module")
def stream_gen():
    g = build_generator(stream_config(k=2, limit=48, compose_size=64, out_size=64, depth="none"), "cpu")
    g.teacher = FakeTeacher()
    return g


def all_samples(shards_dir) -> dict:
    return {s["__key__"]: s for s in ShardDataset(open_shards(str(shards_dir)), shuffle=0)}


def test_sample_dict(shards):
    s = next(iter(ShardDataset(open_shards(str(shards)), shuffle=0)))
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert 0 <= s["image"].min() and s["image"].max() <= 1
    assert s["mask"].shape == (1, 64, 64) and set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    assert s["depth"].shape == (1, 64, 64) and 1.0 <= s["depth"].min() and s["depth"].max() <= 5.0
    assert s["meta"]["index"] == int(s["__key__"]) and len(s["__key__"]) == 10


def test_shards_and_stream_yield_identical_samples(shards, stream_gen):
    stored = all_samples(shards)
    stream = StreamDataset(stream_gen, 16, shuffle=False)
    seen = 0
    for batch in stream:
        assert batch["image"].shape[1:] == (3, 64, 64) and batch["depth"].shape[1:] == (1, 64, 64)
        for i, key in enumerate(batch["__key__"]):
            s = stored[key]
            assert s["meta"] == batch["meta"][i]
            assert torch.equal(s["mask"], batch["mask"][i])
            diff = (s["image"] - batch["image"][i]).abs()  # the shard went through JPEG (quality 95, 4:4:4)
            assert diff.mean() < 0.015 and diff.max() < 0.2
            assert (s["depth"] - batch["depth"][i]).abs().max() <= 0.0005 + 1e-6  # millimetre rounding
            seen += 1
    assert seen == 48 == len(stored)


def test_same_index_range_same_keys(shards, stream_gen):
    """Output positions [8, 24) are shards 1 and 2 in order, and the stream's positions 8..23."""
    ds = ShardDataset(open_shards([str(shards / "shard-000001.tar"), str(shards / "shard-000002.tar")]), shuffle=0)
    keys = [s["__key__"] for s in ds]
    batch = StreamDataset(stream_gen, 16, shuffle=False).make(np.arange(8, 24))
    assert keys == batch["__key__"]


@pytest.mark.parametrize("world,workers", [(1, 2), (2, 2), (3, 1)])
def test_shard_split_covers_every_sample_once(shards, world, workers):
    s = open_shards(str(shards))
    keys = []
    for rank in range(world):
        ds = ShardDataset(s, shuffle=50, seed=7, rank=rank, world=world)
        ds.set_epoch(1)
        for batch in DataLoader(ds, batch_size=5, num_workers=workers, collate_fn=lambda x: x):
            keys += [x["__key__"] for x in batch]
    assert len(keys) == len(set(keys)) == 48


def test_shard_shuffle_is_per_epoch_and_reproducible(shards):
    ds = ShardDataset(open_shards(str(shards)), shuffle=20, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        orders.append([s["__key__"] for s in ds])
    assert orders[0] == orders[2] != orders[1] and sorted(orders[0]) == sorted(orders[1])


def test_batches_rebatch_exactly(shards):
    s = open_shards(str(shards))
    b = Batches(ShardDataset(s, shuffle=10), batch_size=10, workers=2)
    sizes = [len(x["__key__"]) for x in b]
    assert sizes == [10, 10, 10, 10, 8] and len(b) == 5
    assert [len(x["__key__"]) for x in Batches(ShardDataset(s, shuffle=0), 10, drop_last=True)] == [10] * 4


def test_stream_rank_and_worker_split(stream_gen):
    seen = []
    for rank in range(2):
        ds = StreamDataset(stream_gen, 5, seed=11, rank=rank, world=2)
        ds.set_epoch(3)
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            seen += batch["__key__"]
    assert len(seen) == len(set(seen)) == 48


def test_stream_epochs_are_fresh_and_deterministic(stream_gen):
    ds = StreamDataset(stream_gen, 8, seed=5, rank=0, world=1)
    orders = []
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        orders.append(ds.rank_positions(0, 1).tolist())
    assert orders[0] == orders[2] != orders[1] and sorted(orders[0]) == list(range(48))
    ds.drop_last = True
    per_rank = [len(ds.rank_positions(r, 3)) for r in range(3)]
    assert per_rank == [16, 16, 16]


def test_split_is_grouped_by_background(shards, stream_gen):
    s = open_shards(str(shards))
    train, val, how = split_shards(s, 0.25, 0)
    assert train and val and not train & val and len(train | val) == 48 and "background" in how
    stored = all_samples(shards)
    bg = lambda keys: {stored[f"{k:010d}"]["meta"]["bg"]["id"] for k in keys}  # noqa: E731
    assert not bg(train) & bg(val)
    tr_pos, va_pos, _ = split_positions(stream_gen, 0.25, 0)  # the stream holds out the same backgrounds
    assert set(stream_gen.indices(0, 48)[va_pos].tolist()) == val


def test_errors_are_clear(shards, tmp_path):
    with pytest.raises(UsageError, match="no shards given"):
        expand_shards([])
    with pytest.raises(UsageError, match="no such shard"):
        open_shards(str(tmp_path / "shard-{000000..000001}.tar"))
    with pytest.raises(UsageError, match="no shard-"):
        open_shards(str(tmp_path))
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "format": "smalldepthmask/v0"}))
    with pytest.raises(UsageError, match="incompatible shard format"):
        open_shards(str(bad))
    (bad / "manifest.json").write_text(json.dumps({**manifest, "components": ["jpg", "json"]}))
    with pytest.raises(UsageError, match="lack required component.*mask.png"):
        open_shards(str(bad))
    (bad / "manifest.json").unlink()
    with pytest.raises(UsageError, match="no manifest.json"):
        open_shards(str(bad))


def test_missing_component_in_a_sample(tmp_path):
    d = tmp_path / "nodepth"
    assert gen.main(["--shards", str(d), "--shard-size", "16", "--depth", "none", *GEN_ARGS]) == 0
    m = json.loads((d / "manifest.json").read_text())
    m.update(components=m["components"] + ["depth.png"], depth_units="millimetres (uint16 PNG)")
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UsageError, match="has no depth.png"):
        next(iter(ShardDataset(open_shards(str(d)), shuffle=0)))
    # through DataLoader workers the message stays one line
    with pytest.raises(UsageError, match=r"^\S*shard-\d+\.tar: sample \d+ has no depth.png$"):
        next(iter(Batches(ShardDataset(open_shards(str(d)), shuffle=0), 4, workers=1)))
