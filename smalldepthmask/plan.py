"""Plan: a pure function from (config, seed, sample index) to that sample's parameters.

Every random draw is a counter-based hash of (seed, global index, stream), so any sample can be made
alone, in any order, on any machine. The order of samples through the shards is a keyed Feistel
permutation of [0, N) (cycle-walking over the next even power of two), so every shard is already mixed.

Global index g decomposes as g = ((bg * n_fg + fg) * 2 + flip) * k + j  (Algorithm 1's loops).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# Independent random streams per sample (one uniform each).
STREAM_CROP, STREAM_CX, STREAM_CY, STREAM_SCALE = 1, 2, 3, 4
_PERM_STREAM = 0x5045524D  # "PERM"


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer, vectorized on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash64(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """A 64-bit hash of (seed, index, stream); index: [N] integer array -> [N] uint64."""
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    key = _splitmix64(np.array([key ^ np.uint64(stream)], dtype=np.uint64))[0]
    return _splitmix64(_splitmix64(np.asarray(index, dtype=np.uint64) ^ key))


def uniform(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """Uniform float64 in [0, 1) with 53 random bits; index: [N] -> [N]."""
    return (hash64(seed, index, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def permute(positions: np.ndarray, total: int, seed: int) -> np.ndarray:
    """The keyed permutation of [0, total) evaluated at `positions` ([N] int64 -> [N] int64)."""
    positions = np.asarray(positions, dtype=np.uint64)
    if total <= 1:
        return positions.astype(np.int64)
    bits = max(2, int(total - 1).bit_length())
    bits += bits & 1
    half = bits // 2
    mask = np.uint64((1 << half) - 1)
    out = positions.copy()
    todo = np.ones(out.shape, dtype=bool)
    while todo.any():  # cycle-walking: re-encrypt values that fall outside [0, total)
        x = out[todo]
        left, right = x >> np.uint64(half), x & mask
        for r in range(4):
            f = hash64(seed ^ _PERM_STREAM, right | np.uint64(r << 40), _PERM_STREAM + r) & mask
            left, right = right, left ^ f
        x = (left << np.uint64(half)) | right
        out[todo] = x
        todo = out >= np.uint64(total)
    return out.astype(np.int64)


@dataclass(frozen=True)
class Layout:
    """Sizes the plan needs from the sources: background sizes after the short-side resize to the
    compose size, foreground aspect ratios, and the foreground bank's level sizes (see bank.py)."""

    bg_sizes: tuple[tuple[int, int], ...]  # per background: (H, W) after resize, min(H, W) == compose
    fg_aspects: tuple[float, ...]  # per foreground: width / height of its alpha box
    fg_levels: tuple[tuple[tuple[int, int], ...], ...]  # per foreground, per level: (h, w)
    fg_level_entry: tuple[int, ...]  # per foreground: bank entry index of its level 0

    @cached_property
    def level_sizes(self) -> np.ndarray:
        """[n_fg, L, 2] int64 (h, w) per foreground and level, padded by repeating the last level."""
        depth = max(len(lv) for lv in self.fg_levels)
        return np.array([list(lv) + [lv[-1]] * (depth - len(lv)) for lv in self.fg_levels], dtype=np.int64)

    @cached_property
    def level_counts(self) -> np.ndarray:
        return np.array([len(lv) for lv in self.fg_levels], dtype=np.int64)  # [n_fg]


