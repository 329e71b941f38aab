"""The compiled composite op (csrc/) against the plain-torch reference, on every device present.

Correct means bit-identical (torch.equal) image, mask and compose, for random plans (many seeds, odd sizes,
flips) and hand-made parameters (box wholly or partly outside the frame, tiny and huge scales, soft and hard
alpha, extreme aspect ratios, unaligned foreground buffers). The reference runs on the CPU; the kernel on each
device. The `device_body` tests run the CUDA kernel's body (csrc/composite_pixel.h), walked on the host as the
GPU grid runs it, on the same cases; on a GPU the CUDA kernel must equal that walk bit for bit.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import DEVICES, soft_disc
from smalldepthmask import _ops
from smalldepthmask.bank import build_bank
from smalldepthmask.composite import (axis_taps, composite, composite_reference, mask_threshold_count,
                                      resolve_backend)
from smalldepthmask.plan import sample_params

_OK, _REASON = _ops.available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"composite extension not available: {_REASON}")


def _need(device: str) -> None:
    ok, why = _ops.supports_device(torch.device(device))
    if not ok:
        pytest.skip(f"extension cannot run on {device}: {why}")


def _noise_fg(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Random colours with random alpha, including exact 0 and 255 runs."""
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[: h // 3, :, 3] = 255
    rgba[h // 3: h // 2, :, 3] = 0
    return rgba


def _bank(rng: np.random.Generator, S: int, scale=(0.3, 0.6), n_bg=2, n_fg=4):
    bgs = [rng.integers(0, 256, (S + int(rng.integers(0, 2 * S)) | 1, S + int(rng.integers(0, 9)), 3),
                        dtype=np.uint8) for _ in range(n_bg)]
    shapes = [(int(rng.integers(5, 3 * S)) | 1, int(rng.integers(5, 3 * S)) | 1) for _ in range(n_fg)]
    shapes[-1] = (max(3, S // 9), 3 * S + 1)  # extreme aspect
    fgs = []
    for i, (h, w) in enumerate(shapes):
        kind = i % 3
        fgs.append(soft_disc(h, w, rng) if kind == 0 else soft_disc(h, w, rng, hard=True) if kind == 1
                   else _noise_fg(h, w, rng))
    with warnings.catch_warnings():  # tiny random backgrounds: "smaller than the compose size: upscaling"
        warnings.simplefilter("ignore")
        return build_bank(bgs, fgs, S, scale)


def _run_ext(bank, ip, fp, S, O, threshold, want, device, op=None):
    """The compiled op (default: composite; or composite_device_body) on `device`, outputs as the op gives them."""
    dev = torch.device(device)
    b = bank.to(dev)
    return (op or _ops.composite)(b.bg_flat, b.bg_table, b.fg_flat, b.fg_table, ip.to(dev), fp.to(dev), S, O,
                                  mask_threshold_count(threshold, S // O), want)


def _assert_equal(got, want, label):
    """torch.equal on (image, mask, compose), naming the first differing output, where, and by how much."""
    for name, g, w in zip(("image", "mask", "compose"), got, want):
        g = g.cpu()
        assert g.shape == w.shape and g.dtype == w.dtype, f"{label}: {name} is {g.dtype}{list(g.shape)}"
        if not torch.equal(g, w):
            bad = (g != w).nonzero()
            diff = (g.double() - w.double()).abs().max().item()
            raise AssertionError(f"{label}: {name} differs at {len(bad)} places, first {bad[:3].tolist()}, "
                                 f"by up to {diff}")


def _compare(bank, ip, fp, S, O, device, threshold=0.5, label="", op=None):
    """The op on `device` equals composite_reference bit for bit (image, mask, compose); without the compose
    output it gives the same image and mask and an empty compose."""
    ref = composite_reference(bank, ip, fp, S, O, threshold, True)
    got = _run_ext(bank, ip, fp, S, O, threshold, True, device, op)
    _assert_equal(got, (ref.image, ref.mask, ref.compose), label)
    assert got[1].max().item() <= 1
    image2, mask2, comp2 = _run_ext(bank, ip, fp, S, O, threshold, False, device, op)
    assert comp2.shape == (0, 3, S, S)
    assert torch.equal(image2.cpu(), ref.image) and torch.equal(mask2.cpu(), ref.mask)
    return ref


def _hand_params(bank, rng, S, B):
    """iparams/fparams built directly: boxes wholly or partly outside, tiny and huge, flips, rx up to 1.99."""
    tab = bank.fg_table
    rows_i, rows_f = [], []
    for b in range(B):
        bg = int(rng.integers(0, bank.bg_table.shape[0]))
        _, H, W = (int(v) for v in bank.bg_table[bg])
        kind = b % 6
        # tiny boxes use the smallest bank entry (as the plan's pyramid level would), others any entry
        e = int((tab[:, 1] * tab[:, 2]).argmin()) if kind == 0 else int(rng.integers(0, tab.shape[0]))
        _, h, w = (int(v) for v in tab[e])
        if kind == 0:  # tiny: scale 0.001 of the frame
            bw = bh = S * math.sqrt(0.001)
        elif kind == 1:  # huge: 4x the frame area
            bw = bh = 2.0 * S
        else:
            bw, bh = float(rng.uniform(0.2, 1.5) * S), float(rng.uniform(0.2, 1.5) * S)
        rx, ry = min(w / bw, 1.99), min(h / bh, 1.99)
        bw, bh = w / rx, h / ry
        if kind == 2:  # wholly outside (left/top or right/bottom)
            x0 = -bw - float(rng.uniform(0, 5)) if b % 2 else S + float(rng.uniform(0, 5))
            y0 = float(rng.uniform(-bh, S))
        elif kind == 3:  # partly outside on two sides
            x0, y0 = -bw / 2 + float(rng.uniform(-3, 3)), S - bh / 2 + float(rng.uniform(-3, 3))
        else:
            x0, y0 = float(rng.uniform(-bw / 2, S - bw / 2)), float(rng.uniform(-bh / 2, S - bh / 2))
        rows_i.append([bg, int(rng.integers(0, H - S + 1)), int(rng.integers(0, W - S + 1)), e, b % 2])
        rows_f.append([x0, y0, rx, ry])
    return torch.tensor(rows_i, dtype=torch.int64), torch.tensor(rows_f, dtype=torch.float64)


# (compose, out): odd sizes, f = 1, 2, 3, 4, and f > 32 (the CUDA kernel's per-pixel tap path)
SIZES = [(48, 24), (37, 37), (45, 15), (64, 16), (70, 2)]


def _case_random(seed):
    """Random plans: many seeds, odd sizes, flips, tiny to large scales, several thresholds."""
    rng = np.random.default_rng(100 + seed)
    S, O = SIZES[seed % len(SIZES)]
    scale = (0.001, 0.9) if seed % 2 else (0.3, 0.6)
    bank = _bank(rng, S, scale)
    idx = rng.permutation(2 * 4 * 2 * 5)[:24]
    p = sample_params(idx, bank.layout, 5, seed, S, scale)
    ip, fp = (torch.from_numpy(a) for a in p.kernel_args(bank.layout))
    return bank, ip, fp, S, O, [0.5, 0.01, 0.99, 0.0][seed % 4]


def _case_edge(seed):
    """Hand-made parameters: boxes wholly or partly outside, tiny and huge, flips."""
    rng = np.random.default_rng(200 + seed)
    S, O = SIZES[seed % len(SIZES)]
    bank = _bank(rng, S)
    ip, fp = _hand_params(bank, rng, S, 18)
    return bank, ip, fp, S, O, 0.5


def _case_beyond():
    """Ratios the plan never makes (rx >= 2, negative, zero): the 4-tap math is still defined and matched."""
    rng = np.random.default_rng(7)
    S, O = 40, 20
    bank = _bank(rng, S)
    ip, fp = _hand_params(bank, rng, S, 12)
    fp[:, 2] = torch.tensor([2.0, 2.5, 3.7, 6.0, -1.0, 0.0, 1e-9, 1.0, 0.5, 1.5, 1.25, 1.75], dtype=torch.float64)
    fp[:, 3] = fp[:, 2].flip(0).abs()
    return bank, ip, fp, S, O, 0.5


def _case_448():
    rng = np.random.default_rng(3)
    S, O = 448, 224
    bgs = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), rng.integers(0, 256, (700, 449, 3), dtype=np.uint8)]
    fgs = [soft_disc(301, 203, rng), soft_disc(120, 90, rng, hard=True), _noise_fg(600, 517, rng)]
    bank = build_bank(bgs, fgs, S, (0.3, 0.6))
    p = sample_params(np.array([0, 5, 13, 22]), bank.layout, 2, 11, S, (0.3, 0.6))
    ip, fp = (torch.from_numpy(a) for a in p.kernel_args(bank.layout))
    return bank, ip, fp, S, O, 0.5


def _unaligned_banks():
    """(bank, the same bank with its foreground buffer shifted by 1 byte, iparams, fparams, compose, out): the
    shifted entries do not start on 4-byte boundaries (the CUDA kernel's byte-load path)."""
    rng = np.random.default_rng(5)
    S, O = 32, 16
    bank = _bank(rng, S)
    ip, fp = _hand_params(bank, rng, S, 8)
    shifted = type(bank)(bank.bg_flat, bank.bg_table, torch.cat([torch.zeros(1, dtype=torch.uint8), bank.fg_flat]),
                         bank.fg_table + torch.tensor([1, 0, 0]), bank.layout)
    return bank, shifted, ip, fp, S, O


def _case_unaligned():
    _, shifted, ip, fp, S, O = _unaligned_banks()
    return shifted, ip, fp, S, O, 0.5


# every composite case of this file, by id: a builder of (bank, iparams, fparams, compose, out, threshold)
CASES = {**{f"random-{s}": (lambda s=s: _case_random(s)) for s in range(8)},
         **{f"edge-{s}": (lambda s=s: _case_edge(s)) for s in range(6)},
         "beyond-plan": _case_beyond, "448to224": _case_448, "unaligned-fg": _case_unaligned}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference(device, case):
    _need(device)
    bank, ip, fp, S, O, threshold = CASES[case]()
    _compare(bank, ip, fp, S, O, device, threshold, f"{case} S {S} O {O}")


@pytest.mark.device_body
@pytest.mark.parametrize("case", list(CASES))
def test_device_body_matches_reference(case):
    """The CUDA kernel's body, walked on the host as the GPU grid runs it, equals the reference bit for bit."""
    bank, ip, fp, S, O, threshold = CASES[case]()
    _compare(bank, ip, fp, S, O, "cpu", threshold, f"device body {case} S {S} O {O}", _ops.composite_device_body)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_kernel_equals_device_body(case):
    """On a GPU: the CUDA kernel's outputs equal the device body's (same functions, host walk) bit for bit."""
    _need("cuda")
    bank, ip, fp, S, O, threshold = CASES[case]()
    want = _run_ext(bank, ip, fp, S, O, threshold, True, "cpu", _ops.composite_device_body)
    got = _run_ext(bank, ip, fp, S, O, threshold, True, "cuda")
    _assert_equal(got, want, f"cuda vs device body {case}")


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_unaligned_foreground_buffer(device):
    """The byte-load path gives what the 32-bit-load path gives."""
    _need(device)
    bank, shifted, ip, fp, S, O = _unaligned_banks()
    a = _run_ext(bank, ip, fp, S, O, 0.5, True, device)
    b = _run_ext(shifted, ip, fp, S, O, 0.5, True, device)
    for x, y in zip(a, b):
        assert torch.equal(x.cpu(), y.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_axis_taps_match_reference(device):
    _need(device)
    rng = np.random.default_rng(11)
    n, B = 96, 64
    pos0 = torch.from_numpy(np.concatenate([rng.uniform(-60, 120, B // 2),
                                            np.round(rng.uniform(-20, 60, B // 2) * 4) / 4]))  # exact ties
    ratio = torch.from_numpy(np.concatenate([rng.uniform(0.01, 1.99, B // 2),
                                             rng.choice([0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 3.0], B // 2)]))
    size = torch.from_numpy(rng.integers(1, 200, B)).to(torch.int64)
    flip = torch.from_numpy(rng.integers(0, 2, B).astype(bool))
    want_i, want_w = axis_taps(pos0, ratio, size, flip, n)
    dev = torch.device(device)
    got_i, got_w = _ops.axis_taps(pos0.to(dev), ratio.to(dev), size.to(dev), flip.to(dev), n)
    assert torch.equal(got_i.cpu(), want_i)
    assert torch.equal(got_w.cpu(), want_w)
    assert (got_w.sum(-1) == 1024).all()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    _need(device)
    rng = np.random.default_rng(0)
    bank = _bank(rng, 20).to(device)
    ip = torch.zeros(0, 5, dtype=torch.int64, device=device)
    fp = torch.zeros(0, 4, dtype=torch.float64, device=device)
    for op in [_ops.composite] + ([_ops.composite_device_body] if device == "cpu" else []):
        image, mask, comp = op(bank.bg_flat, bank.bg_table, bank.fg_flat, bank.fg_table, ip, fp, 20, 10, 5, True)
        assert image.shape == (0, 10, 10, 3) and mask.shape == (0, 10, 10) and comp.shape == (0, 3, 20, 20)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    _need(device)
    rng = np.random.default_rng(1)
    S, O = 24, 12
    bank = _bank(rng, S).to(device)
    ip, fp = _hand_params(bank.to("cpu"), rng, S, 5)
    for want in (True, False):
        args = (bank.bg_flat, bank.bg_table, bank.fg_flat, bank.fg_table, ip.to(device), fp.to(device), S, O,
                mask_threshold_count(0.5, S // O), want)
        torch.library.opcheck(torch.ops.smalldepthmask.composite.default, args)
        if device == "cpu":
            torch.library.opcheck(torch.ops.smalldepthmask.composite_device_body.default, args)
    size = torch.tensor([5, 9], device=device)
    torch.library.opcheck(torch.ops.smalldepthmask.axis_taps.default,
                          (torch.tensor([0.5, -3.0], dtype=torch.float64, device=device),
                           torch.tensor([1.5, 0.7], dtype=torch.float64, device=device), size,
                           torch.tensor([False, True], device=device), 7))


def test_backend_auto_prefers_the_extension():
    assert resolve_backend("auto", "cpu") == "ext"
    assert resolve_backend("ext", "cpu") == "ext"
    rng = np.random.default_rng(4)
    bank = _bank(rng, 24)
    ip, fp = _hand_params(bank, rng, 24, 4)
    a = composite(bank, ip, fp, 24, 12, 0.5, True, backend="ext")
    b = composite(bank, ip, fp, 24, 12, 0.5, True, backend="reference")
    assert torch.equal(a.mask, b.mask) and torch.equal(a.image, b.image) and torch.equal(a.compose, b.compose)
    assert composite(bank, ip, fp, 24, 12, 0.5, False, backend="ext").compose is None


def test_supports_device_and_info():
    ok, why = _ops.supports_device(torch.device("cpu"))
    assert ok, why
    ok, why = _ops.supports_device(torch.device("cuda"))
    if "cuda" not in _ops.kernels():
        assert not ok and why == "built without CUDA"
    elif not torch.cuda.is_available():
        assert not ok
    assert _ops.diagnostic_ops() == ["composite_device_body", "check_composite_values"]
    flags = _ops.build_flags()
    assert flags.get("cuda") == ("cuda" in _ops.kernels())
    out = subprocess.run([sys.executable, "-m", "smalldepthmask.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "extension     loaded: " in out.stdout and "webdataset" in out.stdout
    assert _ops.load_status()["source"] in out.stdout  # where the library came from: in-tree build or cache
