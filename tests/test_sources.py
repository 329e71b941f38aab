"""Tests for smalldepthmask.sources: listing, decoding, rejecting bad inputs, the demo set."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from smalldepthmask.errors import BadInputError, UsageError
from smalldepthmask.sources import (
    IMAGE_EXTS_BG,
    IMAGE_EXTS_FG,
    MAX_PIXELS,
    demo_dirs,
    file_sha256,
    list_images,
    read_background,
    read_foreground,
)

# ---------------------------------------------------------------- helpers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16(path: Path, arr: np.ndarray, color_type: int) -> Path:
    """Write a 16-bit PNG by hand (Pillow cannot write 16-bit RGB/RGBA). arr: [h, w(, c)] uint16."""
    h, w = arr.shape[:2]
    rows = arr.astype(">u2").reshape(h, -1).tobytes()
    stride = len(rows) // h
    raw = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    return path


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height 8-bit gray, with a tiny (wrong) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + _png_chunk(b"IEND", b""))
    return path


def rgba_blob(h: int = 40, w: int = 50) -> np.ndarray:
    """[h, w, 4] uint8: opaque gradient block in the middle, transparent border."""
    a = np.zeros((h, w, 4), np.uint8)
    a[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 3
    a[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 5
    a[..., 2] = 77
    a[5:35, 10:45, 3] = 255
    return a


def assert_bad(path: Path, reader, *words: str) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        reader(path)
    msg = str(info.value)
    assert str(path) in msg
    for word in words:
        assert word in msg.lower(), msg
    assert info.value.path == path
    return info.value


# ---------------------------------------------------------------- list_images


def test_list_images_sorted_filtered_non_recursive(tmp_path: Path) -> None:
    for name in ["b.png", "A.PNG", "c.webp", "d.jpg", "e.JPEG", "notes.txt", "f.gif", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.png").write_bytes(b"x")
    fg = [p.name for p in list_images(tmp_path, "fg")]
    bg = [p.name for p in list_images(str(tmp_path), "bg")]
    assert fg == ["A.PNG", "b.png", "c.webp", "dir.png"]
    assert bg == ["A.PNG", "b.png", "c.webp", "d.jpg", "dir.png", "e.JPEG"]
    assert all(isinstance(p, Path) and p.parent == tmp_path for p in list_images(tmp_path, "fg"))


@pytest.mark.parametrize("kind", ["fg", "bg"])
def test_list_images_missing_dir(tmp_path: Path, kind: str) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UsageError) as info:
        list_images(missing, kind)
    assert f"--{kind}" in str(info.value) and str(missing) in str(info.value)
    assert "does not exist" in str(info.value)
    assert not isinstance(info.value, BadInputError)


def test_list_images_not_a_dir(tmp_path: Path) -> None:
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(UsageError, match="not a directory") as info:
        list_images(f, "bg")
    assert "--bg" in str(info.value) and str(f) in str(info.value)


@pytest.mark.parametrize("kind, exts", [("fg", IMAGE_EXTS_FG), ("bg", IMAGE_EXTS_BG)])
def test_list_images_empty(tmp_path: Path, kind: str, exts: tuple[str, ...]) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    if kind == "fg":
        (tmp_path / "photo.jpg").write_bytes(b"x")  # a background format only
    with pytest.raises(UsageError) as info:
        list_images(tmp_path, kind)
    msg = str(info.value)
    assert f"--{kind}" in msg and str(tmp_path) in msg and "no images" in msg
    for ext in exts:
        assert ext in msg


def test_list_images_bad_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        list_images(tmp_path, "mask")


# ---------------------------------------------------------------- bad inputs


@pytest.fixture(params=["fg", "bg"])
def reader(request):
    return read_foreground if request.param == "fg" else read_background


def test_zero_byte(tmp_path: Path, reader) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert_bad(p, reader, "empty", "0 bytes")


def test_directory_named_like_image(tmp_path: Path, reader) -> None:
    p = tmp_path / "folder.png"
    p.mkdir()
    assert_bad(p, reader, "directory")


def test_missing_file(tmp_path: Path, reader) -> None:
    assert_bad(tmp_path / "gone.png", reader, "not found")


def test_not_an_image(tmp_path: Path, reader) -> None:
    p = tmp_path / "text.png"
    p.write_text("this is not a picture\n" * 20)
    assert_bad(p, reader, "not an image")


def test_truncated_png(tmp_path: Path, reader) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 4), np.uint8)).save(buf, "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert_bad(p, reader, "corrupt or truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_data(tmp_path: Path, reader) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 120, 4), np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    for i in range(idat + 20, idat + 400):
        data[i] ^= 0x5A
    p = tmp_path / "garbled.png"
    p.write_bytes(bytes(data))
    assert_bad(p, reader, "corrupt or truncated")


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (200, 300, 3), np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert_bad(p, read_background, "corrupt or truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("side", [8500, 9500, 20000])  # ours only; Pillow warning; Pillow error
def test_decompression_bomb(tmp_path: Path, reader, side: int) -> None:
    limit_before = Image.MAX_IMAGE_PIXELS
    p = write_png_header_only(tmp_path / f"bomb{side}.png", side, side)
    assert side * side > MAX_PIXELS
    assert_bad(p, reader, "decompression bomb")
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_background_too_small(tmp_path: Path) -> None:
    p = tmp_path / "tiny.jpg"
    Image.new("RGB", (200, 40), "gray").save(p)
    assert_bad(p, read_background, "too small", "200x40", "64")
    assert read_background(p, min_size=32).shape == (40, 200, 3)


def test_foreground_too_small_after_crop(tmp_path: Path) -> None:
    a = np.zeros((100, 100, 4), np.uint8)
    a[40:50, 40:80, 3] = 255  # 40 wide, 10 high object on a big transparent canvas
    p = tmp_path / "speck.png"
    Image.fromarray(a).save(p)
    assert_bad(p, read_foreground, "too small", "40x10")
    assert read_foreground(p, min_size=10).shape == (10, 40, 4)


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_foreground_without_alpha(tmp_path: Path, mode: str) -> None:
    p = tmp_path / f"opaque_{mode}.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).convert(mode).save(p)
    assert_bad(p, read_foreground, "has no alpha channel (needs transparency)")
    assert read_background(p).shape == (64, 64, 3)


def test_foreground_fully_transparent(tmp_path: Path) -> None:
    p = tmp_path / "ghost.png"
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(p)
    assert_bad(p, read_foreground, "alpha is fully transparent")


# ---------------------------------------------------------------- good foregrounds


def test_rgba8_crop_to_alpha_bbox(tmp_path: Path) -> None:
    a = rgba_blob()
    a[20, 3, 3] = 1  # a single faint pixel widens the box to the left
    p = tmp_path / "blob.png"
    Image.fromarray(a).save(p)
    out = read_foreground(p)
    assert out.dtype == np.uint8 and out.shape == (30, 42, 4)
    np.testing.assert_array_equal(out, a[5:35, 3:45])
    assert out.flags["C_CONTIGUOUS"]


def test_straight_alpha_kept(tmp_path: Path) -> None:
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., :3] = (200, 100, 50)
    a[..., 3] = 64  # half-transparent: colour must not be premultiplied
    p = tmp_path / "half.png"
    Image.fromarray(a).save(p)
    np.testing.assert_array_equal(read_foreground(p), a)


def test_palette_with_trns(tmp_path: Path) -> None:
    im = Image.new("P", (40, 30), 0)
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.paste(1, (5, 5, 25, 25))
    im.paste(2, (25, 5, 35, 25))
    p = tmp_path / "pal.png"
    im.save(p, transparency=bytes([0, 255, 128]))
    out = read_foreground(p)
    assert out.shape == (20, 30, 4) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (255, 0, 0, 255)
    assert tuple(out[0, -1]) == (0, 0, 255, 128)


def test_gray_alpha_la(tmp_path: Path) -> None:
    la = np.zeros((40, 30, 2), np.uint8)
    la[..., 0] = 90
    la[10:30, 5:25, 1] = 200
    p = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(p)
    out = read_foreground(p)
    assert out.shape == (20, 20, 4)
    assert (out == (90, 90, 90, 200)).all()


def test_gray16_with_trns(tmp_path: Path) -> None:
    g = np.full((30, 30), 1000, np.uint16)
    g[5:25, 5:25] = [[0, 257, 32896, 65535] * 5]
    p = tmp_path / "g16.png"
    Image.fromarray(g).save(p, transparency=1000)
    out = read_foreground(p)
    assert out.shape == (20, 20, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :4, 0], [0, 1, 128, 255])
    assert (out[..., 3] == 255).all()


def test_rgba16_scaled_not_truncated(tmp_path: Path) -> None:
    vals = np.array([0x0000, 0x00FF, 0x0101, 0x7FFF, 0x8000, 0xFF00, 0xFFFF], np.uint16)
    a = np.zeros((len(vals), 24, 4), np.uint16)
    a[:, :, 0] = vals[:, None]
    a[:, :, 1] = 0xFFFF - vals[:, None]
    a[:, :, 2] = 0x1234
    a[:, :, 3] = 0xFFFF
    a[:, 20:, 3] = 0  # transparent right strip is cropped away
    p = write_png16(tmp_path / "rgba16.png", a, color_type=6)
    a = a[:, :20]
    out = read_foreground(p, min_size=4)
    assert out.shape == (len(vals), 20, 4) and out.dtype == np.uint8
    exact = np.round(a.astype(np.float64) * 255 / 65535)
    assert np.abs(out.astype(int) - exact).max() <= 1  # low byte would be off by up to 255
    assert (out[..., 3] == 255).all()


def test_la16(tmp_path: Path) -> None:
    a = np.zeros((20, 20, 2), np.uint16)
    a[..., 0] = 0xC000
    a[4:16, 4:16, 1] = 0x8080
    p = write_png16(tmp_path / "la16.png", a, color_type=4)
    out = read_foreground(p, min_size=4)
    assert out.shape == (12, 12, 4)
    assert abs(int(out[0, 0, 0]) - 191) <= 1 and abs(int(out[0, 0, 3]) - 128) <= 1


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_with_alpha(tmp_path: Path) -> None:
    a = rgba_blob()
    p = tmp_path / "blob.webp"
    Image.fromarray(a).save(p, lossless=True, exact=True)
    out = read_foreground(p)
    assert out.shape == (30, 35, 4)
    np.testing.assert_array_equal(out, a[5:35, 10:45])


# ---------------------------------------------------------------- good backgrounds


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (80, 70), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    out = read_background(p)
    assert out.shape == (70, 80, 3) and out.dtype == np.uint8
    r, g, b = out[35, 40].astype(int)
    assert r > 220 and g < 40 and b < 40


def test_grayscale_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "gray.jpg"
    Image.new("L", (100, 80), 128).save(p, quality=95)
    out = read_background(p)
    assert out.shape == (80, 100, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 128).max() <= 2
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_exif_rotated_jpeg(tmp_path: Path) -> None:
    stored = np.zeros((80, 120, 3), np.uint8)  # stored landscape, 120 wide
    stored[:30, :30] = (255, 0, 0)  # red block at the stored top-left
    im = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    p = tmp_path / "rotated.jpg"
    im.save(p, quality=95, exif=exif.tobytes())
    out = read_background(p)
    assert out.shape == (120, 80, 3)  # displayed portrait
    r, g, b = out[10, 70].astype(int)  # stored top-left shows at the displayed top-right
    assert r > 200 and g < 50 and b < 50
    assert out[10, 10].max() < 50


def test_background_16bit_gray(tmp_path: Path) -> None:
    g = np.zeros((64, 64), np.uint16)
    g[0, :4] = [0, 257, 32896, 65535]
    g[1:, :] = 40000
    p = tmp_path / "g16.png"
    Image.fromarray(g).save(p)
    out = read_background(p)
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[0, :4, 0], [0, 1, 128, 255])
    assert out[10, 10, 0] == round(40000 * 255 / 65535)


def test_background_rgb16(tmp_path: Path) -> None:
    a = np.full((64, 64, 3), 0x00FF, np.uint16)
    a[..., 1] = 0xFF00
    p = write_png16(tmp_path / "rgb16.png", a, color_type=2)
    out = read_background(p)
    assert out.shape == (64, 64, 3)
    assert out[0, 0, 0] <= 1 and out[0, 0, 1] >= 253


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_background_alpha_dropped(tmp_path: Path, mode: str) -> None:
    a = np.zeros((64, 64, 4), np.uint8)
    a[..., :3] = (30, 60, 90)
    a[:, :32, 3] = 255  # left half opaque, right half transparent
    im = Image.fromarray(a)
    if mode == "LA":
        im = im.convert("LA")
    elif mode == "P":
        im = im.convert("P")
    p = tmp_path / f"alpha_{mode}.png"
    im.save(p, **({"transparency": 0} if mode == "P" else {}))
    out = read_background(p)
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out[:, :32], out[:, 32:])  # colour kept where alpha is 0


def test_background_webp(tmp_path: Path) -> None:
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    p = tmp_path / "bg.webp"
    Image.new("RGB", (96, 64), (10, 120, 240)).save(p, lossless=True)
    out = read_background(p)
    assert out.shape == (64, 96, 3) and tuple(out[5, 5]) == (10, 120, 240)


# ---------------------------------------------------------------- file_sha256


def test_file_sha256(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(BadInputError):
        file_sha256(tmp_path / "missing.bin")


# ---------------------------------------------------------------- demo set


def test_demo_set_reads() -> None:
    fg_dir, bg_dir = demo_dirs()
    fgs, bgs = list_images(fg_dir, "fg"), list_images(bg_dir, "bg")
    assert 3 <= len(fgs) <= 6 and 3 <= len(bgs) <= 6
    for p in fgs:
        rgba = read_foreground(p)
        alpha = rgba[..., 3]
        assert rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4
        assert (alpha == 0).mean() > 0.05 and (alpha == 255).mean() > 0.3  # a real cutout
        assert ((alpha > 0) & (alpha < 255)).any()  # feathered edge
        assert max(rgba.shape[:2]) <= 600
    for p in bgs:
        rgb = read_background(p)
        assert rgb.dtype == np.uint8 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 256


def test_demo_backgrounds_fit_the_compose_size_and_half_are_colour() -> None:
    from smalldepthmask.config import GenConfig
    fg_dir, bg_dir = demo_dirs()
    bgs = list_images(bg_dir, "bg")
    colour = 0
    for p in bgs:
        with Image.open(p) as im:
            assert min(im.size) >= GenConfig.compose_size, f"{p.name} is {im.size}: it would be upscaled"
            rgb = np.asarray(im.convert("RGB")).astype(np.int16)  # [H, W, 3]
        # colour: at least 1 % of the pixels have channels more than 16 levels apart (0 for a grayscale
        # photo stored as RGB; about 6 % for the mostly black deep field, over 90 % for the meadow)
        colour += int(((rgb.max(axis=2) - rgb.min(axis=2)) > 16).mean() > 0.01)
    assert 2 * colour >= len(bgs), f"only {colour} of {len(bgs)} demo backgrounds are in colour"


def test_demo_set_budget_and_provenance() -> None:
    fg_dir, bg_dir = demo_dirs()
    demo = fg_dir.parent
    files = [p for p in demo.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 3_000_000
    provenance = (demo / "PROVENANCE.md").read_text(encoding="utf-8")
    for p in list_images(fg_dir, "fg") + list_images(bg_dir, "bg"):
        rel = f"{p.parent.name}/{p.name}"
        assert rel in provenance, f"{rel} missing from PROVENANCE.md"
        assert file_sha256(p) in provenance, f"checksum of {rel} missing from PROVENANCE.md"
    for word in ["licence", "author", "scikit-image 0.26.0", "GrabCut"]:
        assert word.lower() in provenance.lower()
