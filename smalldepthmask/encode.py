"""Encode: one composited batch -> per-sample dicts of file bytes (jpg, mask.png, depth.png, json).

JPEG goes through simplejpeg (libjpeg-turbo), which releases the GIL, so a pool of threads encodes on all
cores (Pillow's JPEG encoder holds the GIL: two threads were no faster than one); the mask and depth PNGs go
through smalldepthmask.codec (OpenCV, which releases it too; bench/bench_encode.py).
"""

from __future__ import annotations

import json

import numpy as np
import simplejpeg

from .codec import encode_mask_png

KEY_DIGITS = 10


def sample_key(index: int) -> str:
    """WebDataset key of a sample: its global index, zero-padded, no dots."""
    return f"{index:0{KEY_DIGITS}d}"


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """image: [H, W, 3] uint8 -> JPEG bytes (4:4:4 chroma, so thin foreground edges keep their colour)."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB",
                                  colorsubsampling="444")


def encode_mask(mask: np.ndarray) -> bytes:
    """mask: [H, W] uint8 in {0, 1} -> 1-bit PNG bytes (reads back as 0/255 in mode L)."""
    return encode_mask_png(mask)


def encode_json(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def encode_samples(keys: list[str], images: np.ndarray, masks: np.ndarray, records: list[dict],
                   quality: int, depth_pngs: list[bytes] | None = None) -> list[dict]:
    """images: [B, H, W, 3] uint8; masks: [B, H, W] uint8 -> WebDataset sample dicts."""
    out = []
    for i, key in enumerate(keys):
        sample = {"__key__": key, "jpg": encode_jpeg(images[i], quality), "mask.png": encode_mask(masks[i]),
                  "json": encode_json(records[i])}
        if depth_pngs is not None:
            sample["depth.png"] = depth_pngs[i]
        out.append(sample)
    return out
