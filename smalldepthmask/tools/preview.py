"""`smalldepthmask preview OUT/ --n 16 -o sheet.png`: a contact sheet of triplets, chosen reproducibly.

Each tile shows one sample: the composite, the composite with its mask (tinted fill and outline), and the
depth in a perceptual colour map whose range is shared across the sheet, with one scale bar in metres.
Samples are picked by a keyed hash of (seed, position), so the same seed shows the same samples on any
machine; only the shards holding them are read, and each only up to its last chosen sample.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..sink import MANIFEST
from .dataset import (Dataset, UnitError, check_writable, decode_depth_mm, decode_image, decode_mask,
                      decode_record, iter_unit, one_line, open_dataset, warn_incomplete)

PROG = "smalldepthmask preview"
PANEL_IN = 1.9      # side of one image panel, inches
TITLE_IN = 0.32     # tile title strip above the panels, inches
HEADER_IN = 0.65    # sheet title, inches
FOOTER_IN = 0.9     # colour bar and legend, inches (legend only, without depth: FOOTER_NO_DEPTH_IN)
FOOTER_NO_DEPTH_IN = 0.35
DPI = 100
MASK_RGB = np.array([0, 229, 255], np.float64)  # mask fill colour (cyan)
MASK_ALPHA = 0.45
CMAPS = ("viridis", "magma", "inferno", "plasma", "cividis", "turbo")


@dataclass
class Tile:
    key: str
    image: np.ndarray            # [H, W, 3] uint8
    mask: np.ndarray             # [H, W] bool
    depth: np.ndarray | None     # [H, W] float64 metres, NaN = no data
    record: dict


def pick_positions(total: int, n: int, seed: int) -> list[int]:
    """n distinct positions in [0, total): those with the smallest blake2b(seed, position), sorted."""
    def h(i: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()
    return sorted(heapq.nsmallest(min(n, total), range(total), key=h))


def locate(ds: Dataset, positions: list[int]) -> dict[str, list[int]]:
    """Positions in manifest order -> {unit name: sorted offsets inside it}."""
    where: dict[str, list[int]] = {}
    start = 0
    for name in ds.unit_names():
        count = int(ds.units[name]["count"])
        offsets = [p - start for p in positions if start <= p < start + count]
        if offsets:
            where[name] = offsets
        start += count
    return where


def to_tile(sample: dict) -> Tile:
    depth = None
    if "depth.png" in sample:
        mm = decode_depth_mm(sample["depth.png"])  # [H, W] uint16
        depth = np.where(mm > 0, mm / 1000.0, np.nan)
    return Tile(sample["__key__"], decode_image(sample["jpg"]), decode_mask(sample["mask.png"]), depth,
                decode_record(sample["json"]))


def read_tiles(ds: Dataset, positions: list[int], quiet: bool) -> list[Tile]:
    """Decode the samples at `positions`, reading each needed unit only up to its last chosen sample."""
    from tqdm import tqdm
    tiles = []
    with tqdm(total=len(positions), unit="sample", desc="preview", disable=quiet, file=sys.stderr) as bar:
        for name, offsets in locate(ds, positions).items():
            wanted, last, seen = set(offsets), offsets[-1], -1
            try:
                for seen, sample in enumerate(iter_unit(ds, name)):
                    if seen in wanted:
                        tiles.append(to_tile(sample))
                        bar.update(1)
                    if seen == last:
                        break
            except UnitError as e:
                raise UsageError(f"{ds.root / name}: {e.reason}; run `smalldepthmask verify {ds.root}`") from None
            except (KeyError, OSError, ValueError) as e:
                raise UsageError(f"{ds.root / name}: sample {seen + 1} cannot be decoded ({one_line(e)}); run "
                                 f"`smalldepthmask verify {ds.root}`") from None
            if seen < last:
                raise UsageError(f"{ds.root / name}: {seen + 1} samples, {MANIFEST} says "
                                 f"{ds.units[name]['count']} (truncated or damaged); run `smalldepthmask verify "
                                 f"{ds.root}`")
    return tiles


def depth_range(tiles: list[Tile]) -> tuple[float, float] | None:
    """Shared colour range of the sheet: 2nd to 98th percentile of all valid depths (None: no depth)."""
    valid = [t.depth[np.isfinite(t.depth)] for t in tiles if t.depth is not None]
    values = np.concatenate(valid) if valid else np.zeros(0)
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [2, 98])
    return float(lo), float(max(hi, lo + 1e-3))


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """image: [H, W, 3] uint8, mask: [H, W] bool -> [H, W, 3] uint8 with the mask tinted."""
    out = image.astype(np.float64)
    out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * MASK_RGB
    return out.round().astype(np.uint8)


def grid_shape(n: int, cols: int | None) -> tuple[int, int]:
    """(rows, tile columns) of the sheet."""
    c = max(1, min(n, cols or math.ceil(math.sqrt(n))))
    return math.ceil(n / c), c


def footer_in(panels: int) -> float:
    return FOOTER_IN if panels == 3 else FOOTER_NO_DEPTH_IN


def sheet_size(n: int, cols: int | None, panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for n tiles of `panels` images each."""
    rows, c = grid_shape(n, cols)
    w = c * panels * PANEL_IN
    h = HEADER_IN + rows * (PANEL_IN + TITLE_IN) + footer_in(panels)
    return round(w * DPI), round(h * DPI)


