"""`smalldepthmask depth IMAGES... --out DIR` and `weights convert` on a random-weights checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import random_densedepth_weights
from smalldepthmask.depth import cli, decode_depth_png
from smalldepthmask.depth.weights import load_state_dict
from smalldepthmask.errors import run_cli

pytestmark = pytest.mark.usefixtures("private_cache")  # SMALLDEPTHMASK_CACHE in tmp_path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return random_densedepth_weights(tmp_path_factory.mktemp("w") / "random.safetensors")


def test_depth_command_writes_png16_and_preview(converted, tmp_path, capsys):
    images = []
    for name, size in (("a.jpg", (100, 70)), ("b.png", (64, 64))):
        path = tmp_path / name
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    out = tmp_path / "out"
    argv = [*images, "--out", str(out), "--weights", str(converted), "--runner", "torch", "--precision", "fp32"]
    assert cli.depth_main([*argv, "--size", "64"]) == 0
    depth = decode_depth_png((out / "a_depth.png").read_bytes())
    assert depth.shape == (70, 100) and 0.1 <= depth.min() and depth.max() <= 10.0
    assert Image.open(out / "a_depth_preview.png").size[1] == 70
    assert (out / "b_depth.png").is_file()
    info = json.loads((out / "depth_teacher.json").read_text())
    assert info["units"] == "metres" and info["weights_sha256"] == "0" * 64


def test_depth_command_bad_image_exit_2(converted, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = run_cli(cli.depth_main, [str(bad), "--out", str(tmp_path / "o"), "--weights", str(converted)])
    err = capsys.readouterr().err
    assert code == 2 and "bad.png: not a readable image" in err and len(err.strip().splitlines()) == 1


def test_depth_command_without_weights_says_how_to_fetch(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(img)
    assert run_cli(cli.depth_main, [str(img), "--out", str(tmp_path / "o")]) == 2
    assert "weights fetch densedepth-nyu" in capsys.readouterr().err


def test_network_size():
    assert cli.network_size(640, 480, 448) == (448, 352)
    assert cli.network_size(10, 10, 448) == (448, 448)
    assert cli.network_size(1000, 20, 448) == (448, 32)


def test_python_m_entry_point(tmp_path):
    env_cache = {"SMALLDEPTHMASK_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "smalldepthmask.depth.cli", "weights", "list"],
        capture_output=True,
        check=False,
        text=True,
        env={**os.environ, **env_cache},
    )
    assert proc.returncode == 0 and "densedepth-kitti" in proc.stdout


def test_converted_file_loads_with_metadata(converted):
    state, info = load_state_dict(converted)
    assert info.sha256 == "0" * 64 and info.convention == "nyu" and "conv3.bias" in state
