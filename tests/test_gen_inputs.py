"""Bad inputs and bad flags: one line per problem, exit code 2, no traceback, nothing written."""

import json
import struct
import subprocess
import sys
import zlib

import pytest
import torch
from PIL import Image

from smalldepthmask import _ops, gen
from smalldepthmask.errors import run_cli
from test_gen import SMALL, make_inputs


def cli(*args):
    return run_cli(gen.main, list(args))


def _zero_byte(d):
    (d / "zero.png").write_bytes(b"")


def _truncated(d):
    src = d / "fg0.png"
    data = src.read_bytes()
    (d / "trunc.png").write_bytes(data[: len(data) // 2])


def _not_an_image(d):
    (d / "notes.png").write_text("hello, not a picture\n")


def _folder(d):
    (d / "folder.png").mkdir()


def _no_alpha(d):
    Image.new("RGB", (40, 40), (200, 10, 10)).save(d / "opaque.png")


def _transparent(d):
    Image.new("RGBA", (40, 40), (200, 10, 10, 0)).save(d / "invisible.png")


def _tiny(d):
    Image.new("RGBA", (4, 4), (200, 10, 10, 255)).save(d / "tiny.png")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(d):
    """A 100-byte PNG whose header claims 9000 x 9000 gray+alpha pixels (81 megapixels): only the header counts."""
    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 4, 0, 0, 0)
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                                 + _png_chunk(b"IDAT", zlib.compress(b"\0")) + _png_chunk(b"IEND", b""))


BAD_FG = {"zero.png": (_zero_byte, "empty"), "trunc.png": (_truncated, "truncated"),
          "notes.png": (_not_an_image, "not"), "folder.png": (_folder, "directory"),
          "opaque.png": (_no_alpha, "alpha"), "invisible.png": (_transparent, "transparent"),
          "tiny.png": (_tiny, "small"), "bomb.png": (_bomb, "bomb")}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    fg, bg = make_inputs(root)
    for make, _ in BAD_FG.values():
        make(fg)
    return fg, bg


def test_every_bad_file_is_listed_and_nothing_written(bad_inputs, tmp_path, capsys):
    fg, bg = bad_inputs
    out = tmp_path / "out"
    assert cli("--shards", str(out), "--fg", str(fg), "--bg", str(bg), *SMALL) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--skip-bad" in err
    lines = err.strip().splitlines()
    for name, (_, word) in BAD_FG.items():
        hits = [ln for ln in lines if name in ln]
        assert len(hits) == 1, (name, err)
        assert word in hits[0].lower(), (name, hits[0])
    assert not out.exists()


def test_skip_bad_goes_on_and_records_skips(bad_inputs, tmp_path, capsys):
    fg, bg = bad_inputs
    out = tmp_path / "out"
    assert cli("--shards", str(out), "--fg", str(fg), "--bg", str(bg), *SMALL, "--skip-bad") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {s["file"].split("/")[-1] for s in manifest["skipped"]}
    assert skipped == set(BAD_FG)
    assert manifest["total"] == 2 * 2 * 3 * 2
    assert "skipping" in capsys.readouterr().err


def test_bad_background_and_empty_dir(tmp_path, capsys):
    fg, bg = make_inputs(tmp_path / "in")
    (bg / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert cli("--shards", str(tmp_path / "o1"), "--fg", str(fg), "--bg", str(bg), *SMALL) == 2
    assert "broken.jpg" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("--shards", str(tmp_path / "o2"), "--fg", str(empty), "--bg", str(bg), *SMALL) == 2
    err = capsys.readouterr().err
    assert "--fg" in err and "no images" in err and len(err.strip().splitlines()) == 1
    assert cli("--shards", str(tmp_path / "o3"), "--fg", str(tmp_path / "nope"), "--bg", str(bg), *SMALL) == 2
    assert "does not exist" in capsys.readouterr().err


def test_small_background_is_upscaled_with_a_warning(tmp_path, capsys):
    fg, bg = make_inputs(tmp_path / "in", n_bg=1)
    assert cli("--shards", str(tmp_path / "o"), "--fg", str(fg), "--bg", str(bg), *SMALL[:-1],
               "--compose-size", "160", "--out-size", "32") == 0
    assert "upscaling" in capsys.readouterr().err


@pytest.mark.parametrize("flags, word", [
    (["--compose-size", "100", "--out-size", "30"], "--out-size"),
    (["--scale", "0.7", "0.3"], "--scale"),
    (["--k", "0"], "--k"),
    (["--mask-threshold", "1.5"], "--mask-threshold"),
    (["--shard-size", "0"], "--shard-size"),
    pytest.param(["--composite-backend", "ext", "--device", "cuda"], "cuda", marks=pytest.mark.skipif(
        torch.cuda.is_available() and "cuda" in _ops.kernels(), reason="this machine runs the CUDA kernel")),
])
def test_bad_flags(tmp_path, capsys, flags, word):
    fg, bg = make_inputs(tmp_path / "in")
    out = tmp_path / "o"
    assert cli("--shards", str(out), "--fg", str(fg), "--bg", str(bg), *SMALL, *flags) == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_ext_backend_runs_on_cuda(tmp_path):
    """Where the CUDA kernel is built and a GPU is present, `--composite-backend ext --device cuda` just works."""
    fg, bg = make_inputs(tmp_path / "in")
    assert "cuda" in _ops.kernels(), _ops.load_status()
    assert cli("--shards", str(tmp_path / "o"), "--fg", str(fg), "--bg", str(bg), *SMALL,
               "--composite-backend", "ext", "--device", "cuda") == 0


def test_fg_without_bg_is_refused(tmp_path, capsys):
    fg, _ = make_inputs(tmp_path / "in")
    assert cli("--shards", str(tmp_path / "o"), "--fg", str(fg), *SMALL) == 2
    assert "--fg/--bg" in capsys.readouterr().err


def test_module_entry_point_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "smalldepthmask.gen", "--shards", str(tmp_path / "o"), "--fg",
                        str(tmp_path / "missing"), "--bg", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "smalldepthmask", "gen", "--shards", str(tmp_path / "o"), "--k", "-1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--k" in r.stderr and "Traceback" not in r.stderr


def test_demo_inputs_are_used_and_announced(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli("--shards", str(out), "--k", "1", "--limit", "5", "--compose-size", "64", "--out-size", "32",
               "--depth", "none", "--quiet") == 0
    assert "demo" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["demo"] is True
    manifest = json.loads((out / "manifest.json").read_text())
    ids = manifest["identity"]["inputs"]
    assert manifest["total"] == 5 and manifest["population"] == 2 * 1 * len(ids["fg"]) * len(ids["bg"])
