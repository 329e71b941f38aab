"""The one mask-PNG codec and the one depth-PNG codec of the package (writer, readers, tools, predict, depth CLI).

- `mask.png`: a 1-bit grayscale PNG; Pillow reads it as mode "1" (0/255 after `.convert("L")`), OpenCV as 0/255.
- `depth.png`: a 16-bit grayscale PNG of uint16 millimetres (0 = no depth); Pillow reads it as mode "I;16".

Both are written by OpenCV (`cv2.imencode`, libpng + zlib), which releases the GIL and costs a fraction of
Pillow's encoder (bench/bench_encode.py): the mask as a bilevel PNG at zlib level 1, the depth with the PNG
"Sub" filter on every row (no per-row adaptive filter search) and zlib level 1: smooth teacher depth turns into
small horizontal differences, ~1/6 of Pillow level 6's CPU time for ~1.3x its size.
The bytes depend only on the array (fixed parameters, no timestamps). Decoding goes through Pillow, as before.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")  # what Pillow may call a 16-bit grayscale PNG
MASK_MODES = ("1", "L")


def _cv2():
    import cv2  # imported on first use: start-up stays free of it where no PNG is written

    return cv2


def encoder_version() -> str:
    """What the PNG bytes depend on (OpenCV's bundled libpng and zlib): part of a gen run's identity."""
    return f"opencv {_cv2().__version__}"


def _imencode(array: np.ndarray, params: list[int]) -> bytes:
    ok, buf = _cv2().imencode(".png", array, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {array.dtype} array of shape {array.shape} as PNG")
    return buf.tobytes()


def _mask_params() -> list[int]:
    cv2 = _cv2()
    return [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, 1]


def _depth_params() -> list[int]:
    cv2 = _cv2()
    return [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_DEFAULT,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def encode_mask_png(
    mask: np.ndarray,  # [H, W] uint8 in {0, 1} (or bool); nonzero = foreground
) -> bytes:  # 1-bit grayscale PNG
    if mask.ndim != 2:
        raise ValueError(f"expected a [H, W] mask, got shape {mask.shape}")
    m = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    return _imencode(m, _mask_params())


def decode_mask_png(data: bytes) -> np.ndarray:  # -> [H, W] bool, True = foreground
    """A 1-bit (or 8-bit gray) mask PNG; values >= 128 of the 8-bit gray reading are foreground."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L")) >= 128


def encode_depth_png_mm(
    mm: np.ndarray,  # [H, W] uint16 millimetres
) -> bytes:  # 16-bit grayscale PNG
    if mm.ndim != 2 or mm.dtype != np.uint16:
        raise ValueError(f"expected a [H, W] uint16 depth map, got {mm.dtype} of shape {mm.shape}")
    return _imencode(np.ascontiguousarray(mm), _depth_params())


def decode_depth_png_mm(data: bytes) -> np.ndarray:  # -> [H, W] uint16 millimetres
    """A 16-bit grayscale PNG; ValueError naming the mode for anything else."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in DEPTH_MODES:
            raise ValueError(f"not a 16-bit depth PNG (mode {im.mode})")
        return np.asarray(im).astype(np.uint16)


def write_mask_png(path: Path, mask: np.ndarray) -> None:  # mask: [H, W] uint8/bool
    Path(path).write_bytes(encode_mask_png(mask))


def write_depth_png_mm(path: Path, mm: np.ndarray) -> None:  # mm: [H, W] uint16 millimetres
    Path(path).write_bytes(encode_depth_png_mm(mm))
