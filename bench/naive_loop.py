"""The baseline: the per-image Pillow loop the way the paper's authors' scripts work.

One sample at a time: open the background and the foreground files, take the maximal square crop at a
random offset, resize it, resize (and maybe flip) the foreground, paste it with its alpha, build the mask
by pasting the thresholded alpha on black, resize both to the out size, save a JPEG and a PNG.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageOps


def naive_sample(bg_path: Path, fg_path: Path, flip: bool, rnd: random.Random, compose: int, out: int,
                 dest: Path, key: str) -> None:
    bg = Image.open(bg_path).convert("RGB")
    fg = Image.open(fg_path).convert("RGBA")
    side = min(bg.size)
    ox, oy = rnd.randint(0, bg.size[0] - side), rnd.randint(0, bg.size[1] - side)
    bg = bg.crop((ox, oy, ox + side, oy + side)).resize((compose, compose), Image.Resampling.BILINEAR)
    if flip:
        fg = ImageOps.mirror(fg)
    scale = rnd.uniform(0.3, 0.6)
    aspect = fg.size[0] / fg.size[1]
    w = max(1, round(compose * math.sqrt(scale * aspect)))
    h = max(1, round(compose * math.sqrt(scale / aspect)))
    fg = fg.resize((w, h), Image.Resampling.BILINEAR)
    cx, cy = rnd.randint(0, compose - 1), rnd.randint(0, compose - 1)
    pos = (cx - w // 2, cy - h // 2)
    bg.paste(fg, pos, fg)
    mask = Image.new("L", (compose, compose), 0)
    mask.paste(fg.getchannel("A").point(lambda a: 255 if a >= 128 else 0), pos)
    bg.resize((out, out), Image.Resampling.BILINEAR).save(dest / f"{key}.jpg", quality=95)
    mask.resize((out, out), Image.Resampling.NEAREST).save(dest / f"{key}.png")


def naive_run(bg_paths: list[Path], fg_paths: list[Path], n: int, compose: int, out: int, dest: Path,
              seed: int = 0) -> int:
    """Make n samples cycling through (bg, fg, flip) like the authors' nested loops; returns n."""
    rnd = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    i = 0
    while i < n:
        for bg in bg_paths:
            for fg in fg_paths:
                for flip in (False, True):
                    if i == n:
                        return n
                    naive_sample(bg, fg, flip, rnd, compose, out, dest, f"{i:08d}")
                    i += 1
    return n