@dataclass
class SampleParams:
    """Per-sample parameters for a batch of B samples (numpy arrays, all of length B)."""

    index: np.ndarray  # [B] int64 global index
    bg: np.ndarray  # [B] int64 background id
    fg: np.ndarray  # [B] int64 foreground id
    flip: np.ndarray  # [B] bool
    crop_y: np.ndarray  # [B] int64 crop offset in the resized background
    crop_x: np.ndarray  # [B] int64
    cx: np.ndarray  # [B] float64 center in compose pixels, uniform in [0, S - 1]
    cy: np.ndarray  # [B] float64
    scale: np.ndarray  # [B] float64 area(fg box) / area(background)
    box_w: np.ndarray  # [B] float64 placed box size in compose pixels
    box_h: np.ndarray  # [B] float64
    level: np.ndarray  # [B] int64 foreground bank level used
    entry: np.ndarray  # [B] int64 foreground bank entry (level 0 entry + level)

    def __len__(self) -> int:
        return len(self.index)

    def kernel_args(self, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
        """Pack into the composite op's parameter tables.

        iparams: [B, 5] int64 = (bg id, crop_y, crop_x, fg bank entry, flip)
        fparams: [B, 4] float64 = (x0, y0, rx, ry): box top-left in compose pixels (continuous
        coordinates, pixel p covers [p, p + 1)) and source pixels per compose pixel.
        """
        size = layout.level_sizes[self.fg, self.level].astype(np.float64)  # [B, 2]
        lvl_h, lvl_w = size[:, 0], size[:, 1]
        iparams = np.stack([self.bg, self.crop_y, self.crop_x, self.entry, self.flip.astype(np.int64)], axis=1)
        x0 = self.cx + 0.5 - self.box_w / 2.0
        y0 = self.cy + 0.5 - self.box_h / 2.0
        fparams = np.stack([x0, y0, lvl_w / self.box_w, lvl_h / self.box_h], axis=1)
        return iparams.astype(np.int64), fparams.astype(np.float64)


def total_samples(n_bg: int, n_fg: int, k: int) -> int:
    return 2 * k * n_bg * n_fg


def decompose(index: np.ndarray, n_fg: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """g -> (bg, fg, flip, j) for g = ((bg * n_fg + fg) * 2 + flip) * k + j."""
    index = np.asarray(index, dtype=np.int64)
    j = index % k
    rest = index // k
    flip = (rest % 2).astype(bool)
    rest = rest // 2
    return rest // n_fg, rest % n_fg, flip, j


def choose_level(levels: tuple[tuple[int, int], ...], box_w: float, box_h: float) -> int:
    """The smallest bank level under twice the box on both axes (so per-sample shrinking stays < 2x)."""
    for lv, (h, w) in enumerate(levels):
        if w < 2.0 * box_w and h < 2.0 * box_h:
            return lv
    return len(levels) - 1


def choose_levels(layout: Layout, fg: np.ndarray, box_w: np.ndarray, box_h: np.ndarray) -> np.ndarray:
    """`choose_level` for a batch: fg [B] int64, box_w/box_h [B] float64 -> [B] int64."""
    size = layout.level_sizes[fg]  # [B, L, 2]
    ok = (size[..., 1] < 2.0 * box_w[:, None]) & (size[..., 0] < 2.0 * box_h[:, None])
    ok |= np.arange(size.shape[1])[None, :] >= (layout.level_counts[fg] - 1)[:, None]
    return np.argmax(ok, axis=1).astype(np.int64)


def sample_params(index: np.ndarray, layout: Layout, k: int, seed: int, compose: int,
                  scale_range: tuple[float, float]) -> SampleParams:
    """Algorithm 1 for the samples with global indices `index` ([B] int64)."""
    index = np.asarray(index, dtype=np.int64)
    n_fg = len(layout.fg_aspects)
    bg, fg, flip, _ = decompose(index, n_fg, k)
    bg_hw = np.array(layout.bg_sizes, dtype=np.int64)[bg]  # [B, 2]
    # 1. maximal square crop at a random offset (along the long side of the resized background)
    u = uniform(seed, index, STREAM_CROP)
    span = bg_hw - compose  # [B, 2], one of the two is 0
    crop_y = np.floor(u * (span[:, 0] + 1)).astype(np.int64)
    crop_x = np.floor(u * (span[:, 1] + 1)).astype(np.int64)
    # 2. center uniform in [0, S - 1]^2
    cx = uniform(seed, index, STREAM_CX) * (compose - 1)
    cy = uniform(seed, index, STREAM_CY) * (compose - 1)
    # 3. scale uniform in [lo, hi]: area of the foreground's box / area of the background
    lo, hi = scale_range
    scale = lo + uniform(seed, index, STREAM_SCALE) * (hi - lo)
    aspect = np.array(layout.fg_aspects, dtype=np.float64)[fg]
    box_w = compose * np.sqrt(scale * aspect)
    box_h = compose * np.sqrt(scale / aspect)
    level = choose_levels(layout, fg, box_w, box_h)
    entry = np.array(layout.fg_level_entry, dtype=np.int64)[fg] + level
    return SampleParams(index=index, bg=bg, fg=fg, flip=flip, crop_y=crop_y, crop_x=crop_x, cx=cx, cy=cy,
                        scale=scale, box_w=box_w, box_h=box_h, level=level, entry=entry)
