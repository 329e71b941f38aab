"""Composite: one batch of (background crop, resized + flipped + placed foreground, blend, mask).

This file is the plain-torch reference of the math the csrc/ kernels implement, and their fallback.
The math is defined so that every implementation gets bit-identical alpha and mask:

Coordinates. Compose pixel p covers [p, p + 1). A sample's box has top-left (x0, y0) and rx, ry source
pixels per compose pixel (float64, from the plan). For compose column px:
    u = (px + 0.5 - x0) * rx;   if flip: u = w - u;   c = u - 0.5;   s = max(rx, 1)
taps i = floor(c - s) + 1 + k for k in [0, K) with K = TAPS (4, enough since the plan keeps rx < 2),
    t_k = max(0, 1 - |i - c| / s)                     (triangle filter: antialiased when shrinking)
    q_k = floor(t_k / T * 1024 + 0.5), T = t_0 + ... + t_{K-1} (summed in k order)
    then the first largest q_k is replaced by 1024 - (sum of the other q), so each axis sums to 1024.
All of this is IEEE float64 (no fused multiply-add); taps outside [0, w) read 0 (transparent).
Rows are the same with (py, y0, ry, h) and no flip.

Accumulation. A = sum_kl qy_l qx_k a[i_l, i_k] and C_ch = sum qy qx pc_ch[...] (exact integers; a and
pc are the premultiplied uint8 bank values), so alpha8 = (A + 2^19) >> 20 exactly.

Blend (float32, this operation order): fa = float(A) * (1 / (255 * 2^20)); fc = float(C) * (1 / 2^20);
    v = fc + (1 - fa) * bg          (v in [0, 255])
Outputs: compose = v / 255 as [B, 3, S, S] float32 (what the depth teacher reads);
image[o] = clamp(floor(sum_{f x f block, row-major} v * (1 / f^2) + 0.5), 0, 255) as [B, O, O, 3] uint8;
mask[o] = (sum_block alpha8 >= ceil(threshold * 255 * f^2)) as [B, O, O] uint8 in {0, 1}; f = S / O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .bank import Bank
from .errors import UsageError

TAPS = 4
WEIGHT_ONE = 1024
ALPHA_SHIFT = 20  # log2(WEIGHT_ONE ** 2)


@dataclass
class CompositeOut:
    image: torch.Tensor  # [B, O, O, 3] uint8, ready to encode
    mask: torch.Tensor  # [B, O, O] uint8 in {0, 1}
    compose: torch.Tensor | None  # [B, 3, S, S] float32 in [0, 1], or None when not asked for


def mask_threshold_count(threshold: float, factor: int) -> int:
    """The integer block-sum of alpha8 at or above which a mask pixel is set."""
    return math.ceil(threshold * 255 * factor * factor)


def axis_taps(pos0: torch.Tensor, ratio: torch.Tensor, size: torch.Tensor, flip: torch.Tensor,
              n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantized filter taps along one axis for n compose pixels of each sample.

    pos0, ratio: [B] float64 (x0, rx); size: [B] int64 source extent (w); flip: [B] bool.
    Returns (index [B, n, TAPS] int64 source pixel, weight [B, n, TAPS] int64 summing to 1024).
    """
    p = torch.arange(n, dtype=torch.float64, device=pos0.device)
    u = (p[None, :] + 0.5 - pos0[:, None]) * ratio[:, None]  # [B, n]
    u = torch.where(flip[:, None], size[:, None].to(torch.float64) - u, u)
    c = u - 0.5
    s = torch.clamp(ratio, min=1.0)[:, None]  # [B, 1]
    first = torch.floor(c - s) + 1.0
    k = torch.arange(TAPS, dtype=torch.float64, device=pos0.device)
    idx = first[..., None] + k  # [B, n, K]
    t = torch.clamp(1.0 - torch.abs(idx - c[..., None]) / s[..., None], min=0.0)
    total = t[..., 0]
    for j in range(1, TAPS):  # fixed summation order, as in the kernels
        total = total + t[..., j]
    q = torch.floor(t / total[..., None] * float(WEIGHT_ONE) + 0.5).to(torch.int64)
    big = torch.argmax(q, dim=-1, keepdim=True)  # first largest
    rest = q.sum(-1, keepdim=True) - torch.gather(q, -1, big)
    q = q.scatter(-1, big, WEIGHT_ONE - rest)
    return idx.to(torch.int64), q


