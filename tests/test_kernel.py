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


def _good_args(device="cpu"):
    rng = np.random.default_rng(2)
    S, O = 24, 12
    bank = _bank(rng, S, n_bg=2, n_fg=2)
    ip, fp = _hand_params(bank, rng, S, 3)
    bank = bank.to(device)
    return dict(bg_flat=bank.bg_flat, bg_table=bank.bg_table, fg_flat=bank.fg_flat, fg_table=bank.fg_table,
                iparams=ip.to(device), fparams=fp.to(device), compose=S, out=O, mask_count=100, want_compose=True)


def _call(kw, op=None):
    return (op or torch.ops.smalldepthmask.composite)(kw["bg_flat"], kw["bg_table"], kw["fg_flat"], kw["fg_table"],
                                              kw["iparams"], kw["fparams"], kw["compose"], kw["out"],
                                              kw["mask_count"], kw["want_compose"])


def _bad_cases(kw):
    """(name, change, regex the message must match: it names the argument and the bad value)."""
    H = int(kw["bg_table"][1, 1])
    W = int(kw["bg_table"][1, 2])
    nb = kw["bg_flat"].numel()
    nf = kw["fg_flat"].numel()

    def ip(row, col, value, **more):
        t = kw["iparams"].clone()
        t[row, col] = value
        for c, v in more.items():
            t[row, int(c[1:])] = v
        return {"iparams": t}

    def fp(row, col, value):
        t = kw["fparams"].clone()
        t[row, col] = value
        return {"fparams": t}

    def tab(name, row, col, value):
        t = kw[name].clone()
        t[row, col] = value
        return {name: t}

    return [
        ("bg_flat dtype", {"bg_flat": kw["bg_flat"].float()}, r"bg_flat must be Byte, got Float"),
        ("fg_flat dims", {"fg_flat": kw["fg_flat"].view(1, -1)}, r"fg_flat must have 1 dimension.*got 2"),
        ("bg_table shape", {"bg_table": kw["bg_table"][:, :2].contiguous()}, r"bg_table must have shape \[n, 3\]"),
        ("fg_table dtype", {"fg_table": kw["fg_table"].int()}, r"fg_table must be Long, got Int"),
        ("iparams shape", {"iparams": kw["iparams"][:, :4].contiguous()}, r"iparams must have shape \[n, 5\].*4"),
        ("iparams contiguity", {"iparams": kw["iparams"].t().contiguous().t()}, r"iparams must be contiguous"),
        ("fparams dtype", {"fparams": kw["fparams"].float()}, r"fparams must be Double, got Float"),
        ("fparams rows", {"fparams": kw["fparams"][:2].contiguous()}, r"fparams has 2 rows but iparams has 3"),
        ("compose multiple", {"compose": 25}, r"compose = 25 must be a multiple of out = 12"),
        ("out", {"out": 0}, r"out = 0 must be >= 1"),
        ("mask_count", {"mask_count": -3}, r"mask_count = -3 must be >= 0"),
        ("bg id", ip(1, 0, 7), r"iparams\[1, 0\] \(background id\) = 7 is out of range"),
        ("bg id negative", ip(0, 0, -1), r"iparams\[0, 0\] \(background id\) = -1 is out of range"),
        ("fg entry", ip(2, 3, 99), r"iparams\[2, 3\] \(foreground entry\) = 99 is out of range"),
        ("crop_y", ip(0, 1, 10_000), r"iparams\[0, 1\] \(crop_y\) = 10000"),
        ("crop_x", ip(0, 2, W - 23, c0=1, c1=0), rf"iparams\[0, 2\] \(crop_x\) = {W - 23}.*of width {W}"),
        ("crop_x negative", ip(2, 2, -2), r"iparams\[2, 2\] \(crop_x\) = -2"),
        ("fparams nan", fp(1, 2, float("nan")), r"fparams\[1, 2\] \(rx\) = nan"),
        ("fparams huge", fp(0, 0, 1e300), r"fparams\[0, 0\] \(x0\) = 1e\+300"),
        ("bg_table offset", tab("bg_table", 1, 0, nb), rf"bg_table\[1\] = \(offset {nb}, H {H}, W {W}\)"),
        ("fg_table size", tab("fg_table", 0, 1, 10 ** 6), rf"fg_table\[0\] = \(offset 0, H 1000000.*fg_flat has {nf}"),
        ("fg_table zero", tab("fg_table", 1, 2, 0), r"fg_table\[1\] has size \(H, W\) = \(\d+, 0\)"),
    ]


