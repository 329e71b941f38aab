"""Depth maps as 16-bit PNGs and colour previews.

`depth.png`: single-channel uint16, **millimetres** (value 1234 = 1.234 m), 0 = no depth.
The largest representable depth is 65.535 m; KITTI depths beyond it are clipped to 65535.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..codec import decode_depth_png_mm, encode_depth_png_mm

MM_PER_METRE = 1000.0
PNG16_MAX = 65535
# Preview palette, near to far: (position, RGB).
PALETTE = (
    (0.00, (255, 236, 150)),
    (0.25, (250, 150, 60)),
    (0.50, (200, 60, 90)),
    (0.75, (90, 30, 120)),
    (1.00, (15, 10, 40)),
)


def _as_numpy(depth_m) -> np.ndarray:
    if isinstance(depth_m, torch.Tensor):
        depth_m = depth_m.detach().float().cpu().numpy()
    array = np.asarray(depth_m, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a [H, W] depth map, got shape {array.shape}")
    return array


def depth_to_png16(
    depth_m,  # [H, W] float32 metres (numpy or torch)
) -> np.ndarray:  # [H, W] uint16 millimetres, 0 where not finite
    mm = np.rint(_as_numpy(depth_m) * MM_PER_METRE)
    mm = np.where(np.isfinite(mm), mm, 0)
    return np.clip(mm, 0, PNG16_MAX).astype(np.uint16)


def png16_to_depth(
    png: np.ndarray,  # [H, W] uint16 millimetres
) -> np.ndarray:  # [H, W] float32 metres
    return np.asarray(png, dtype=np.float32) / MM_PER_METRE


def encode_depth_png(
    depth_m,  # [H, W] float32 metres
) -> bytes:  # a 16-bit grayscale PNG of millimetres
    return encode_depth_png_mm(depth_to_png16(depth_m))




def decode_depth_png(
    data: bytes,
) -> np.ndarray:  # [H, W] float32 metres
    return png16_to_depth(decode_depth_png_mm(data))


def colorize(
    t: np.ndarray,  # [H, W] float in [0, 1], 0 = near
) -> np.ndarray:  # [H, W, 3] uint8
    stops = np.array([p for p, _ in PALETTE])
    colours = np.array([c for _, c in PALETTE], dtype=np.float32)
    t = np.clip(t, 0, 1)
    rgb = np.stack([np.interp(t, stops, colours[:, k]) for k in range(3)], axis=-1)
    return np.rint(rgb).astype(np.uint8)


def preview_image(
    depth_m,  # [H, W] float32 metres
    min_m: float | None = None,
    max_m: float | None = None,
    bar_width: int = 70,
) -> Image.Image:
    """Colour preview with a labelled scale bar on the right (near = light, far = dark)."""
    depth = _as_numpy(depth_m)
    finite = depth[np.isfinite(depth)]
    lo = float(min_m if min_m is not None else (np.percentile(finite, 1) if finite.size else 0.0))
    hi = float(max_m if max_m is not None else (np.percentile(finite, 99) if finite.size else 1.0))
    hi = max(hi, lo + 1e-3)
    image = Image.fromarray(colorize((depth - lo) / (hi - lo)))
    return _with_scale_bar(image, lo, hi, bar_width)


def _with_scale_bar(image: Image.Image, lo: float, hi: float, bar_width: int) -> Image.Image:
    height = image.height
    canvas = Image.new("RGB", (image.width + bar_width, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None].repeat(14, axis=1)
    canvas.paste(Image.fromarray(colorize(ramp)), (image.width + 4, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k in range(5):
        y = round(k * (height - 1) / 4)
        value = lo + (hi - lo) * k / 4
        draw.line([(image.width + 18, y), (image.width + 22, y)], fill=(0, 0, 0))
        text_y = min(max(y - 5, 0), max(height - 11, 0))
        draw.text((image.width + 24, text_y), f"{value:.2f} m", fill=(0, 0, 0), font=font)
    return canvas
