"""Finding and decoding the input images: foreground cutouts (RGBA) and background photos (RGB).

Every problem with one input file is raised as `BadInputError(path, reason)`; problems with a
directory flag (`--fg DIR`, `--bg DIR`) are raised as `UsageError`.

Conversion rules:
- 16-bit grayscale (Pillow modes I;16*, I) is scaled to 8 bit with rounding (v * 255 / 65535),
  not clipped as Pillow's own I;16 -> L conversion does.  16-bit RGB/RGBA/LA PNGs are reduced to
  8 bit by Pillow's decoder (high byte, i.e. floor(v / 256)), at most one level from exact rounding.
- A foreground needs transparency: RGBA, LA, PA, or P/L/RGB with a PNG tRNS entry.
- A background with an alpha channel keeps its colour channels as stored; the alpha is dropped.
- CMYK and other colour modes go through Pillow's `convert("RGB")` (no ICC colour management).
- EXIF orientation is applied to both kinds (`ImageOps.exif_transpose`).
- Pillow's global settings (`LOAD_TRUNCATED_IMAGES`, `MAX_IMAGE_PIXELS`) are read, never changed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInputError, UsageError

IMAGE_EXTS_FG = (".png", ".webp")
IMAGE_EXTS_BG = (".jpg", ".jpeg", ".png", ".webp")
MAX_PIXELS = 64_000_000  # larger = decompression bomb -> bad input

_EXTS = {"fg": IMAGE_EXTS_FG, "bg": IMAGE_EXTS_BG}
_SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_DEMO_DIR = Path(__file__).resolve().parent / "data" / "demo"


# ---------------------------------------------------------------- listing


def list_images(directory: str | Path, kind: str) -> list[Path]:
    """Image files directly in `directory` for `kind` ("fg" or "bg"), sorted by name.

    Matches the kind's extensions case-insensitively; hidden names (starting with ".", such as
    macOS "._x.png" sidecars) are skipped.  Entries are not checked here: a directory or broken
    link named like an image is returned, so that `read_*` reports it as a bad input.
    """
    if kind not in _EXTS:
        raise ValueError(f"kind must be 'fg' or 'bg', not {kind!r}")
    flag, exts = f"--{kind}", _EXTS[kind]
    d = Path(directory)
    if not d.exists():
        raise UsageError(f"{flag} {d}: directory does not exist")
    if not d.is_dir():
        raise UsageError(f"{flag} {d}: not a directory")
    try:
        entries = list(d.iterdir())
    except OSError as e:
        raise UsageError(f"{flag} {d}: cannot list directory ({e.strerror or e})") from e
    found = [p for p in entries if not p.name.startswith(".") and p.suffix.lower() in exts]
    if not found:
        raise UsageError(f"{flag} {d}: no images found (accepted extensions: {', '.join(exts)})")
    return sorted(found, key=lambda p: p.name)


# ---------------------------------------------------------------- decoding


def _check_file(path: Path) -> None:
    """Reject what is not a non-empty regular file before Pillow sees it."""
    if path.is_dir():
        raise BadInputError(path, "is a directory, not an image file")
    if not path.exists():
        raise BadInputError(path, "file not found (or a broken link)")
    if not path.is_file():
        raise BadInputError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise BadInputError(path, "empty file (0 bytes)")


def _bomb_reason(width: int, height: int) -> str:
    return (f"image is {width}x{height} = {width * height:,} pixels, over the "
            f"{MAX_PIXELS:,} limit (decompression bomb?)")


def _decode(path: Path) -> Image.Image:
    """Open and fully decode `path`, raising BadInputError for anything unreadable.

    The pixel count is checked from the header before any pixel data is decoded.
    """
    _check_file(path)
    with warnings.catch_warnings():
        # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and twice that.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise BadInputError(path, _bomb_reason(width, height))
                im.load()
                return _upright(im)
        except BadInputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadInputError(path, f"decompression bomb: {e}") from e
        except UnidentifiedImageError as e:
            raise BadInputError(path, "not an image (format not recognised)") from e
        except PermissionError as e:
            raise BadInputError(path, "cannot open file (permission denied)") from e
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure means unusable data
            raise BadInputError(path, f"corrupt or truncated image ({_short(e)})") from e


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; an unreadable EXIF block leaves the image as stored."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF is not worth rejecting a decodable image
        return im.copy()
    return out if out is not None else im.copy()


def _gray16_to_8(im: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit int holding 16-bit) grayscale -> [h, w] uint8, rounded, not clipped."""
    a = np.asarray(im).astype(np.int64)  # [h, w]
    a = np.clip(a, 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _gray16_rgba(im: Image.Image) -> np.ndarray:
    """16-bit grayscale with an optional tRNS key -> [h, w, 4] uint8 RGBA."""
    raw = np.asarray(im)  # [h, w] 16-bit values
    gray = _gray16_to_8(im)  # [h, w] uint8
    key = im.info.get("transparency")
    alpha = np.full(gray.shape, 255, np.uint8)  # [h, w] uint8
    if isinstance(key, int):
        alpha[raw == key] = 0
    return np.dstack([gray, gray, gray, alpha])


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _to_rgba(im: Image.Image) -> np.ndarray:
    """Decoded image with transparency -> [h, w, 4] uint8 straight-alpha RGBA."""
    if im.mode in _SIXTEEN_BIT_GRAY:
        return _gray16_rgba(im)
    if im.mode != "RGBA":
        im = im.convert("RGBA")  # P+tRNS, LA, PA, L/RGB+tRNS; RGBa/La are un-premultiplied
    return np.array(im, dtype=np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any decoded image -> [H, W, 3] uint8 RGB; an alpha channel is dropped."""
    if im.mode in _SIXTEEN_BIT_GRAY:
        gray = _gray16_to_8(im)  # [H, W] uint8
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA")  # avoids Pillow's warning for byte-string tRNS
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)


def _alpha_bbox(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the pixels where alpha > 0; `alpha` is [h, w] uint8, not all zero."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _check_min_size(path: Path, width: int, height: int, min_size: int, what: str) -> None:
    if min(width, height) < min_size:
        raise BadInputError(path, f"{what} {width}x{height} is too small "
                                  f"(short side under {min_size} px)")


# ---------------------------------------------------------------- public readers


def read_foreground(path: Path, min_size: int = 16) -> np.ndarray:
    """Foreground cutout -> [h, w, 4] uint8 straight-alpha RGBA, cropped to alpha > 0."""
    path = Path(path)
    im = _decode(path)
    if not _has_alpha(im):
        raise BadInputError(path, "has no alpha channel (needs transparency)")
    rgba = _to_rgba(im)  # [h, w, 4] uint8
    alpha = rgba[:, :, 3]  # [h, w] uint8
    if not alpha.any():
        raise BadInputError(path, "alpha is fully transparent")
    y0, y1, x0, x1 = _alpha_bbox(alpha)
    rgba = np.ascontiguousarray(rgba[y0:y1, x0:x1])  # [h', w', 4] uint8
    _check_min_size(path, rgba.shape[1], rgba.shape[0], min_size, "object (cropped to its alpha)")
    return rgba


def read_background(path: Path, min_size: int = 64) -> np.ndarray:
    """Background photo -> [H, W, 3] uint8 RGB, EXIF orientation applied."""
    path = Path(path)
    im = _decode(path)
    _check_min_size(path, im.width, im.height, min_size, "image")
    return _to_rgb(im)  # [H, W, 3] uint8


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of an input file's bytes (sink.sha256_file); an unreadable file is a BadInputError."""
    from .sink import sha256_file

    try:
        return sha256_file(path)
    except OSError as e:
        raise BadInputError(path, f"cannot read file ({e.strerror or e})") from e


def demo_dirs() -> tuple[Path, Path]:
    """(fg_dir, bg_dir) of the demo set bundled with the package."""
    return _DEMO_DIR / "fg", _DEMO_DIR / "bg"