def tile_title(t: Tile) -> str:
    bg = Path(t.record.get("bg", {}).get("file", "?")).stem
    fg = Path(t.record.get("fg", {}).get("file", "?")).stem
    flip = " (mirrored)" if t.record.get("flip") else ""
    return f"#{int(t.key)}  {bg} + {fg}{flip}"


def draw_tile(subfig, t: Tile, panels: int, norm, cmap) -> None:
    top = PANEL_IN / (PANEL_IN + TITLE_IN)
    axes = subfig.subplots(1, panels, gridspec_kw={"left": 0.015, "right": 0.985, "bottom": 0.02, "top": top,
                                                   "wspace": 0.03})
    axes[0].imshow(t.image, interpolation="nearest")
    axes[1].imshow(overlay(t.image, t.mask), interpolation="nearest")
    if t.mask.any() and not t.mask.all():
        axes[1].contour(t.mask.astype(np.float32), levels=[0.5], colors=["yellow"], linewidths=0.9)
    if panels == 3:
        if t.depth is not None:
            axes[2].imshow(np.ma.masked_invalid(t.depth), cmap=cmap, norm=norm, interpolation="nearest")
        else:
            axes[2].set_facecolor("0.85")
            axes[2].text(0.5, 0.5, "no depth", ha="center", va="center", transform=axes[2].transAxes)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    subfig.suptitle(tile_title(t), fontsize=8, y=top + 0.02, va="bottom")


def draw_sheet(ds: Dataset, tiles: list[Tile], cols: int | None, cmap_name: str, seed: int, path: Path) -> None:
    """The contact sheet PNG: header, grid of tiles, footer with the depth scale bar and the legend."""
    from .stats_plot import pyplot
    plt = pyplot("the preview sheet")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rng = depth_range(tiles)
    panels = 3 if ds.has_depth else 2
    rows, c = grid_shape(len(tiles), cols)
    w, h = sheet_size(len(tiles), cols, panels)
    fig = plt.figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    head, body, foot = fig.subfigures(3, 1, height_ratios=[HEADER_IN, rows * (PANEL_IN + TITLE_IN),
                                                                footer_in(panels)])
    depth_note = "" if ds.has_depth else "   ·   no depth in this dataset"
    head.suptitle(f"{ds.root.resolve().name}: {len(tiles)} of {ds.listed_samples()} samples (seed {seed}), "
                  f"{ds.out_size}x{ds.out_size}{depth_note}", fontsize=12, y=0.92, va="top")
    parts = "composite  |  mask over composite" + ("  |  depth" if panels == 3 else "")
    head.text(0.5, 0.12, f"each tile: {parts}", ha="center", va="bottom", fontsize=9, color="0.3")
    cmap = plt.get_cmap(cmap_name).with_extremes(bad="0.6")
    norm = Normalize(*rng) if rng else Normalize(0, 1)
    grid = np.atleast_2d(body.subfigures(rows, c, wspace=0.04, hspace=0.0))
    for i, sub in enumerate(grid.ravel()):
        if i < len(tiles):
            draw_tile(sub, tiles[i], panels, norm, cmap)
    legend = "mask: cyan fill, yellow outline" + ("   ·   grey: no depth data" if rng is not None else depth_note)
    if panels == 3 and rng is not None:
        cax = foot.add_axes((0.3, 0.55, 0.4, 0.15))
        bar = foot.colorbar(ScalarMappable(norm, cmap), cax=cax, orientation="horizontal", extend="both")
        bar.set_label("depth (m), same scale for every tile", fontsize=9, labelpad=3)
        bar.ax.xaxis.set_label_position("top")
        bar.ax.tick_params(labelsize=8)
    foot.text(0.5, 0.05 if panels == 3 else 0.3, legend, ha="center", va="bottom", fontsize=9, color="0.25")
    save(fig, path)
    plt.close(fig)


def save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write ({one_line(e)})") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Contact sheet PNG of (composite, mask, depth) triplets "
                                "chosen reproducibly from a dataset.")
    p.add_argument("dataset", metavar="OUT", help="directory written by `smalldepthmask gen`")
    p.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("-o", "--output", metavar="PNG", help="the sheet to write (default OUT/preview.png)")
    p.add_argument("--seed", type=int, default=0, help="which samples: same seed, same samples")
    p.add_argument("--cols", type=int, default=None, help="tiles per row (default about sqrt(n))")
    p.add_argument("--cmap", default="viridis", choices=CMAPS, help="depth colour map (default viridis)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.n <= 400:
        raise UsageError(f"--n: must be in [1, 400], got {args.n}")
    if args.cols is not None and args.cols < 1:
        raise UsageError(f"--cols: must be at least 1, got {args.cols}")
    if args.seed < 0:
        raise UsageError(f"--seed: must be >= 0, got {args.seed}")
    ds = open_dataset(args.dataset)
    warn_incomplete(ds, PROG)
    path = Path(args.output) if args.output else ds.root / "preview.png"
    check_writable(path, "-o")
    tiles = read_tiles(ds, pick_positions(ds.listed_samples(), args.n, args.seed), args.quiet)
    draw_sheet(ds, tiles, args.cols, args.cmap, args.seed, path)
    print(f"wrote {path} ({len(tiles)} sample{'' if len(tiles) == 1 else 's'})")
    return 0
