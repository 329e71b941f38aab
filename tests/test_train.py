"""`smalldepthmask train` and `predict`: overfitting, exact resume, outputs, and clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import gen_with_fake_teacher
from smalldepthmask import gen
from smalldepthmask.__main__ import main as cli
from smalldepthmask.model import checkpoint

GEN_ARGS = ["--k", "2", "--limit", "48", "--shard-size", "16", "--compose-size", "64", "--out-size", "64", "--quiet"]
SMALL = ["--batch-size", "16", "--width", "0.5", "--size", "32", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """48 samples of the demo's foregrounds over its two plain grayscale backgrounds (the overfitting test's
    thresholds were set on these; the photo backgrounds make the fake teacher's depth far busier)."""
    from smalldepthmask.sources import demo_dirs

    fg, bg = demo_dirs()
    plain = tmp_path_factory.mktemp("train-bg")
    for name in ("brick_wall.jpg", "park_photographer.jpg"):
        (plain / name).write_bytes((bg / name).read_bytes())
    d = tmp_path_factory.mktemp("train-shards")
    gen_with_fake_teacher(d, ["--fg", str(fg), "--bg", str(plain), *GEN_ARGS, "--k", "4"])  # 3 x 2 x 2 x 4 = 48
    return d


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    """Two epochs straight (with augmentation, shuffling, validation and a DataLoader worker)."""
    out = tmp_path_factory.mktemp("run") / "straight"
    args = ["train", "--shards", str(shards), "--out", str(out), "--epochs", "2", *SMALL, "--workers", "1"]
    assert cli(args) == 0
    return out, args


def history(out) -> list[dict]:
    return json.loads((out / "history.json").read_text())


def test_overfits_a_few_dozen_samples(shards, tmp_path):
    out = tmp_path / "overfit"
    assert cli(["train", "--shards", str(shards), "--out", str(out), "--epochs", "15", "--val-fraction", "0",
                "--no-augment", "--seed", "1", *SMALL]) == 0
    h = history(out)
    first, last = h[0]["train_loss"], h[-1]["train_loss"]
    print(f"overfit: train loss {first:.4f} -> {last:.4f}")
    assert last < 0.3 * first
    assert h[-1]["train_depth_loss"] < 0.3 * h[0]["train_depth_loss"]  # both decoders learn
    assert h[-1]["train_mask_loss"] < 0.5 * h[0]["train_mask_loss"]


def test_outputs_and_metrics(trained):
    out, _ = trained
    for name in ("last.pt", "best.pt", "history.json", "curves.png", "samples.png"):
        assert (out / name).is_file(), name
    h = history(out)
    assert [r["epoch"] for r in h] == [1, 2]
    for key in ("train_loss", "val_loss", "iou", "dice", "rmse", "absrel", "delta1", "ssim"):
        assert np.isfinite(h[-1][key]), key
    assert Image.open(out / "samples.png").size[0] > Image.open(out / "samples.png").size[1] / 3


def test_resume_continues_the_same_run(shards, trained, tmp_path):
    straight, args = trained
    out = tmp_path / "resumed"
    args = [a if a != str(straight) else str(out) for a in args]
    assert cli(args + ["--stop-after", "1"]) == 0
    assert checkpoint.load(out / "last.pt")["epoch"] == 1
    assert cli(args + ["--resume"]) == 0
    a, b = checkpoint.load(straight / "last.pt"), checkpoint.load(out / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["train_loss"] for r in history(straight)] == [r["train_loss"] for r in history(out)]


def test_mask_only_shards(tmp_path, capsys):
    d = tmp_path / "nodepth"
    assert gen.main(["--shards", str(d), "--depth", "none", *GEN_ARGS]) == 0
    out = tmp_path / "maskonly"
    assert cli(["train", "--shards", f"{d}/shard-{{000000..000002}}.tar", "--out", str(out), "--epochs", "1",
                *SMALL]) == 0
    assert "training the mask decoder only" in capsys.readouterr().err
    h = history(out)
    assert "train_depth_loss" not in h[0] and "rmse" not in h[0] and "iou" in h[0]
    assert checkpoint.load(out / "last.pt")["has_depth"] is False


