"""Host encoders: CPU cost per call (core-ms, thread_time), output size and GIL behaviour of candidate encoders
for the mask PNG, the 16-bit depth PNG and the shard hashing; then the chosen pipeline's cost per triplet.

    python bench/bench_encode.py [--n 32] [--repeats 5] [--json PATH]

Inputs at 224x224: images and masks of a real generated shard (made here with the demo set, --depth none), and
teacher-like depth maps (a 1-10 m plane ramp, low-frequency relief, a few boxes with sharp edges, np.rint of
millimetres to uint16, as the project quantizes). Every candidate is decoded with Pillow and OpenCV and compared
exactly (`lossless` column). `2T speedup` is the wall time of the same work on 1 thread divided by 2 threads:
~2 means the encoder releases the GIL, ~1 that it holds it, or that no second core was free: the `calib` rows
(a regex, which holds the GIL; zlib.compress, which releases it) show what the machine allowed at that moment.
This 2-core machine is shared: the numbers are noisy medians.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
import webdataset as wds
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, print_machine, print_table, save_json  # noqa: E402

from smalldepthmask import codec, gen  # noqa: E402
from smalldepthmask.depth.png import depth_to_png16  # noqa: E402
from smalldepthmask.encode import encode_json, encode_samples, sample_key  # noqa: E402
from smalldepthmask.sink import ShardWriter, _HashingFile, sha256_file  # noqa: E402

SIZE = 224


def teacher_like_depth(n: int, size: int = SIZE, seed: int = 0) -> list[np.ndarray]:  # each [H, W] uint16 mm
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    maps = []
    for _ in range(n):
        a, b = rng.uniform(-0.3, 0.3, 2)
        m = 1.0 + 9.0 * np.clip(1 - y + a * x + b, 0, 1)  # floor/wall ramp, 1..10 m
        for _ in range(3):  # low-frequency relief
            fx, fy, ph = rng.uniform(0.5, 3, 2).tolist() + [rng.uniform(0, 6.3)]
            m += 0.15 * np.sin(2 * np.pi * (fx * x + fy * y) + ph)
        for _ in range(3):  # objects: nearer boxes with sharp edges
            x0, y0 = rng.integers(0, size - 40, 2)
            w, h = rng.integers(20, 80, 2)
            m[y0:y0 + h, x0:x0 + w] = np.minimum(m[y0:y0 + h, x0:x0 + w], rng.uniform(0.8, 4))
        maps.append(np.clip(np.rint(m * 1000.0), 0, 65535).astype(np.uint16))
    return maps


def real_images_masks(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:  # [H, W, 3] uint8, [H, W] uint8 0/1
    out = Path(tempfile.mkdtemp(prefix="bench-enc-"))
    rc = gen.main(["--shards", str(out), "--depth", "none", "--limit", str(n), "--out-size", str(SIZE),
                   "--quiet", "--shard-size", "100000"])
    assert rc == 0
    images, masks = [], []
    with tarfile.open(out / "shard-000000.tar") as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name.endswith(".jpg"):
                images.append(simplejpeg.decode_jpeg(data))
            elif member.name.endswith(".mask.png"):
                masks.append(codec.decode_mask_png(data).astype(np.uint8))
    return images, masks


def _pil_png(array: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _cv_png(array: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(".png", array, params)
    assert ok
    return buf.tobytes()


def mask_candidates() -> dict:
    return {
        "Pillow mode 1, level 6 (old)": lambda m: _pil_png(m.astype(bool), 6),
        "Pillow mode 1, level 1": lambda m: _pil_png(m.astype(bool), 1),
        "OpenCV bilevel, level 1": lambda m: _cv_png(m, [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, 1]),
        "OpenCV bilevel, default": lambda m: _cv_png(m, [cv2.IMWRITE_PNG_BILEVEL, 1]),
        "OpenCV 8-bit L, level 1": lambda m: _cv_png(m * np.uint8(255), [cv2.IMWRITE_PNG_COMPRESSION, 1]),
    }


def depth_candidates() -> dict:
    c, s, f = cv2.IMWRITE_PNG_COMPRESSION, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_FILTER
    strategies = {"default": cv2.IMWRITE_PNG_STRATEGY_DEFAULT, "filtered": cv2.IMWRITE_PNG_STRATEGY_FILTERED,
                  "huffman": cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, "rle": cv2.IMWRITE_PNG_STRATEGY_RLE,
                  "fixed": cv2.IMWRITE_PNG_STRATEGY_FIXED}
    filters = {"all": cv2.IMWRITE_PNG_ALL_FILTERS, "fast": cv2.IMWRITE_PNG_FAST_FILTERS,
               "none": cv2.IMWRITE_PNG_FILTER_NONE, "sub": cv2.IMWRITE_PNG_FILTER_SUB,
               "up": cv2.IMWRITE_PNG_FILTER_UP, "paeth": cv2.IMWRITE_PNG_FILTER_PAETH}
    out = {"Pillow level 6 (old)": lambda d: _pil_png(d, 6), "Pillow level 1": lambda d: _pil_png(d, 1)}
    for level in (1, 3, 6):
        out[f"OpenCV level {level}"] = lambda d, lv=level: _cv_png(d, [c, lv])
    for name, st in strategies.items():
        out[f"OpenCV level 1, {name}"] = lambda d, st=st: _cv_png(d, [c, 1, s, st])
    for fname, fl in filters.items():
        for sname in ("default", "huffman", "rle"):
            out[f"OpenCV level 1, {sname}, filter {fname}"] = \
                lambda d, fl=fl, st=strategies[sname]: _cv_png(d, [c, 1, s, st, f, fl])
    out["OpenCV level 0 (stored)"] = lambda d: _cv_png(d, [c, 0])
    out["codec.encode_depth_png_mm (chosen)"] = codec.encode_depth_png_mm
    return out


def lossless(data: bytes, ref: np.ndarray, is_mask: bool) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        pil = np.asarray(im.convert("L")) >= 128 if is_mask else np.asarray(im)
    cv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    want = ref.astype(bool) if is_mask else ref
    cv = cv >= 128 if is_mask else cv
    return bool(np.array_equal(pil, want) and np.array_equal(cv, want) and cv.dtype == (bool if is_mask else ref.dtype))


def core_ms(fn, inputs: list, repeats: int) -> float:
    """Median over `repeats` of the thread CPU time per call (ms), after one warm-up pass."""
    for x in inputs:
        fn(x)
    per = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for x in inputs:
            fn(x)
        per.append((time.thread_time() - t0) / len(inputs) * 1e3)
    return statistics.median(per)


def two_thread_speedup(fn, inputs: list, repeats: int, loops: int = 4) -> tuple[float, float]:
    """(wall(all work on 1 thread) / wall(the same work split over 2 threads), process CPU / wall while 2 threads
    run): medians of `repeats`. An encoder that holds the GIL cannot use more than ~1.0 core, whatever the load."""
    work = inputs * loops

    def run(items):
        for x in items:
            fn(x)

    ratios, cores = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(work)
        one = time.perf_counter() - t0
        threads = [threading.Thread(target=run, args=(work[k::2],)) for k in range(2)]
        t0, c0 = time.perf_counter(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        ratios.append(one / wall)
        cores.append((time.process_time() - c0) / wall)
    return statistics.median(ratios), statistics.median(cores)


def candidate_rows(kind: str, cands: dict, inputs: list, repeats: int) -> list[dict]:
    rows = []
    for name, fn in cands.items():
        outs = [fn(x) for x in inputs]
        rows.append({"part": kind, "candidate": name, "core-ms": core_ms(fn, inputs, repeats),
                     "KB": statistics.mean(len(o) for o in outs) / 1024,
                     "lossless": all(lossless(o, x, kind == "mask") for o, x in zip(outs, inputs)),
                     "deterministic": all(o == fn(x) for o, x in zip(outs, inputs)),
                     **_scaling(fn, inputs, repeats)})
    return rows


def gil_free_share(fn, inputs: list, seconds: float = 0.25) -> float:
    """CPU a pure-Python spinner thread gets while `fn` runs in a loop on another thread, over the encoder's CPU.

    With a 0.1 ms switch interval, ~1 means the encoder's C work runs without the GIL (both threads progress), ~0
    that it holds the GIL (the spinner waits). Machine load slows both threads alike, so this is steadier than
    the wall-clock speedup on a shared machine."""
    done, enc_cpu = threading.Event(), []

    def encoder():
        t0 = time.thread_time()
        while not done.is_set():
            for x in inputs:
                fn(x)
        enc_cpu.append(time.thread_time() - t0)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        t = threading.Thread(target=encoder)
        t.start()
        t0, end, n = time.thread_time(), time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            n += 1
        spin = time.thread_time() - t0
        done.set()
        t.join()
    finally:
        sys.setswitchinterval(old)
    return spin / max(enc_cpu[0], 1e-9)


def _scaling(fn, inputs: list, repeats: int) -> dict:
    speedup, cores = two_thread_speedup(fn, inputs, max(1, repeats // 2))
    return {"2T speedup": speedup, "2T cores used": cores, "GIL-free share": gil_free_share(fn, inputs)}


def hash_rows(shard: bytes, per_triplet: int, repeats: int) -> list[dict]:
    """sha256 of a shard's bytes: in tar-sized pieces as written (old) vs large blocks read back from the file."""
    pieces = []  # the write pattern TarWriter produces: 512-byte headers and file bodies
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        for m in tar.getmembers():
            pieces += [b"h" * 512, shard[m.offset_data:m.offset_data + m.size]]
    blocks = [shard[i:i + (1 << 20)] for i in range(0, len(shard), 1 << 20)]

    def by(parts):
        def once(_):
            h = hashlib.sha256()
            for p in parts:
                h.update(p)
            return h.digest()
        return once

    rows = []
    for name, parts in (("sha256 per write (tar pieces)", pieces), ("sha256 of 1 MiB blocks", blocks)):
        fn = by(parts)
        rows.append({"part": "hash", "candidate": name, "core-ms": core_ms(fn, [0], repeats) / per_triplet,
                     "KB": None, "lossless": None, "deterministic": None,
                     **_scaling(fn, [0], repeats)})
    return rows


