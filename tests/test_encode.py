"""The mask and depth PNG codecs (smalldepthmask.codec): exact round trips through Pillow and OpenCV, formats,
determinism, and the encoder's sample dicts."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from smalldepthmask import codec
from smalldepthmask.encode import encode_samples


def _mask(seed: int = 0, size: int = 224) -> np.ndarray:  # [H, W] uint8 in {0, 1}: a blob with ragged edges
    y, x = np.mgrid[0:size, 0:size]
    r = np.random.default_rng(seed).normal(0, 6, (size, size))
    return ((x - size / 2) ** 2 + (y - size / 2) ** 2 + r * 40 < (size / 3) ** 2).astype(np.uint8)


def _depth(seed: int = 0, size: int = 224) -> np.ndarray:  # [H, W] uint16 mm: ramp, relief, a sharp box, 0 and max
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    m = 1000 + 9000 * (1 - y) + 150 * np.sin(7 * x + 3 * y) + rng.normal(0, 3, (size, size))
    m[40:90, 60:150] = 1800
    mm = np.clip(np.rint(m), 0, 65535).astype(np.uint16)
    mm[0, 0], mm[0, 1] = 0, 65535
    return mm


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_png_reads_back_exactly_in_pillow_and_opencv(seed):
    mask = _mask(seed)
    data = codec.encode_mask_png(mask)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "1" and im.size == (224, 224)
        as_l = np.asarray(im.convert("L"))
    assert set(np.unique(as_l)) == {0, 255}
    assert np.array_equal(as_l == 255, mask == 1)
    cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert cv.dtype == np.uint8 and np.array_equal(cv == 255, mask == 1) and set(np.unique(cv)) == {0, 255}
    assert np.array_equal(codec.decode_mask_png(data), mask == 1)


def test_mask_png_accepts_bool_and_any_nonzero():
    mask = _mask()
    data = codec.encode_mask_png(mask)
    assert codec.encode_mask_png(mask.astype(bool)) == data
    assert codec.encode_mask_png(mask * np.uint8(255)) == data


@pytest.mark.parametrize("seed", [0, 1])
def test_depth_png_reads_back_exactly_in_pillow_and_opencv(seed):
    mm = _depth(seed)
    data = codec.encode_depth_png_mm(mm)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "I;16" and im.size == (224, 224)
        assert np.array_equal(np.asarray(im), mm)
    cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert cv.dtype == np.uint16 and np.array_equal(cv, mm)
    back = codec.decode_depth_png_mm(data)
    assert back.dtype == np.uint16 and np.array_equal(back, mm)


def test_codecs_are_deterministic():
    mm, mask = _depth(), _mask()
    assert codec.encode_depth_png_mm(mm) == codec.encode_depth_png_mm(mm.copy())
    assert codec.encode_mask_png(mask) == codec.encode_mask_png(mask.copy())
    assert codec.encode_depth_png_mm(mm) != codec.encode_depth_png_mm(_depth(1))


def test_depth_png_is_compressed():
    mm = _depth()  # smooth maps compress well below the 98 KB of stored 224x224x2 bytes
    assert len(codec.encode_depth_png_mm(mm)) < 0.7 * mm.nbytes


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="uint16"):
        codec.encode_depth_png_mm(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        codec.encode_mask_png(np.zeros((2, 4, 4), np.uint8))


def test_decode_depth_refuses_8_bit_png():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="mode L"):
        codec.decode_depth_png_mm(buf.getvalue())


def test_encode_samples_uses_the_codecs():
    masks = np.stack([_mask(0, 32), _mask(1, 32)])
    images = np.zeros((2, 32, 32, 3), np.uint8)
    depth = [codec.encode_depth_png_mm(_depth(0, 32))] * 2
    out = encode_samples(["0", "1"], images, masks, [{"a": 1}, {"a": 2}], 95, depth)
    assert [s["__key__"] for s in out] == ["0", "1"]
    for s, m in zip(out, masks):
        assert np.array_equal(codec.decode_mask_png(s["mask.png"]), m == 1)
        assert np.array_equal(codec.decode_depth_png_mm(s["depth.png"]), _depth(0, 32))
        assert s["jpg"][:2] == b"\xff\xd8"


def test_shard_writer_hash_is_the_files_sha256(tmp_path):
    import hashlib
    import tarfile

    from smalldepthmask.sink import ShardWriter

    w = ShardWriter(tmp_path, 3)
    mask = codec.encode_mask_png(_mask(0, 16))
    w.add({"__key__": "0000000000", "mask.png": mask, "json": b"{}"})
    info = w.commit()
    path = tmp_path / "shard-000003.tar"
    assert info == {"count": 1, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    with tarfile.open(path) as tar:
        assert tar.extractfile("0000000000.mask.png").read() == mask
