"""depth.png encoding: uint16 millimetres, round trip, previews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smalldepthmask.depth import decode_depth_png, depth_to_png16, encode_depth_png, png16_to_depth, preview_image


def test_png16_millimetres_and_clipping():
    depth = np.array([[0.0, 1.2344, 65.6], [np.nan, -1.0, 10.0]], dtype=np.float32)
    png = depth_to_png16(depth)
    assert png.dtype == np.uint16
    assert png.tolist() == [[0, 1234, 65535], [0, 0, 10000]]
    assert png16_to_depth(png)[0, 1] == pytest.approx(1.234)


def test_encode_decode_round_trip():
    depth = np.random.default_rng(0).uniform(0.1, 10, (31, 47)).astype(np.float32)
    data = encode_depth_png(torch.from_numpy(depth))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = decode_depth_png(data)
    assert back.shape == depth.shape and np.abs(back - depth).max() <= 0.0005 + 1e-6
    assert np.array_equal(depth_to_png16(back), depth_to_png16(depth))


def test_png_is_16_bit_grayscale():
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(encode_depth_png(np.full((4, 4), 2.5, np.float32)))) as im:
        assert im.mode == "I;16" and np.asarray(im).max() == 2500


def test_preview_has_scale_bar():
    depth = np.linspace(0.5, 8, 64 * 48, dtype=np.float32).reshape(48, 64)
    image = preview_image(depth, bar_width=70)
    assert image.size == (64 + 70, 48) and image.mode == "RGB"
    near, far = np.asarray(image)[0, 0].astype(int), np.asarray(image)[-1, 63].astype(int)
    assert near.sum() > far.sum()  # near is light, far is dark


def test_encode_depth_png_reads_back_exactly_in_opencv_and_is_deterministic():
    import cv2

    depth = np.random.default_rng(1).uniform(0.5, 12, (40, 56)).astype(np.float32)
    data = encode_depth_png(depth)
    cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert cv.dtype == np.uint16 and np.array_equal(cv, depth_to_png16(depth))
    assert encode_depth_png(torch.from_numpy(depth)) == data


def test_decode_refuses_8_bit_png():
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="not a 16-bit depth PNG"):
        decode_depth_png(buf.getvalue())