def calibration_rows(repeats: int) -> list[dict]:
    """Known references for the GIL columns: a regex backtrack holds the GIL, zlib.compress of 256 KB releases it."""
    data = np.random.default_rng(0).integers(0, 16, 1 << 18, dtype=np.uint8).tobytes()
    cands = {"re backtracking (holds the GIL)": lambda _: re.match(r"(a+)+b", "a" * 16),
             "zlib.compress 256 KB (releases the GIL)": lambda _: zlib.compress(data, 1)}
    return [{"part": "calib", "candidate": k, "core-ms": core_ms(fn, [0], repeats), **_scaling(fn, [0], repeats)}
            for k, fn in cands.items()]


def _records(n: int) -> list[dict]:
    return [{"i": i, "bg": "x.jpg", "fg": "y.png", "box": [1, 2, 3, 4], "flip": False} for i in range(n)]


def _samples(images, masks, depths, quality: int) -> list[dict]:
    n = len(images)
    return encode_samples([sample_key(i) for i in range(n)], np.stack(images), np.stack(masks), _records(n), quality,
                          [codec.encode_depth_png_mm(d) for d in depths])


def tar_rows(samples: list[dict], repeats: int) -> list[dict]:
    """The tar writer alone, hashing every write (as sink.ShardWriter does), hashing the file once when done,
    and ShardWriter itself (tar + per-write sha256 + fsync + rename)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-enc-tar-"))

    def plain(wrap, hash_file=False):
        def once(_):
            path = tempfile.mkstemp(dir=tmp)[1]
            with open(path, "wb") as f:
                tw = wds.TarWriter(wrap(f), encoder=False, mtime=0)
                for s in samples:
                    tw.write(s)
                tw.close()
            return sha256_file(Path(path)) if hash_file else None
        return once

    def shard_writer(_):
        w = ShardWriter(Path(tempfile.mkdtemp(dir=tmp)), 0)
        for s in samples:
            w.add(s)
        return w.commit()

    cands = {"tar write, no hash": plain(lambda f: f),
             "tar write + sha256 per write (as ShardWriter)": plain(_HashingFile),
             "tar write + sha256 of the file read back once": plain(lambda f: f, hash_file=True),
             "ShardWriter (tar + sha256 per write + fsync)": shard_writer}
    return [{"part": "tar", "candidate": k, "core-ms": core_ms(fn, [0], repeats) / len(samples), **_scaling(fn, [0], repeats)}
            for k, fn in cands.items()]


def pipeline(images, masks, depths, quality: int, repeats: int) -> dict:
    """Per-triplet core-ms of the chosen pipeline, part by part, and the whole (encode + tar write + hash)."""
    n = len(images)
    records = _records(n)
    parts = {
        "jpeg q95 4:4:4 (simplejpeg)": lambda i: simplejpeg.encode_jpeg(images[i], quality=quality,
                                                                        colorspace="RGB", colorsubsampling="444"),
        "mask png": lambda i: codec.encode_mask_png(masks[i]),
        "depth png": lambda i: codec.encode_depth_png_mm(depths[i]),
        "json": lambda i: encode_json(records[i]),
    }
    out = {k: core_ms(fn, list(range(n)), repeats) for k, fn in parts.items()}
    samples = _samples(images, masks, depths, quality)
    tmp = Path(tempfile.mkdtemp(prefix="bench-enc-tar-"))

    def write_shard(_):
        w = ShardWriter(tmp, 0)
        for s in samples:
            w.add(s)
        return w.commit()

    out["tar write + sha256 (ShardWriter, per write, incl. fsync)"] = core_ms(write_shard, [0], repeats) / n
    out["total (target <= 2.0)"] = sum(out.values())

    def triplet(i):
        s = encode_samples([sample_key(i)], images[i][None], masks[i][None], [records[i]], quality,
                           [codec.encode_depth_png_mm(depths[i])])
        return s

    speedup, cores = two_thread_speedup(triplet, list(range(n)), repeats, loops=8)
    out["encode: 2-thread speedup (wall 1T / wall 2T)"] = speedup
    out["encode: cores used by 2 threads"] = cores
    data = np.random.default_rng(0).integers(0, 16, 1 << 18, dtype=np.uint8).tobytes()
    out["(free cores now) zlib.compress 2-thread speedup"] = two_thread_speedup(
        lambda _: zlib.compress(data, 1), [0], repeats, loops=16)[0]
    out["encode: GIL-free share"] = gil_free_share(triplet, list(range(n)))
    metres = [d.astype(np.float32) / 1000 for d in depths]
    out["(CPU path only, not in total) depth_to_png16: float32 m -> uint16 mm"] = \
        core_ms(depth_to_png16, metres, repeats)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="samples per measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    m = machine()
    m.update(opencv=cv2.__version__, pillow=Image.__version__, simplejpeg=simplejpeg.__version__)
    m["loadavg_1min"] = os.getloadavg()[0]
    print_machine(m)
    images, masks = real_images_masks(args.n)
    depths = teacher_like_depth(args.n)
    rows = candidate_rows("mask", mask_candidates(), masks, args.repeats)
    rows += candidate_rows("depth", depth_candidates(), depths, args.repeats)
    jpeg = lambda im: simplejpeg.encode_jpeg(im, quality=args.quality, colorspace="RGB", colorsubsampling="444")  # noqa: E731
    rows.append({"part": "jpeg", "candidate": f"simplejpeg q{args.quality} 4:4:4", "core-ms": core_ms(jpeg, images, args.repeats),
                 "KB": statistics.mean(len(jpeg(x)) for x in images) / 1024, **_scaling(jpeg, images, args.repeats)})
    buf = io.BytesIO()
    tw = wds.TarWriter(buf, encoder=False, mtime=0)
    for i in range(args.n):
        tw.write({"__key__": sample_key(i), "jpg": simplejpeg.encode_jpeg(images[i], quality=args.quality),
                  "mask.png": codec.encode_mask_png(masks[i]), "depth.png": codec.encode_depth_png_mm(depths[i])})
    tw.close()
    rows += hash_rows(buf.getvalue(), args.n, args.repeats)
    rows += tar_rows(_samples(images, masks, depths, args.quality), args.repeats)
    rows += calibration_rows(args.repeats)
    print_table(rows, ["part", "candidate", "core-ms", "KB", "lossless", "deterministic", "2T speedup",
                       "2T cores used", "GIL-free share"])
    pipe = pipeline(images, masks, depths, args.quality, args.repeats)
    print(f"\nchosen pipeline, per triplet at {SIZE}x{SIZE} (core-ms = thread CPU time, median of {args.repeats}):")
    print_table([{"part": k, "core-ms": v} for k, v in pipe.items()], ["part", "core-ms"])
    save_json("encode", {"machine": m, "n": args.n, "repeats": args.repeats, "candidates": rows, "pipeline": pipe,
                         "command": "python bench/bench_encode.py " + " ".join(argv or sys.argv[1:])},
              path=args.json, stamp=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