def _resample_one(fg: torch.Tensor, ix: torch.Tensor, wx: torch.Tensor, iy: torch.Tensor,
                  wy: torch.Tensor) -> torch.Tensor:
    """Separable integer resampling of one premultiplied foreground.

    fg: [h, w, 4] uint8; ix, wx: [S, K] int64 (columns); iy, wy: [S, K] int64 (rows).
    Returns [S, S, 4] int64 = (C_r, C_g, C_b, A), exact.
    """
    h, w = fg.shape[:2]
    src = fg.to(torch.int64)
    okx = (ix >= 0) & (ix < w)
    cols = src[:, ix.clamp(0, w - 1)]  # [h, S, K, 4]
    tmp = (cols * (wx * okx)[None, :, :, None]).sum(2)  # [h, S, 4]
    oky = (iy >= 0) & (iy < h)
    rows = tmp[iy.clamp(0, h - 1)]  # [S, K, S, 4]
    return (rows * (wy * oky)[:, :, None, None]).sum(1)  # [S, S, 4]


def _bg_crops(bank: Bank, iparams: torch.Tensor, size: int) -> torch.Tensor:
    """[B, S, S, 3] uint8 windows of the resized backgrounds; iparams: [B, 5] int64."""
    out = []
    for b in range(iparams.shape[0]):
        bg, cy, cx = (int(v) for v in iparams[b, :3])
        off, h, w = (int(v) for v in bank.bg_table[bg])
        img = bank.bg_flat[off:off + h * w * 3].view(h, w, 3)
        out.append(img[cy:cy + size, cx:cx + size])
    return torch.stack(out)


def composite_reference(bank: Bank, iparams: torch.Tensor, fparams: torch.Tensor, compose: int, out: int,
                        threshold: float, want_compose: bool) -> CompositeOut:
    """The reference composite. iparams: [B, 5] int64 (bg, crop_y, crop_x, fg entry, flip);
    fparams: [B, 4] float64 (x0, y0, rx, ry); both on the bank's device."""
    factor = compose // out
    B = iparams.shape[0]
    dev = bank.device
    ftab = bank.fg_table[iparams[:, 3]]  # [B, 3]
    flip = iparams[:, 4] != 0
    ix, wx = axis_taps(fparams[:, 0], fparams[:, 2], ftab[:, 2], flip, compose)
    iy, wy = axis_taps(fparams[:, 1], fparams[:, 3], ftab[:, 1], torch.zeros_like(flip), compose)
    acc = torch.empty(B, compose, compose, 4, dtype=torch.int64, device=dev)
    for b in range(B):
        off, h, w = (int(v) for v in ftab[b])
        fg = bank.fg_flat[off:off + h * w * 4].view(h, w, 4)
        acc[b] = _resample_one(fg, ix[b], wx[b], iy[b], wy[b])
    bg = _bg_crops(bank, iparams, compose).to(torch.float32)  # [B, S, S, 3]
    fa = acc[..., 3:].to(torch.float32) * (1.0 / (255.0 * (1 << ALPHA_SHIFT)))
    fc = acc[..., :3].to(torch.float32) * (1.0 / (1 << ALPHA_SHIFT))
    v = fc + (1.0 - fa) * bg  # [B, S, S, 3] in [0, 255]
    alpha8 = (acc[..., 3] + (1 << (ALPHA_SHIFT - 1))) >> ALPHA_SHIFT  # [B, S, S]
    blocks = v.view(B, out, factor, out, factor, 3)
    total = None
    for dy in range(factor):  # fixed summation order, as in the kernels
        for dx in range(factor):
            term = blocks[:, :, dy, :, dx]
            total = term if total is None else total + term
    image = torch.clamp(torch.floor(total * (1.0 / (factor * factor)) + 0.5), 0, 255).to(torch.uint8)
    asum = alpha8.view(B, out, factor, out, factor).sum((2, 4))
    mask = (asum >= mask_threshold_count(threshold, factor)).to(torch.uint8)
    compose_t = (v / 255.0).permute(0, 3, 1, 2).contiguous() if want_compose else None
    return CompositeOut(image=image.contiguous(), mask=mask, compose=compose_t)


