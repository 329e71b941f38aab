"""The plain-torch reference composite against a slow, obvious per-pixel float implementation."""

import numpy as np
import pytest
import torch

from conftest import DEVICES, soft_disc
from smalldepthmask.bank import build_bank
from smalldepthmask.composite import axis_taps, composite_reference
from smalldepthmask.plan import sample_params

S, O = 40, 20


def slow_composite(bg_crop, fg, x0, y0, rx, ry, flip, threshold):
    """Per pixel: triangle filter of support max(r, 1) over the whole premultiplied source, float64.

    bg_crop: [S, S, 3] uint8, fg: [h, w, 4] uint8 premultiplied. Returns (compose [S, S, 3] in 0..255,
    image [O, O, 3] uint8, block-mean alpha [O, O] in 0..1, mask [O, O] bool)."""
    h, w = fg.shape[:2]
    src = fg.astype(np.float64)
    sx, sy = max(rx, 1.0), max(ry, 1.0)
    comp = np.zeros((S, S, 3))
    alpha = np.zeros((S, S))
    for py in range(S):
        v = (py + 0.5 - y0) * ry
        wy = np.array([max(0.0, 1 - abs(i + 0.5 - v) / sy) for i in range(-4, h + 4)])
        for px in range(S):
            u = (px + 0.5 - x0) * rx
            if flip:
                u = w - u
            wx = np.array([max(0.0, 1 - abs(i + 0.5 - u) / sx) for i in range(-4, w + 4)])
            total = wy.sum() * wx.sum()
            acc = np.zeros(4)
            if total > 0:
                wyi, wxi = wy[4:4 + h], wx[4:4 + w]
                acc = np.einsum("i,j,ijc->c", wyi, wxi, src) / total
            a = acc[3] / 255.0
            alpha[py, px] = a
            comp[py, px] = acc[:3] + (1 - a) * bg_crop[py, px]
    f = S // O
    image = np.floor(comp.reshape(O, f, O, f, 3).mean((1, 3)) + 0.5).clip(0, 255).astype(np.uint8)
    amean = alpha.reshape(O, f, O, f).mean((1, 3))
    return comp, image, amean, amean >= threshold


@pytest.mark.parametrize("seed", range(6))
def test_reference_matches_slow_float_composite(seed):
    rng = np.random.default_rng(seed)
    bgs = [rng.integers(0, 256, (int(rng.integers(40, 70)), int(rng.integers(40, 70)), 3), dtype=np.uint8)
           for _ in range(2)]
    fgs = [soft_disc(int(rng.integers(9, 40)), int(rng.integers(9, 40)), rng, hard=bool(seed % 2)) for _ in range(2)]
    lo = 0.05 if seed % 3 == 0 else 0.3
    bank = build_bank(bgs, fgs, S, (lo, 0.6))
    p = sample_params(np.arange(8) * 3 + seed % 3, bank.layout, 3, seed, S, (lo, 0.6))
    ip, fp = p.kernel_args(bank.layout)
    out = composite_reference(bank, torch.from_numpy(ip), torch.from_numpy(fp), S, O, 0.5, True)
    for b in range(len(p)):
        crop = bank.bg_image(int(ip[b, 0]))[ip[b, 1]:ip[b, 1] + S, ip[b, 2]:ip[b, 2] + S]
        comp, image, amean, mask = slow_composite(crop, bank.fg_entry(int(ip[b, 3])), *fp[b], bool(ip[b, 4]), 0.5)
        ref_comp = out.compose[b].permute(1, 2, 0).numpy() * 255
        assert np.abs(ref_comp - comp).max() <= 1.5
        assert np.abs(out.image[b].numpy().astype(int) - image).max() <= 1
        clear = np.abs(amean - 0.5) > 0.01
        assert (out.mask[b].numpy().astype(bool) == mask)[clear].all()
        assert set(np.unique(out.mask[b].numpy())) <= {0, 1}


def test_flip_mirrors_the_foreground():
    rng = np.random.default_rng(0)
    fg = soft_disc(30, 20, rng, hard=True)
    fg[:, :10, 3] = 0  # only the right half is opaque
    bank = build_bank([np.zeros((S, S, 3), np.uint8)], [fg], S, (0.3, 0.6))
    ip = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    fp = torch.tensor([[5.0, 5.0, 20 / 30, 30 / 30]] * 2, dtype=torch.float64)
    out = composite_reference(bank, ip, fp, S, S, 0.5, False)
    m0, m1 = out.mask[0].numpy(), out.mask[1].numpy()
    assert m0.sum() > 20 and m0.sum() == m1.sum()
    cols0, cols1 = np.nonzero(m0.any(0))[0], np.nonzero(m1.any(0))[0]
    assert cols0.min() >= 15 and cols1.max() <= 24  # right half vs mirrored to the left half of the 30-px box


def test_axis_taps_sum_and_support():
    x0 = torch.tensor([3.25, -10.0], dtype=torch.float64)
    r = torch.tensor([1.7, 0.4], dtype=torch.float64)
    idx, q = axis_taps(x0, r, torch.tensor([50, 8]), torch.tensor([False, True]), 64)
    assert (q.sum(-1) == 1024).all() and (q >= 0).all()
    assert idx.shape == (2, 64, 4)


@pytest.mark.parametrize("device", DEVICES[1:])  # cuda against cpu (a cpu case would compare cpu with itself)
def test_reference_is_device_independent(device):
    rng = np.random.default_rng(3)
    bank = build_bank([rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)], [soft_disc(25, 31, rng)], S, (0.1, 0.6))
    p = sample_params(np.arange(6), bank.layout, 3, 0, S, (0.1, 0.6))
    ip, fp = p.kernel_args(bank.layout)
    cpu = composite_reference(bank, torch.from_numpy(ip), torch.from_numpy(fp), S, O, 0.5, True)
    dev = composite_reference(bank.to(device), torch.from_numpy(ip).to(device), torch.from_numpy(fp).to(device),
                              S, O, 0.5, True)
    assert torch.equal(dev.mask.cpu(), cpu.mask)
    assert (dev.image.cpu().int() - cpu.image.int()).abs().max() <= 1


def test_missing_extension_falls_back_or_fails_clearly(monkeypatch, capsys, tmp_path):
    """Without the extension: auto runs the reference; ext exits 2 with the reason."""
    from smalldepthmask import _ops, gen
    from smalldepthmask.composite import resolve_backend
    from smalldepthmask.errors import UsageError, run_cli
    monkeypatch.setattr(_ops, "supports_device", lambda device: (False, "extension not built (test)"))
    assert resolve_backend("auto", "cpu") == "reference"
    with pytest.raises(UsageError, match="extension not built"):
        resolve_backend("ext", "cpu")
    rc = run_cli(gen.main, ["--shards", str(tmp_path / "o"), "--composite-backend", "ext", "--depth", "none",
                            "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--composite-backend ext" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
