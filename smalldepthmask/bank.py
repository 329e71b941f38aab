"""The source bank: every input decoded and resized once, packed into flat device buffers.

Backgrounds are resized (Lanczos) so that their short side equals the compose size S; the per-sample
"maximal square crop resized to S" is then an integer window of that image.

Foregrounds (cropped to their alpha box) are stored premultiplied RGBA, as a small pyramid: level 0
is the box size needed at the largest scale (never upscaled beyond the file), each next level halves
it, until a level is under twice the smallest box needed. Per sample the plan picks the level whose
width is under twice the placed width, so the per-sample resampling shrinks by less than 2x and a
4-tap filter per axis is always enough.

Packing (what the composite op reads):
    bg_flat  [sum(H*W*3)] uint8, HWC per background;   bg_table [m, 3] int64 = (offset, H, W)
    fg_flat  [sum(h*w*4)] uint8, premultiplied RGBA;     fg_table [E, 3] int64 = (offset, h, w)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .plan import Layout


def background_size(h: int, w: int, compose: int) -> tuple[int, int]:
    """(H, W) after resizing so the short side is `compose`."""
    if h <= w:
        return compose, max(compose, round(w * compose / h))
    return max(compose, round(h * compose / w)), compose


def resize_background(img: np.ndarray, compose: int, name: str = "") -> np.ndarray:
    """img: [H0, W0, 3] uint8 -> [H, W, 3] uint8 with min(H, W) == compose."""
    h, w = img.shape[:2]
    if min(h, w) < compose:
        warnings.warn(f"background {name or '?'} is {w}x{h}, smaller than the compose size {compose}: upscaling it",
                      stacklevel=2)
    th, tw = background_size(h, w, compose)
    if (th, tw) == (h, w):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img, "RGB").resize((tw, th), Image.Resampling.LANCZOS))


def foreground_levels(h: int, w: int, compose: int, scale_range: tuple[float, float]) -> list[tuple[int, int]]:
    """Pyramid level sizes (h, w) for a foreground of alpha-box size h x w."""
    aspect = w / h
    lo, hi = scale_range
    need_w, need_h = compose * math.sqrt(hi * aspect), compose * math.sqrt(hi / aspect)
    if w > need_w and h > need_h:
        h, w = max(1, math.ceil(need_h)), max(1, math.ceil(need_w))
    min_w, min_h = compose * math.sqrt(lo * aspect), compose * math.sqrt(lo / aspect)
    levels = [(h, w)]
    while (w >= 2.0 * min_w or h >= 2.0 * min_h) and w > 1 and h > 1:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        levels.append((h, w))
    return levels


def premultiplied_levels(rgba: np.ndarray, levels: list[tuple[int, int]]) -> list[np.ndarray]:
    """rgba: [h, w, 4] uint8 straight alpha -> one [h_l, w_l, 4] uint8 premultiplied array per level."""
    im = Image.fromarray(rgba, "RGBA").convert("RGBa")
    out = []
    for h, w in levels:
        if im.size != (w, h):
            # triangle filter (antialiased when shrinking): a convex combination, so color <= alpha holds
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        out.append(np.asarray(im))
    return out


def _pack(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    table, offset = [], 0
    for a in arrays:
        table.append((offset, a.shape[0], a.shape[1]))
        offset += a.size
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.uint8)
    return torch.from_numpy(flat), torch.tensor(table, dtype=torch.int64).reshape(-1, 3)


@dataclass
class Bank:
    bg_flat: torch.Tensor  # [sum(H*W*3)] uint8
    bg_table: torch.Tensor  # [m, 3] int64 (offset, H, W)
    fg_flat: torch.Tensor  # [sum(h*w*4)] uint8 premultiplied RGBA
    fg_table: torch.Tensor  # [E, 3] int64 (offset, h, w)
    layout: Layout
    # CPU copies of the tables of a bank on another device, value-checked once by to() (None for a CPU bank)
    host_bg_table: torch.Tensor | None = None  # [m, 3] int64
    host_fg_table: torch.Tensor | None = None  # [E, 3] int64

    @property
    def device(self) -> torch.device:
        return self.bg_flat.device

    def host_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(bg_table [m, 3], fg_table [E, 3]) int64 on the CPU, without a device copy when to() made the bank."""
        if self.host_bg_table is not None and self.host_fg_table is not None:
            return self.host_bg_table, self.host_fg_table
        return self.bg_table.cpu(), self.fg_table.cpu()

    def to(self, device) -> "Bank":
        """The bank on `device`; for a non-CPU device the tables' values are checked here, once, on the host
        (the CUDA composite op checks shapes only) and kept as host copies for the per-batch param checks."""
        device = torch.device(device)
        bt, ft = self.host_tables()
        on_host = device.type == "cpu"
        if not on_host:
            _check_tables(bt, ft, self.bg_flat.numel(), self.fg_flat.numel())
        return Bank(self.bg_flat.to(device), self.bg_table.to(device), self.fg_flat.to(device),
                    self.fg_table.to(device), self.layout, None if on_host else bt, None if on_host else ft)

    def fg_entry(self, entry: int) -> np.ndarray:
        """[h, w, 4] uint8 premultiplied RGBA of one bank entry (CPU copy)."""
        off, h, w = (int(v) for v in self.fg_table[entry])
        return self.fg_flat[off:off + h * w * 4].cpu().numpy().reshape(h, w, 4)

    def bg_image(self, bg: int) -> np.ndarray:
        """[H, W, 3] uint8 of one resized background (CPU copy)."""
        off, h, w = (int(v) for v in self.bg_table[bg])
        return self.bg_flat[off:off + h * w * 3].cpu().numpy().reshape(h, w, 3)


def _check_tables(bg_table: torch.Tensor, fg_table: torch.Tensor, bg_numel: int, fg_numel: int) -> None:
    """Every table row inside its flat buffer (the compiled check; skipped when the kernels are not built, as
    then only the reference composite runs, which slices the buffers itself)."""
    from . import _ops

    if not _ops.available()[0]:
        return
    none_i = torch.zeros(0, 5, dtype=torch.int64)
    _ops.check_composite_values(bg_table, fg_table, none_i, torch.zeros(0, 4, dtype=torch.float64), bg_numel,
                                fg_numel, 1, True)


def build_bank(backgrounds: list[np.ndarray], foregrounds: list[np.ndarray], compose: int,
               scale_range: tuple[float, float], bg_names: list[str] | None = None) -> Bank:
    """backgrounds: list of [H, W, 3] uint8; foregrounds: list of [h, w, 4] uint8 straight alpha."""
    bg_names = bg_names or [""] * len(backgrounds)
    bgs = [resize_background(b, compose, n) for b, n in zip(backgrounds, bg_names)]
    fg_arrays, fg_levels, fg_entry = [], [], []
    for rgba in foregrounds:
        levels = foreground_levels(rgba.shape[0], rgba.shape[1], compose, scale_range)
        fg_entry.append(len(fg_arrays))
        fg_arrays.extend(premultiplied_levels(rgba, levels))
        fg_levels.append(tuple(levels))
    bg_flat, bg_table = _pack(bgs)
    fg_flat, fg_table = _pack(fg_arrays)
    layout = Layout(
        bg_sizes=tuple((b.shape[0], b.shape[1]) for b in bgs),
        fg_aspects=tuple(f.shape[1] / f.shape[0] for f in foregrounds),
        fg_levels=tuple(fg_levels),
        fg_level_entry=tuple(fg_entry),
    )
    return Bank(bg_flat, bg_table, fg_flat, fg_table, layout)
