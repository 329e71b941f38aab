"""Dataset tools (stats, split, preview, verify) over a small dataset made once per session by the real gen."""

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from smalldepthmask import gen, sink
from smalldepthmask.__main__ import main as cli
from smalldepthmask.errors import UsageError
from smalldepthmask.tools import preview, split

GEN = ["--k", "2", "--limit", "60", "--shard-size", "20", "--compose-size", "64", "--out-size", "32",
       "--depth", "none", "--quiet"]


def read_all(out: Path) -> list[dict]:
    urls = [str(out / n) for n in sorted(json.loads((out / "manifest.json").read_text())["units"])]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def add_depth(src: Path, dst: Path) -> None:
    """Copy the dataset in `src` to `dst` with a synthetic depth.png (uint16 mm, ~10 % zeros) in every sample."""
    rng = np.random.default_rng(7)
    manifest = json.loads((src / "manifest.json").read_text())
    dst.mkdir()
    for unit, name in enumerate(sorted(manifest["units"])):
        writer = sink.ShardWriter(dst, unit)
        for s in wds.WebDataset([str(src / name)], shardshuffle=False, empty_check=False):
            mm = rng.integers(500, 9000, (32, 32)).astype(np.uint16)  # [32, 32] millimetres
            mm[rng.random((32, 32)) < 0.1] = 0
            buf = io.BytesIO()
            Image.fromarray(mm).save(buf, format="PNG")
            writer.add({"__key__": s["__key__"], "jpg": s["jpg"], "mask.png": s["mask.png"], "json": s["json"],
                        "depth.png": buf.getvalue()})
        info = writer.commit()
        manifest["units"][name] = info | {"bytes": (dst / name).stat().st_size}
    manifest["components"] = manifest["components"] + ["depth.png"]
    sink.write_json_atomic(dst / "manifest.json", manifest)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tools") / "demo"
    assert gen.main(["--shards", str(out), *GEN]) == 0
    return out


@pytest.fixture(scope="session")
def depth_dataset(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tools") / "depth"
    add_depth(dataset, out)
    return out


@pytest.fixture
def copy(tmp_path):
    def make(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / src.name))
    return make


def one_error_line(capsys, cmd: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"smalldepthmask {cmd}: error: ") and "Traceback" not in err
    return lines[0]


# ---- stats --------------------------------------------------------------------------------------------------


