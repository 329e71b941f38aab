"""The generator's configuration: command-line flags, their validation, and what the output depends on."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field

from .errors import UsageError

# Fields that change the bytes of the output; a resume must see the same values.
OUTPUT_FIELDS = ("k", "seed", "limit", "scale", "compose_size", "out_size", "mask_threshold", "shard_size",
                 "jpeg_quality", "layout")


@dataclass
class GenConfig:
    out: str
    layout: str = "shards"  # "shards" (WebDataset tars) or "folders" (images/, masks/, depth/, index.csv)
    fg: str | None = None
    bg: str | None = None
    k: int = 20
    seed: int = 0
    limit: int | None = None
    scale: tuple[float, float] = (0.3, 0.6)
    compose_size: int = 448
    out_size: int = 224
    mask_threshold: float = 0.5
    shard_size: int = 10_000
    jpeg_quality: int = 95
    batch_size: int = 64
    workers: int = 2
    device: str = "auto"
    composite_backend: str = "auto"
    skip_bad: bool = False
    overwrite: bool = False
    quiet: bool = False
    profile: bool = False
    depth: str = "densedepth"
    depth_weights: str | None = None
    depth_runner: str = "auto"
    depth_precision: str = "auto"
    extra: dict = field(default_factory=dict)

    def output_config(self) -> dict:
        """The part of the config the output bytes depend on (recorded in the manifest, checked on resume)."""
        d = asdict(self)
        out = {k: d[k] for k in OUTPUT_FIELDS}
        out["scale"] = list(self.scale)
        return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--shards", metavar="OUT", help="write WebDataset tar shards and manifest.json into OUT")
    dest.add_argument("--folders", metavar="OUT", help="write the offline layout: images/, masks/, depth/, index.csv")
    p.add_argument("--fg", metavar="DIR", help="foreground images with transparency (PNG, WebP); default: demo set")
    p.add_argument("--bg", metavar="DIR", help="background photos (JPEG, PNG, WebP); default: demo set")
    p.add_argument("--k", type=int, default=20, help="random placements per (background, foreground, flip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, metavar="N", help="make only the first N samples of the order")
    p.add_argument("--scale", type=float, nargs=2, default=(0.3, 0.6), metavar=("LO", "HI"),
                   help="foreground box area / background area, uniform in [LO, HI]")
    p.add_argument("--compose-size", type=int, default=448, help="side of the square composite (teacher input)")
    p.add_argument("--out-size", type=int, default=224, help="side of the written image and mask")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="mask = downsampled alpha >= this")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--batch-size", type=int, default=64, help="samples composited per batch")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="encoder threads (on the CPU without a teacher they also composite); default: all cores")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--composite-backend", default="auto", choices=("auto", "ext", "reference"),
                   help="compiled kernel (ext) or plain-torch reference; auto prefers the kernel")
    p.add_argument("--skip-bad", action="store_true", help="skip unusable inputs instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace a different run found in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--profile", action="store_true",
                   help="print time and share per stage at the end (and write OUT/profile.json)")


def _check(cond: bool, flag: str, msg: str) -> None:
    if not cond:
        raise UsageError(f"{flag}: {msg}")


def from_args(a: argparse.Namespace) -> GenConfig:
    lo, hi = a.scale
    _check(a.k >= 1, "--k", f"must be at least 1, got {a.k}")
    _check(a.seed >= 0, "--seed", f"must be >= 0, got {a.seed}")
    _check(a.limit is None or a.limit >= 1, "--limit", f"must be at least 1, got {a.limit}")
    _check(0 < lo <= hi <= 1, "--scale", f"needs 0 < LO <= HI <= 1, got {lo} {hi}")
    _check(a.compose_size >= 32, "--compose-size", f"must be at least 32, got {a.compose_size}")
    _check(a.out_size >= 8, "--out-size", f"must be at least 8, got {a.out_size}")
    _check(a.compose_size % a.out_size == 0, "--out-size",
           f"{a.out_size} must divide --compose-size {a.compose_size} (the image is block-averaged)")
    _check(0 < a.mask_threshold <= 1, "--mask-threshold", f"must be in (0, 1], got {a.mask_threshold}")
    _check(a.shard_size >= 1, "--shard-size", f"must be at least 1, got {a.shard_size}")
    _check(1 <= a.jpeg_quality <= 100, "--jpeg-quality", f"must be in [1, 100], got {a.jpeg_quality}")
    _check(a.batch_size >= 1, "--batch-size", f"must be at least 1, got {a.batch_size}")
    _check(a.workers >= 1, "--workers", f"must be at least 1, got {a.workers}")
    _check((a.fg is None) == (a.bg is None), "--fg/--bg", "give both, or neither for the bundled demo set")
    return GenConfig(
        out=a.shards or a.folders, layout="shards" if a.shards else "folders", fg=a.fg, bg=a.bg, k=a.k,
        seed=a.seed, limit=a.limit, scale=(lo, hi), compose_size=a.compose_size, out_size=a.out_size,
        mask_threshold=a.mask_threshold, shard_size=a.shard_size, jpeg_quality=a.jpeg_quality,
        batch_size=a.batch_size, workers=a.workers, device=a.device, composite_backend=a.composite_backend,
        skip_bad=a.skip_bad, overwrite=a.overwrite, quiet=a.quiet, profile=getattr(a, "profile", False),
        depth=getattr(a, "depth", "none"), depth_weights=getattr(a, "depth_weights", None),
        depth_runner=getattr(a, "depth_runner", "auto"), depth_precision=getattr(a, "depth_precision", "auto"),
    )
