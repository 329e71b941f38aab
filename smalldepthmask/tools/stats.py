"""`smalldepthmask stats OUT/`: exact per-channel mean/std, mask, depth and placement statistics of a dataset.

Pixel statistics come from integer histograms accumulated while streaming (256 bins per colour channel,
one bin per millimetre of depth), so the mean and standard deviation computed from them in float64 at the
end are those of all pixels, with no rounding and no streaming drift, in flat memory. Writes
OUT/stats.json (full precision) and OUT/stats.png (histograms).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import UsageError
from .dataset import (Dataset, decode_depth_mm, decode_image, decode_mask, decode_record, iter_samples,
                      check_writable, one_line, open_dataset, warn_incomplete, write_json)

PROG = "smalldepthmask stats"
MASK_BINS = 20     # per-sample foreground fraction, over [0, 1]
SCALE_BINS = 20    # per-sample scale, over the configured range
CENTER_BINS = 16   # centre of the foreground box / compose size, over [0, 1]^2
DEPTH_BINS = 50    # depth histogram in the JSON, over [min, max] metres


@dataclass
class Running:
    """Welford running mean / variance of a scalar, with min and max."""
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        self.lo, self.hi = min(self.lo, x), max(self.hi, x)

    def summary(self) -> dict:
        if self.n == 0:
            return {"count": 0}
        return {"count": self.n, "mean": self.mean, "std": math.sqrt(self.m2 / self.n), "min": self.lo,
                "max": self.hi}


def hist_moments(counts: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """counts, values: [K] -> (mean, population std) of the values weighted by integer counts, in float64."""
    n = counts.sum(dtype=np.int64)
    w = counts.astype(np.float64)
    mean = float((w * values).sum() / n)
    var = float((w * (values - mean) ** 2).sum() / n)
    return mean, math.sqrt(var)


def hist_percentile(counts: np.ndarray, values: np.ndarray, q: float) -> float:
    """The q-th percentile (nearest rank) of values weighted by counts [K]."""
    cum = np.cumsum(counts, dtype=np.int64)
    rank = max(1, math.ceil(q / 100 * int(cum[-1])))
    return float(values[int(np.searchsorted(cum, rank))])


@dataclass
class Accumulator:
    """Everything stats needs, in flat memory: integer histograms, Welford scalars and group counters."""
    scale_range: tuple[float, float]
    rgb: np.ndarray = field(default_factory=lambda: np.zeros((3, 256), np.int64))       # [3, 256] pixel counts
    depth_mm: np.ndarray = field(default_factory=lambda: np.zeros(65536, np.int64))     # [65536] pixel counts
    mask_pixels: list[int] = field(default_factory=lambda: [0, 0])                     # [foreground, all]
    mask_frac_hist: np.ndarray = field(default_factory=lambda: np.zeros(MASK_BINS, np.int64))
    mask_frac: Running = field(default_factory=Running)
    scale: Running = field(default_factory=Running)
    scale_hist: np.ndarray = field(default_factory=lambda: np.zeros(SCALE_BINS, np.int64))
    cx: Running = field(default_factory=Running)
    cy: Running = field(default_factory=Running)
    center_hist: np.ndarray = field(default_factory=lambda: np.zeros((CENTER_BINS, CENTER_BINS), np.int64))
    flipped: int = 0
    samples: int = 0
    bg: Counter = field(default_factory=Counter)
    fg: Counter = field(default_factory=Counter)

    def add_image(self, image: np.ndarray) -> None:
        """image: [H, W, 3] uint8."""
        for c in range(3):
            self.rgb[c] += np.bincount(image[..., c].ravel(), minlength=256)  # [256] counts of channel c

    def add_mask(self, mask: np.ndarray) -> None:
        """mask: [H, W] bool."""
        fg, n = int(mask.sum()), mask.size
        self.mask_pixels[0] += fg
        self.mask_pixels[1] += n
        self.mask_frac.add(fg / n)
        self.mask_frac_hist[min(int(fg / n * MASK_BINS), MASK_BINS - 1)] += 1

    def add_depth(self, depth_mm: np.ndarray) -> None:
        """depth_mm: [H, W] uint16 millimetres, 0 = no data."""
        self.depth_mm += np.bincount(depth_mm.ravel(), minlength=65536)

    def add_record(self, rec: dict) -> None:
        lo, hi = self.scale_range
        s = float(rec["scale"])
        self.scale.add(s)
        t = (s - lo) / (hi - lo) if hi > lo else 0.5
        self.scale_hist[min(max(int(t * SCALE_BINS), 0), SCALE_BINS - 1)] += 1
        size = float(rec["compose_size"])
        u, v = float(rec["center"][0]) / size, float(rec["center"][1]) / size
        self.cx.add(u)
        self.cy.add(v)
        self.center_hist[min(max(int(v * CENTER_BINS), 0), CENTER_BINS - 1),
                         min(max(int(u * CENTER_BINS), 0), CENTER_BINS - 1)] += 1
        self.flipped += bool(rec["flip"])
        self.bg[int(rec["bg"]["id"])] += 1
        self.fg[int(rec["fg"]["id"])] += 1


def accumulate(ds: Dataset, quiet: bool) -> Accumulator:
    """Stream every sample once, decoding each component into the accumulator."""
    lo, hi = ds.config.get("scale", [0.0, 1.0])
    acc = Accumulator(scale_range=(float(lo), float(hi)))
    for sample in iter_samples(ds, quiet=quiet, desc="stats"):
        key = sample["__key__"]
        try:
            acc.add_image(decode_image(sample["jpg"]))
            acc.add_mask(decode_mask(sample["mask.png"]))
            if "depth.png" in sample:
                acc.add_depth(decode_depth_mm(sample["depth.png"]))
            acc.add_record(decode_record(sample["json"]))
        except KeyError as e:
            raise UsageError(f"{ds.root / sample['__unit__']}: sample {key}: no {e.args[0]}; run "
                             f"`smalldepthmask verify {ds.root}`") from None
        except (OSError, ValueError, TypeError, IndexError) as e:
            raise UsageError(f"{ds.root / sample['__unit__']}: sample {key}: cannot decode ({one_line(e)}); run "
                             f"`smalldepthmask verify {ds.root}`") from None
        acc.samples += 1
    return acc


def image_summary(rgb: np.ndarray) -> dict:
    """rgb: [3, 256] counts -> per-channel mean/std on [0, 1] (value / 255) and on [0, 255]."""
    values = np.arange(256, dtype=np.float64) / 255.0
    moments = [hist_moments(rgb[c], values) for c in range(3)]
    mean, std = [m for m, _ in moments], [s for _, s in moments]
    return {"channels": ["R", "G", "B"], "scale": "pixel value / 255, in [0, 1]", "pixels": int(rgb[0].sum()),
            "mean": mean, "std": std, "mean_255": [m * 255 for m in mean], "std_255": [s * 255 for s in std],
            "std_definition": "population (ddof=0) over all pixels of all samples",
            "histogram": rgb.tolist()}


def depth_summary(depth_mm: np.ndarray, has_depth: bool) -> dict:
    """depth_mm: [65536] counts of millimetre values (index 0 = no data)."""
    if not has_depth:
        return {"present": False, "note": "no depth in this dataset (generated with --depth none)"}
    valid, total = depth_mm[1:], int(depth_mm.sum())
    n = int(valid.sum())
    out = {"present": True, "units": "metres", "pixels": total, "valid_pixels": n,
           "no_data_fraction": (total - n) / total if total else 0.0}
    if n == 0:
        return out | {"note": "every depth pixel is 0 (no data)"}
    metres = np.arange(1, 65536, dtype=np.float64) / 1000.0
    mean, std = hist_moments(valid, metres)
    nz = np.flatnonzero(valid)
    lo_mm, hi_mm = int(nz[0]) + 1, int(nz[-1]) + 1
    edges_mm = np.unique(np.linspace(lo_mm, hi_mm + 1, DEPTH_BINS + 1).round().astype(np.int64))
    counts = np.add.reduceat(depth_mm[lo_mm:hi_mm + 1], edges_mm[:-1] - lo_mm)  # [bins] exact rebinning
    return out | {"mean": mean, "std": std, "min": lo_mm / 1000, "max": hi_mm / 1000,
                  "percentiles": {str(q): hist_percentile(valid, metres, q) for q in (1, 5, 50, 95, 99)},
                  "histogram": {"edges": (edges_mm / 1000).tolist(), "counts": counts.tolist()}}


def group_counts(counter: Counter, files: dict[int, str]) -> list[dict]:
    return [{"id": i, "file": files.get(i, f"#{i}"), "count": int(counter[i])} for i in sorted(counter)]


def summarize(ds: Dataset, acc: Accumulator) -> dict:
    """The stats.json object."""
    n = acc.samples
    lo, hi = acc.scale_range
    return {
        "format": "smalldepthmask-stats/v1", "tool_version": __version__, "dataset": str(ds.root.resolve()),
        "size": {"samples": n, "units": len(ds.units), "layout": ds.layout, "complete": ds.complete,
                 "bytes": sum(int(u.get("bytes", 0)) for u in ds.units.values()),
                 "image_size": [ds.out_size, ds.out_size]},
        "image": image_summary(acc.rgb),
        "mask": {"pixel_fraction": acc.mask_pixels[0] / acc.mask_pixels[1] if acc.mask_pixels[1] else 0.0,
                 "per_sample": acc.mask_frac.summary(),
                 "histogram": {"edges": np.linspace(0, 1, MASK_BINS + 1).tolist(),
                               "counts": acc.mask_frac_hist.tolist()}},
        "depth": depth_summary(acc.depth_mm, ds.has_depth),
        "placement": {
            "scale": acc.scale.summary() | {"histogram": {"edges": np.linspace(lo, hi, SCALE_BINS + 1).tolist(),
                                                          "counts": acc.scale_hist.tolist()}},
            "center": {"units": "fraction of the compose size", "x": acc.cx.summary(), "y": acc.cy.summary(),
                       "histogram": {"bins": CENTER_BINS, "rows": "y", "counts": acc.center_hist.tolist()}},
            "flip": {"flipped": acc.flipped, "fraction": acc.flipped / n if n else 0.0},
            "backgrounds": group_counts(acc.bg, ds.input_files("bg")),
            "foregrounds": group_counts(acc.fg, ds.input_files("fg")),
        },
    }


def report_lines(stats: dict) -> list[str]:
    """The human summary printed on stdout."""
    size, img, mask, depth, place = (stats[k] for k in ("size", "image", "mask", "depth", "placement"))
    mb = size["bytes"] / 1e6
    lines = [f"{size['samples']} samples of {size['image_size'][0]}x{size['image_size'][1]} in {size['units']} "
             f"{unit_word(size)} ({mb:.1f} MB){'' if size['complete'] else ' [incomplete run]'}",
             "image mean  " + "  ".join(f"{c} {m:.6f}" for c, m in zip("RGB", img["mean"])) + "   (values in [0, 1])",
             "image std   " + "  ".join(f"{c} {s:.6f}" for c, s in zip("RGB", img["std"])),
             f"mask        foreground {100 * mask['pixel_fraction']:.2f} % of pixels "
             f"(per sample {100 * mask['per_sample'].get('mean', 0):.2f} +- "
             f"{100 * mask['per_sample'].get('std', 0):.2f} %)"]
    if depth.get("mean") is not None:
        lines.append(f"depth       mean {depth['mean']:.4f} m, std {depth['std']:.4f} m, range "
                     f"{depth['min']:.3f}-{depth['max']:.3f} m, {100 * (1 - depth['no_data_fraction']):.1f} % valid")
    else:
        lines.append(f"depth       {depth.get('note', 'none')}")
    sc = place["scale"]
    lines.append(f"placement   scale {sc.get('mean', 0):.4f} +- {sc.get('std', 0):.4f}, flipped "
                 f"{100 * place['flip']['fraction']:.1f} %, {len(place['backgrounds'])} backgrounds, "
                 f"{len(place['foregrounds'])} foregrounds")
    return lines


def unit_word(size: dict) -> str:
    word = "shard" if size["layout"] == "shards" else "chunk"
    return word if size["units"] == 1 else word + "s"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Exact per-channel mean and standard deviation of the "
                                "composites, mask, depth and placement statistics; writes stats.json and a "
                                "figure of histograms beside the shards.")
    p.add_argument("dataset", metavar="OUT", help="directory written by `smalldepthmask gen`")
    p.add_argument("--json", metavar="PATH", help="where to write the statistics (default OUT/stats.json)")
    p.add_argument("--figure", metavar="PATH", help="where to draw the histograms (default OUT/stats.png)")
    p.add_argument("--no-figure", action="store_true", help="write only the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ds = open_dataset(args.dataset)
    warn_incomplete(ds, PROG)
    json_path = Path(args.json) if args.json else ds.root / "stats.json"
    fig_path = None if args.no_figure else Path(args.figure) if args.figure else ds.root / "stats.png"
    check_writable(json_path, "--json")
    if fig_path is not None:
        check_writable(fig_path, "--figure")
    stats = summarize(ds, accumulate(ds, args.quiet))
    write_json(json_path, stats)
    written = [str(json_path)]
    if fig_path is not None:
        from .stats_plot import draw
        draw(stats, fig_path)
        written.append(str(fig_path))
    print("\n".join(report_lines(stats)))
    print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 0
