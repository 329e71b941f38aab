"""The per-process pipeline: depth quantized on the device exactly as the CPU codec does, one batch shape
(padding changes no byte), the host copies, --profile, and (on a GPU) no sync in the steady state."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import DEVICES, FakeTeacher, gen_with_fake_teacher

from smalldepthmask.depth.png import depth_to_png16
from smalldepthmask.pipeline import DeviceToHost, pad_rows, quantize_depth_mm
from smalldepthmask.profile import STAGES


def _adversarial_depths() -> np.ndarray:
    """[1, 1, 8, 64] float32: .5 mm ties, values around them, negatives, > 65.535 m, NaN and infinities."""
    ties = (np.arange(32, dtype=np.float32) + np.float32(0.5)) / np.float32(1000.0)
    near = np.nextafter(ties, np.float32(1.0), dtype=np.float32)
    rng = np.random.default_rng(0)
    wide = rng.uniform(-2, 80, 256).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 65.535, 65.5355, 65.536, 1e30, -1e30],
                       dtype=np.float32)
    values = np.concatenate([ties, near, wide, special])
    out = np.resize(values, 8 * 64).astype(np.float32)
    out[: len(values)] = values
    return out.reshape(1, 1, 8, 64)


@pytest.mark.parametrize("device", DEVICES)
def test_device_quantization_equals_the_cpu_codec(device):
    d = _adversarial_depths()
    got = quantize_depth_mm(torch.from_numpy(d).to(device)).cpu()
    assert got.dtype == torch.uint16
    want = depth_to_png16(d[0, 0])
    assert np.array_equal(got[0].numpy(), want)
    bf16 = torch.from_numpy(d).to(torch.bfloat16)  # a low-precision teacher's output: quantized from float32
    assert np.array_equal(quantize_depth_mm(bf16.to(device)).cpu()[0].numpy(),
                          depth_to_png16(bf16.float().numpy()[0, 0]))


def test_pad_rows_repeats_the_last_sample():
    ip, fp = np.arange(15).reshape(3, 5), np.arange(12.0).reshape(3, 4)
    pi, pf = pad_rows(ip, fp, 5)
    assert pi.shape == (5, 5) and pf.shape == (5, 4)
    assert np.array_equal(pi[:3], ip) and (pi[3:] == ip[-1]).all() and (pf[3:] == fp[-1]).all()
    assert pad_rows(ip, fp, None)[0] is ip and pad_rows(ip, fp, 3)[0] is ip


def test_cpu_host_copy_is_the_first_n_rows():
    image = torch.arange(4 * 2 * 2 * 3, dtype=torch.uint8).reshape(4, 2, 2, 3)
    mask = torch.ones(4, 2, 2, dtype=torch.uint8)
    depth = torch.full((4, 2, 2), 7, dtype=torch.uint16)
    host = DeviceToHost(torch.device("cpu"))(image, mask, depth, 3)
    host.wait()
    assert host.image.shape == (3, 2, 2, 3) and np.array_equal(host.image, image[:3].numpy())
    assert host.depth.dtype == np.uint16 and host.depth.shape == (3, 2, 2)
    host.release()


def _shard_digests(out) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


SMALL = ["--k", "10", "--compose-size", "64", "--out-size", "32", "--shard-size", "50", "--limit", "120",
         "--quiet", "--device", "cpu"]


def test_padding_changes_no_byte(tmp_path):
    """Batch 16 pads the last batch of every 50-sample shard (2 -> 16 rows); batch 10 never pads."""
    gen_with_fake_teacher(tmp_path / "padded", [*SMALL, "--batch-size", "16"])
    gen_with_fake_teacher(tmp_path / "exact", [*SMALL, "--batch-size", "10"])
    a, b = _shard_digests(tmp_path / "padded"), _shard_digests(tmp_path / "exact")
    assert len(a) == 3 and a == b


def test_profile_reports_every_stage_and_changes_no_byte(tmp_path, capsys):
    gen_with_fake_teacher(tmp_path / "plain", [*SMALL, "--batch-size", "16"])
    capsys.readouterr()
    gen_with_fake_teacher(tmp_path / "prof", [*SMALL, "--batch-size", "16", "--profile"])
    err = capsys.readouterr().err
    assert _shard_digests(tmp_path / "prof") == _shard_digests(tmp_path / "plain")
    table = err[err.index("profile: "):]
    for stage in STAGES:
        assert f"\n  {stage} " in table
    data = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert data["samples"] == 120 and set(data["stages"]) == set(STAGES)
    assert abs(sum(v["share"] for v in data["stages"].values()) - 1.0) < 0.01
    for stage in ("plan", "composite", "teacher", "encode", "write"):  # these certainly ran
        assert data["stages"][stage]["seconds"] > 0, stage
    assert not (tmp_path / "plain" / "profile.json").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_steady_state_has_no_sync(tmp_path):
    """A few batches through make_batch + encode on CUDA with sync debugging set to error."""
    from smalldepthmask import config
    from smalldepthmask.gen import _encode_batch, make_batch
    from smalldepthmask.generator import Generator, load_inputs
    from smalldepthmask.pipeline import compute_stream, on_stream

    cfg = config.GenConfig(out=str(tmp_path), k=2, compose_size=64, out_size=32, batch_size=16, depth="none")
    inputs, bgs, fgs = load_inputs(cfg, log=lambda m: None)
    gen = Generator(cfg, inputs, bgs, fgs, torch.device("cuda"), FakeTeacher())
    to_host, stream = DeviceToHost(gen.device), compute_stream(gen.device)
    with on_stream(stream):  # warm-up: first-use allocations and the pinned ring
        params, host = make_batch(gen, gen.indices(0, 16), to_host, True)
    _encode_batch(gen, gen.indices(0, 16), params, host)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b0 in (16, 32, 48):
            idx = gen.indices(b0, b0 + 16 if b0 < 48 else b0 + 5)  # the last one is padded
            with on_stream(stream):
                params, host = make_batch(gen, idx, to_host, True)
            samples = _encode_batch(gen, idx, params, host)
            assert len(samples) == len(idx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