BACKENDS = ("auto", "ext", "reference")


def extension_status(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(available, reason) for the compiled composite op, on `device` when given. Never raises."""
    try:
        from . import _ops
    except ImportError as e:  # the extension module is optional
        return False, f"the compiled extension is not importable ({e})"
    return _ops.available() if device is None else _ops.supports_device(torch.device(device))


def resolve_backend(name: str, device: torch.device | str = "cpu") -> str:
    """Map --composite-backend to 'ext' or 'reference'; a missing extension asked for by name is an error."""
    if name not in BACKENDS:
        raise UsageError(f"--composite-backend: unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "reference":
        return "reference"
    ok, reason = extension_status(device)
    if name == "ext" and not ok:
        raise UsageError(f"--composite-backend ext: {reason} (`python -m smalldepthmask info` says more), "
                         "or use --composite-backend reference")
    return "ext" if ok else "reference"


def device_params(bank: Bank, iparams: torch.Tensor, fparams: torch.Tensor,
                  compose: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the params on the host and put them on the bank's device. iparams: [B, 5] int64, fparams:
    [B, 4] float64. Host params are checked (against the bank's host tables, checked once by Bank.to) and
    uploaded non_blocking from pinned memory: nothing waits for the device. Params already on the device are
    checked through a host copy, which waits for the device: pass host params in a pipeline."""
    from . import _ops

    dev = bank.device
    host_i, host_f = iparams, fparams
    if iparams.device.type != "cpu" or fparams.device.type != "cpu":
        host_i, host_f = iparams.cpu(), fparams.cpu()
    bt, ft = bank.host_tables()
    _ops.check_composite_values(bt, ft, host_i.contiguous(), host_f.contiguous(), bank.bg_flat.numel(),
                                bank.fg_flat.numel(), compose, False)
    if iparams.device == dev and fparams.device == dev:
        return iparams, fparams
    pin = dev.type == "cuda"
    up_i, up_f = ((t.pin_memory() if pin else t).to(dev, non_blocking=pin) for t in (host_i, host_f))
    return up_i, up_f


def composite(bank: Bank, iparams: torch.Tensor, fparams: torch.Tensor, compose: int, out: int,
              threshold: float, want_compose: bool, backend: str = "reference") -> CompositeOut:
    """Run the composite with a resolved backend ('ext' or 'reference'). iparams [B, 5] int64 and fparams
    [B, 4] float64 may be on the host (preferred for a device bank: see device_params) or the bank's device."""
    if backend == "ext":
        from . import _ops
        if bank.device.type != "cpu":
            iparams, fparams = device_params(bank, iparams, fparams, compose)
        image, mask, comp = _ops.composite(bank.bg_flat, bank.bg_table, bank.fg_flat, bank.fg_table, iparams,
                                           fparams, compose, out, mask_threshold_count(threshold, compose // out),
                                           want_compose)
        return CompositeOut(image=image, mask=mask, compose=comp if want_compose else None)
    if iparams.device != bank.device:  # host params for a device bank: up from pinned memory, non_blocking
        pin = bank.device.type == "cuda"
        iparams, fparams = ((t.pin_memory() if pin else t).to(bank.device, non_blocking=pin)
                            for t in (iparams, fparams))
    return composite_reference(bank, iparams, fparams, compose, out, threshold, want_compose)