# the cases of _bad_cases that are about values (checked on the host: by the CPU op, or check_composite_values)
VALUE_CASES = {"bg id", "bg id negative", "fg entry", "crop_y", "crop_x", "crop_x negative", "fparams nan",
               "fparams huge", "bg_table offset", "fg_table size", "fg_table zero"}


def _check_values(kw):
    c = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    _ops.check_composite_values(c["bg_table"], c["fg_table"], c["iparams"], c["fparams"], c["bg_flat"].numel(),
                                c["fg_flat"].numel(), c["compose"], True)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_arguments_name_argument_and_value(device):
    """The CPU op checks everything; the CUDA op checks shapes (no device sync) and the values are checked on the
    host by check_composite_values, with the same messages."""
    _need(device)
    kw = _good_args(device)
    _call(kw)  # the good arguments work
    _check_values(kw)
    for name, change, pattern in _bad_cases(kw):
        with pytest.raises(RuntimeError, match=pattern):
            if device == "cpu" or name not in VALUE_CASES:
                _call({**kw, **change})
            else:
                _check_values({**kw, **change})
        if name in VALUE_CASES:
            with pytest.raises(RuntimeError, match=pattern):
                _check_values({**kw, **change})


def test_host_validation_before_upload():
    """Bank.to checks the tables once; device_params checks host params against the bank's host tables and
    uploads them (the meta device stands in for a GPU: the same path, no data)."""
    from smalldepthmask.composite import device_params

    kw = _good_args("cpu")
    rng = np.random.default_rng(2)
    bank = _bank(rng, 24, n_bg=2, n_fg=2)
    meta = bank.to("meta")
    assert torch.equal(meta.host_fg_table, bank.fg_table) and meta.fg_table.device.type == "meta"
    ip, fp = device_params(meta, kw["iparams"], kw["fparams"], kw["compose"])
    assert ip.device.type == "meta" and fp.device.type == "meta" and ip.shape == (3, 5)
    bad_i = kw["iparams"].clone()
    bad_i[1, 0] = 7
    with pytest.raises(RuntimeError, match=r"iparams\[1, 0\] \(background id\) = 7 is out of range"):
        device_params(meta, bad_i, kw["fparams"], kw["compose"])
    bad_f = kw["fparams"].clone()
    bad_f[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match=r"fparams\[0, 0\] \(x0\) = inf"):
        device_params(meta, kw["iparams"], bad_f, kw["compose"])
    broken = type(bank)(bank.bg_flat, bank.bg_table, bank.fg_flat[:-1], bank.fg_table, bank.layout)
    with pytest.raises(RuntimeError, match=r"fg_table\[\d+\] = \(offset .* but fg_flat has"):
        broken.to("meta")
    assert bank.to("cpu").host_bg_table is None  # a CPU bank: the CPU op checks its values itself


@pytest.mark.device_body
def test_device_body_bad_arguments_and_device():
    """The device body checks its arguments as the CUDA op does (the same messages)."""
    kw = _good_args("cpu")
    op = torch.ops.smalldepthmask.composite_device_body
    _call(kw, op)
    for name, change, pattern in _bad_cases(kw):
        with pytest.raises(RuntimeError, match=pattern):
            _call({**kw, **change}, op)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tensors_on_different_devices():
    _need("cuda")
    kw = _good_args("cuda")
    with pytest.raises(RuntimeError, match=r"iparams is on cpu but bg_flat is on cuda:0"):
        _call({**kw, "iparams": kw["iparams"].cpu()})


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
    flags = _ops.build_flags()
    assert flags.get("cuda") == ("cuda" in _ops.kernels())
    out = subprocess.run([sys.executable, "-m", "smalldepthmask.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "extension     loaded: " in out.stdout and "webdataset" in out.stdout
    assert _ops.load_status()["source"] in out.stdout  # where the library came from: in-tree build or cache
