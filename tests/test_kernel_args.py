"""The compiled composite ops' argument checks: every bad argument gives a one-line message naming the argument
and the value. The CPU ops check everything; the CUDA op checks shapes, dtypes and devices only (it never waits
for the device) and the values are checked on the host first (check_composite_values, composite.device_params,
Bank.to), with the same messages.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DEVICES
from smalldepthmask import _ops
from test_kernel import _bank, _hand_params, _need

_OK, _REASON = _ops.available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"composite extension not available: {_REASON}")


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
