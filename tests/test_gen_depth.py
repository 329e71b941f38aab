"""gen with the depth teacher: depth.png round trip, manifest record, and the missing-weights rules."""

import io
import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from conftest import random_densedepth_weights
from smalldepthmask import gen
from smalldepthmask.config import GenConfig
from smalldepthmask.depth import png16_to_depth
from smalldepthmask.errors import run_cli
from smalldepthmask.generator import build_generator
from test_gen import make_inputs

pytestmark = pytest.mark.usefixtures("private_cache")  # SMALLDEPTHMASK_CACHE in tmp_path

SIZES = ["--k", "1", "--compose-size", "64", "--out-size", "32", "--shard-size", "5", "--quiet"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_densedepth_weights(tmp_path_factory.mktemp("w") / "random.safetensors")


def test_depth_png_round_trip(tmp_path, weights):
    fg, bg = make_inputs(tmp_path / "in", n_fg=2, n_bg=2)
    out = tmp_path / "out"
    # on the CPU, as the reference batch below: a GPU's depth differs from the CPU's by more than the 0.5 mm of
    # the millimetre rounding (TF32/bf16 and other conv algorithms); the CUDA path is checked against its own
    # CPU-exact quantization in test_pipeline.py
    flags = ["--depth-weights", str(weights), "--depth-runner", "torch", "--depth-precision", "fp32", "--device", "cpu"]
    assert gen.main(["--shards", str(out), "--fg", str(fg), "--bg", str(bg), *SIZES, *flags]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    teacher = manifest["identity"]["teacher"]
    assert teacher["teacher"] == "densedepth" and teacher["precision"] == "fp32" and teacher["weights_sha256"]
    assert "depth.png" in manifest["components"] and "millimetres" in manifest["depth_units"]
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob("shard-*.tar")), shardshuffle=False))
    assert len(samples) == 8
    # the written depth equals the teacher's depth of the composite, to the millimetre
    cfg = GenConfig(out=str(out), fg=str(fg), bg=str(bg), k=1, compose_size=64, out_size=32,
                    depth_weights=str(weights), depth_runner="torch", depth_precision="fp32")
    g = build_generator(cfg, "cpu")
    keys = [s["__key__"] for s in samples]
    batch = g.batch(np.array([int(k) for k in keys]))
    for s, want in zip(samples, batch.depth[:, 0].numpy()):
        png = Image.open(io.BytesIO(s["depth.png"]))
        assert png.mode.startswith("I") and png.size == (32, 32)
        got = png16_to_depth(np.asarray(png).astype(np.uint16))
        assert np.abs(got - want).max() <= 0.0005 + 1e-6
        assert json.loads(s["json"])["teacher"] == "densedepth"


def test_compose_size_must_suit_the_teacher(tmp_path, weights, capsys):
    fg, bg = make_inputs(tmp_path / "in")
    rc = run_cli(gen.main, ["--shards", str(tmp_path / "o"), "--fg", str(fg), "--bg", str(bg), "--k", "1",
                            "--compose-size", "80", "--out-size", "40", "--depth-weights", str(weights)])
    err = capsys.readouterr().err
    assert rc == 2 and "--compose-size 80" in err and "32" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_own_inputs_without_weights_exit_2(tmp_path, capsys):
    fg, bg = make_inputs(tmp_path / "in")
    rc = run_cli(gen.main, ["--shards", str(tmp_path / "o"), "--fg", str(fg), "--bg", str(bg), *SIZES])
    err = capsys.readouterr().err
    assert rc == 2 and "--depth none" in err and "weights fetch" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_demo_without_weights_goes_on_without_depth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli(gen.main, ["--shards", str(out), "--limit", "4", *SIZES]) == 0
    err = capsys.readouterr().err
    assert "no DenseDepth weights" in err and "weights fetch" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert "depth.png" not in manifest["components"] and manifest["identity"]["teacher"] is None