def test_stream_training(tmp_path):
    out = tmp_path / "stream"
    assert cli(["train", "--stream", "--k", "2", "--limit", "48", "--compose-size", "64", "--out-size", "64",
                "--depth", "none", "--out", str(out), "--epochs", "1", *SMALL]) == 0
    assert history(out)[0]["samples"] == 36  # 3 of 4 demo backgrounds train


def test_train_errors(shards, trained, tmp_path, capsys):
    out, args = trained
    cases = [
        (["train", "--shards", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")], "no such shard"),
        (["train", "--shards", str(shards), "--out", str(out), *SMALL], "already holds a run"),
        (["train", "--shards", str(shards), "--out", str(tmp_path / "y"), "--resume", *SMALL], "no checkpoint"),
        (args + ["--resume", "--max-lr", "0.05"], "different settings"),
        (["train", "--shards", str(shards), "--out", str(tmp_path / "z"), "--size", "40"], "multiple of 16"),
    ]
    for argv, message in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and sum("error:" in line for line in err) == 1, err
        assert "Traceback" not in "\n".join(err)


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(d / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, (90, 50, 4), dtype=np.uint8), "RGBA").save(d / "tall.png")
    return d


def test_predict_writes_what_it_says(trained, photos, tmp_path, capsys):
    ckpt = trained[0] / "best.pt"
    out = tmp_path / "pred"
    assert cli(["predict", "--checkpoint", str(ckpt), str(photos), "--out", str(out)]) == 0
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 2
    for stem, size in (("wide", (100, 70)), ("tall", (50, 90))):
        mask, depth = Image.open(out / f"{stem}.mask.png"), Image.open(out / f"{stem}.depth.png")
        assert mask.size == depth.size == size and mask.mode == "1" and depth.mode == "I;16"
        mm = np.asarray(depth)
        assert 100 <= mm.min() and mm.max() <= 10_000  # within the teacher's range, in millimetres
        assert Image.open(out / f"{stem}.preview.png").size[1] == 256
        assert any(str(out / f"{stem}.mask.png") in line for line in said)


def test_predict_errors(trained, photos, tmp_path, capsys):
    ckpt = str(trained[0] / "last.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    cases = [
        ([str(photos), "--checkpoint", str(tmp_path / "missing.pt")], "no such checkpoint"),
        ([str(photos), "--checkpoint", str(tmp_path / "junk.pt")], "not a readable checkpoint"),
        ([str(photos), "--checkpoint", str(tmp_path / "foreign.pt")], "not a smalldepthmask checkpoint"),
        ([str(tmp_path / "nope.jpg"), "--checkpoint", ckpt], "no such file or directory"),
        ([str(tmp_path / "broken.jpg"), "--checkpoint", ckpt], "cannot read as an image"),
    ]
    for argv, message in cases:
        assert cli(["predict", *argv, "--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_on_cuda(shards, photos, tmp_path, amp):
    """Mixed precision from shards (worker reads, pinned batches, channels_last) and from the stream made on
    the GPU; then predict on the GPU."""
    out = tmp_path / "cuda-shards"
    assert cli(["train", "--shards", str(shards), "--out", str(out), "--epochs", "3", *SMALL, "--workers", "2",
                "--device", "cuda", "--amp", amp]) == 0
    h = history(out)
    assert np.isfinite(h[-1]["train_loss"]) and h[-1]["train_loss"] < h[0]["train_loss"]
    assert np.isfinite(h[-1]["rmse"])
    out = tmp_path / "cuda-stream"
    assert cli(["train", "--stream", "--k", "2", "--limit", "48", "--compose-size", "64", "--out-size", "64",
                "--depth", "none", "--out", str(out), "--epochs", "1", *SMALL, "--device", "cuda", "--amp", amp]) == 0
    assert cli(["predict", "--checkpoint", str(out / "last.pt"), "--device", "cuda", "--out", str(tmp_path / "p"),
                str(photos)]) == 0
    assert (tmp_path / "p" / "wide.mask.png").is_file()