def test_stats_match_numpy(depth_dataset, capsys):
    assert cli(["stats", str(depth_dataset), "--quiet"]) == 0
    stats = json.loads((depth_dataset / "stats.json").read_text())
    samples = read_all(depth_dataset)
    images = np.stack([np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB")) for s in samples])  # [N,H,W,3]
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(stats["image"]["mean"], pixels.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats["image"]["std"], pixels.std(axis=0), rtol=0, atol=1e-9)
    masks = np.stack([np.asarray(Image.open(io.BytesIO(s["mask.png"])).convert("L")) > 127 for s in samples])
    assert stats["mask"]["pixel_fraction"] == pytest.approx(masks.mean(), abs=1e-12)
    assert sum(stats["mask"]["histogram"]["counts"]) == len(samples)
    mm = np.stack([np.asarray(Image.open(io.BytesIO(s["depth.png"]))) for s in samples]).astype(np.float64)
    metres = mm[mm > 0] / 1000.0
    assert stats["depth"]["mean"] == pytest.approx(metres.mean(), abs=1e-9)
    assert stats["depth"]["std"] == pytest.approx(metres.std(), abs=1e-9)
    assert stats["depth"]["no_data_fraction"] == pytest.approx((mm == 0).mean(), abs=1e-12)
    assert sum(stats["depth"]["histogram"]["counts"]) == metres.size
    recs = [json.loads(s["json"]) for s in samples]
    place = stats["placement"]
    assert place["flip"]["flipped"] == sum(r["flip"] for r in recs)
    assert place["scale"]["mean"] == pytest.approx(np.mean([r["scale"] for r in recs]), abs=1e-12)
    by_bg = {g["file"]: g["count"] for g in place["backgrounds"]}
    assert by_bg == {f: sum(r["bg"]["file"] == f for r in recs) for f in {r["bg"]["file"] for r in recs}}
    assert sum(g["count"] for g in place["foregrounds"]) == len(samples) == stats["size"]["samples"]
    assert (depth_dataset / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{pixels.mean(axis=0)[0]:.6f}" in capsys.readouterr().out


def test_stats_without_depth(dataset, tmp_path):
    assert cli(["stats", str(dataset), "--quiet", "--json", str(tmp_path / "s.json"),
                "--figure", str(tmp_path / "s.png")]) == 0
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["depth"]["present"] is False and "mean" not in stats["depth"]
    assert Image.open(tmp_path / "s.png").size == (2000, 950)


# ---- split --------------------------------------------------------------------------------------------------


def groups_of(dataset: Path, keys: set[str], axis: str) -> set[int]:
    recs = {s["__key__"]: json.loads(s["json"]) for s in read_all(dataset)}
    return {recs[k][axis]["id"] for k in keys}


def all_keys(dataset: Path) -> set[str]:
    return {s["__key__"] for s in read_all(dataset)}


def test_split_by_background_shares_no_background(dataset, tmp_path, capsys):
    assert cli(["split", str(dataset), "--test", "0.3", "-o", str(tmp_path), "--quiet"]) == 0
    train, test = split.load_split(tmp_path)
    assert train and test and not train & test and train | test == all_keys(dataset)
    assert not groups_of(dataset, train, "bg") & groups_of(dataset, test, "bg")
    info = json.loads((tmp_path / "split.json").read_text())
    assert info["by"] == "bg" and info["counts"]["dropped"] == 0
    assert info["test_fraction"] == len(test) / (len(train) + len(test))
    assert "test fraction" in capsys.readouterr().out
    # the helper for training: a webdataset predicate
    keep = pickle.loads(pickle.dumps(split.select(tmp_path, "test")))  # DataLoader workers may be spawned
    urls = split.shard_urls(dataset)
    assert {s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).select(keep)} == test


def test_split_by_bg_and_fg_drops_mixed(dataset, tmp_path):
    assert cli(["split", str(dataset), "--by", "bg+fg", "-o", str(tmp_path), "--quiet"]) == 0
    train, test = split.load_split(tmp_path)
    for axis in ("bg", "fg"):
        assert not groups_of(dataset, train, axis) & groups_of(dataset, test, axis)
    info = json.loads((tmp_path / "split.json").read_text())
    assert info["counts"]["dropped"] == len(all_keys(dataset)) - len(train) - len(test) > 0


def test_split_by_sample(dataset, tmp_path):
    assert cli(["split", str(dataset), "--by", "sample", "--test", "0.25", "-o", str(tmp_path), "--quiet"]) == 0
    train, test = split.load_split(tmp_path)
    assert len(test) == round(0.25 * len(all_keys(dataset))) and train | test == all_keys(dataset)


def test_split_is_reproducible(dataset, tmp_path):
    def run(seed: int, name: str) -> list[bytes]:
        assert cli(["split", str(dataset), "--seed", str(seed), "-o", str(tmp_path / name), "--quiet"]) == 0
        return [(tmp_path / name / f).read_bytes() for f in ("split.json", "train.txt", "test.txt")]
    assert run(3, "a") == run(3, "b")
    assert len({tuple(run(s, f"s{s}")) for s in range(6)}) > 1  # the seed matters


def test_split_groups_close_to_fraction():
    ids = np.repeat(np.arange(5), [30, 10, 25, 20, 15])  # [100] unequal groups
    for seed in range(5):
        test = split.choose_test_groups(ids, 0.3, seed, "bg")
        assert sum(np.isin(ids, list(test))) == 30 and 0 < len(test) < 5


def test_split_needs_two_groups():
    one_bg = split.Membership(np.arange(10), np.zeros(10, np.int64), np.arange(10) % 2)
    with pytest.raises(UsageError, match="at least 2"):
        split.assign(one_bg, "bg", 0.3, 0)
    is_test, is_train, _ = split.assign(one_bg, "sample", 0.3, 0)
    assert is_test.sum() == 3 and is_train.sum() == 7


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_split_refuses_bad_fraction(dataset, capsys, value):
    assert cli(["split", str(dataset), "--test", value, "--quiet"]) == 2
    assert "--test" in one_error_line(capsys, "split")


def test_load_split_refuses_another_dataset(dataset, copy):
    out = copy(dataset)
    assert cli(["split", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["identity"]["config"]["seed"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="another dataset"):
        split.load_split(out)


# ---- preview ------------------------------------------------------------------------------------------------


def test_preview_sheet(depth_dataset, tmp_path):
    out = tmp_path / "sheet.png"
    assert cli(["preview", str(depth_dataset), "--n", "16", "-o", str(out), "--quiet"]) == 0
    assert Image.open(out).size == preview.sheet_size(16, None, 3)


def test_preview_without_depth_and_reproducible(dataset, tmp_path):
    assert cli(["preview", str(dataset), "--n", "5", "--cols", "2", "-o", str(tmp_path / "a.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "a.png").size == preview.sheet_size(5, 2, 2)
    ds = preview.open_dataset(dataset)
    n = ds.listed_samples()
    pick = preview.pick_positions(n, 5, 0)
    assert pick == preview.pick_positions(n, 5, 0) != preview.pick_positions(n, 5, 1)
    keys = [t.key for t in preview.read_tiles(ds, pick, quiet=True)]
    assert keys == [t.key for t in preview.read_tiles(ds, pick, quiet=True)] and len(set(keys)) == 5


# ---- verify -------------------------------------------------------------------------------------------------


def verify_lines(capsys, out: Path, code: int) -> list[str]:
    assert cli(["verify", str(out), "--quiet"]) == code
    return capsys.readouterr().out.splitlines()


def test_verify_ok(depth_dataset, dataset, capsys):
    for ds in (dataset, depth_dataset):
        lines = verify_lines(capsys, ds, 0)
        assert len(lines) == 1 and lines[0].startswith("OK: 48 samples in 3 shards")


def test_verify_finds_truncated_shard(dataset, copy, capsys):
    out = copy(dataset)
    path = out / "shard-000001.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    lines = verify_lines(capsys, out, 1)
    assert any(ln.startswith("shard-000001.tar: truncated") for ln in lines), lines
    assert any(ln.startswith("shard-000001.tar: sha256 mismatch") for ln in lines)
    assert all(ln.startswith("shard-000001.tar: ") for ln in lines)


def test_verify_finds_flipped_byte(dataset, copy, capsys):
    out = copy(dataset)
    path = out / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))
    assert "shard-000000.tar: sha256 mismatch (the file changed since it was written)" in verify_lines(capsys, out, 1)


def test_verify_finds_missing_extra_and_incomplete(dataset, copy, capsys):
    out = copy(dataset)
    (out / "shard-000002.tar").rename(out / "shard-000007.tar")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    lines = verify_lines(capsys, out, 1)
    assert "shard-000002.tar: missing (listed in manifest.json)" in lines
    assert any(ln.startswith("shard-000007.tar: not listed") for ln in lines)
    assert any(ln.startswith("manifest.json: incomplete run") for ln in lines)


def test_verify_finds_missing_component(dataset, copy, capsys):
    out = copy(dataset)
    samples = read_all(out)[:20]
    writer = sink.ShardWriter(out, 0)
    for s in samples:
        writer.add({k: v for k, v in s.items() if k not in ("__url__", "__local_path__")
                    and not (s["__key__"] == samples[3]["__key__"] and k == "mask.png")})
    info = writer.commit()  # the manifest is updated: only the sample is wrong
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["units"]["shard-000000.tar"] = info | {"bytes": (out / "shard-000000.tar").stat().st_size}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify_lines(capsys, out, 1) == [f"shard-000000.tar: sample {samples[3]['__key__']}: missing mask.png"]


def test_tools_on_folder_layout(tmp_path, capsys):
    out = tmp_path / "folders"
    assert gen.main(["--folders", str(out), *GEN]) == 0
    assert verify_lines(capsys, out, 0)[0].startswith("OK: 48 samples in 3 chunks")
    assert cli(["stats", str(out), "--quiet", "--no-figure"]) == 0
    next(out.glob("masks/*.png")).write_bytes(b"not a png")
    assert any("mask.png does not decode" in ln for ln in verify_lines(capsys, out, 1))


# ---- bad input: one line, exit 2 ----------------------------------------------------------------------------

TOOLS = ["stats", "split", "preview", "verify"]


@pytest.mark.parametrize("cmd", TOOLS)
def test_missing_directory(cmd, tmp_path, capsys):
    assert cli([cmd, str(tmp_path / "nope"), "--quiet"]) == 2
    assert "no such directory" in one_error_line(capsys, cmd)


@pytest.mark.parametrize("cmd", TOOLS)
def test_not_a_dataset(cmd, tmp_path, capsys):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    assert cli([cmd, str(tmp_path), "--quiet"]) == 2
    assert "not a smalldepthmask dataset" in one_error_line(capsys, cmd)
    (tmp_path / "manifest.json").write_text("{not json")
    assert cli([cmd, str(tmp_path), "--quiet"]) == 2
    assert "not a smalldepthmask manifest" in one_error_line(capsys, cmd)


@pytest.mark.parametrize("cmd", ["stats", "split", "preview"])
def test_truncated_shard_is_bad_input(cmd, dataset, copy, capsys):
    out = copy(dataset)
    path = out / "shard-000001.tar"
    path.write_bytes(path.read_bytes()[:5000])
    assert cli([cmd, str(out), "--quiet"] + (["--n", "48"] if cmd == "preview" else [])) == 2
    line = one_error_line(capsys, cmd)
    assert "shard-000001.tar" in line and "smalldepthmask verify" in line
