"""Composite throughput: the plain-torch reference against the compiled op, on each device present.

    python bench/bench_composite.py [--device all|cpu|cuda] [--sizes 448:224,160:160] [--json PATH]

Uses the bundled demo photographs (decoded with Pillow, foregrounds cropped to their alpha box) and the real
plan (Algorithm 1, scale 0.3-0.6). For each device and size it times the reference and the extension (with and
without the compose output the depth teacher reads; on the CPU with all threads and with one), and prints
samples/s with the ratio to the reference. On CUDA it also reports the bandwidth the kernel achieves: the bytes
it must move (background window read, foreground pixels its taps touch, compose + image + mask written) over
its time, next to a device-to-device copy of the same size timed in the same run (goal: >= 70% of the copy).
Results go to bench/results/composite-<date>-<host>.json unless --json is given.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, print_machine, print_table, save_json  # noqa: E402

from smalldepthmask import _ops  # noqa: E402
from smalldepthmask.bank import Bank, build_bank  # noqa: E402
from smalldepthmask.composite import axis_taps, composite_reference, mask_threshold_count  # noqa: E402
from smalldepthmask.plan import sample_params  # noqa: E402

SCALE = (0.3, 0.6)
DEMO = Path(__file__).resolve().parent.parent / "smalldepthmask" / "data" / "demo"


def demo_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(backgrounds [H, W, 3] uint8, foregrounds [h, w, 4] uint8 cropped to alpha) from the bundled demo set;
    random images if it is missing."""
    bgs, fgs = [], []
    for p in sorted((DEMO / "bg").glob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
            bgs.append(np.asarray(Image.open(p).convert("RGB")))
    for p in sorted((DEMO / "fg").glob("*")):
        if p.suffix.lower() in (".png", ".webp"):
            im = Image.open(p).convert("RGBA")
            box = im.getchannel("A").getbbox()
            fgs.append(np.asarray(im.crop(box) if box else im))
    if not bgs or not fgs:
        rng = np.random.default_rng(0)
        bgs = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
        fgs = [rng.integers(0, 256, (400, 300, 4), dtype=np.uint8) for _ in range(3)]
    return bgs, fgs


def make_batch(bank: Bank, compose: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(1, -(-n // (2 * len(bank.layout.bg_sizes) * len(bank.layout.fg_aspects))))
    p = sample_params(np.arange(n), bank.layout, k, seed, compose, SCALE)
    ip, fp = p.kernel_args(bank.layout)
    return torch.from_numpy(ip), torch.from_numpy(fp)


def bytes_moved(bank: Bank, ip: torch.Tensor, fp: torch.Tensor, compose: int, out: int, want: bool) -> int:
    """Bytes the op must read and write for a batch: each sample's background window, the foreground pixels
    its taps touch (rows x columns with a nonzero weight inside the source), and its outputs."""
    ftab = bank.fg_table.cpu()[ip[:, 3]]
    flip = ip[:, 4] != 0
    ix, wx = axis_taps(fp[:, 0], fp[:, 2], ftab[:, 2], flip, compose)
    iy, wy = axis_taps(fp[:, 1], fp[:, 3], ftab[:, 1], torch.zeros_like(flip), compose)
    total = 0
    for b in range(ip.shape[0]):
        h, w = int(ftab[b, 1]), int(ftab[b, 2])
        cols = ix[b][(wx[b] != 0) & (ix[b] >= 0) & (ix[b] < w)].unique().numel()
        rows = iy[b][(wy[b] != 0) & (iy[b] >= 0) & (iy[b] < h)].unique().numel()
        total += compose * compose * 3 + rows * cols * 4
    total += ip.shape[0] * (out * out * 3 + out * out + (3 * compose * compose * 4 if want else 0))
    return total


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn, device: str, iters: int, warmup: int = 1) -> float:
    """Median seconds per call (CUDA: events around each call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def kernel_seconds(fn, iters: int) -> float | None:
    """Device time per call of the composite kernel alone (torch.profiler), or None if unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
        total = 0.0
        for e in prof.key_averages():
            if "composite_kernel" in e.key:
                total += getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        return total / 1e6 / iters if total > 0 else None
    except Exception as e:  # noqa: BLE001 - the profiler is a nicety
        print(f"(profiler unavailable: {e})")
        return None


def copy_bandwidth(nbytes: int, iters: int) -> float:
    """GB/s of a device-to-device copy of nbytes (read + write counted), CUDA events."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), "cuda", iters, warmup=3)
    return 2 * nbytes / t / 1e9


def bench_device(device: str, sizes, args, rows: list[dict]) -> None:
    bgs, fgs = demo_images()
    for compose, out in sizes:
        with warnings.catch_warnings():  # demo backgrounds under 448 px are upscaled, with a warning
            warnings.simplefilter("ignore")
            bank_cpu = build_bank(bgs, fgs, compose, SCALE)
        bank = bank_cpu.to(device)
        mc = mask_threshold_count(0.5, compose // out)
        size = f"{compose}->{out}"
        is_cuda = device.startswith("cuda")

        # reference (few samples: ~0.1 s per sample at 448 on a CPU)
        ref_rate = None
        if not args.no_reference:
            nb = args.ref_batch if not is_cuda else max(args.ref_batch, 32)
            ip, fp = make_batch(bank_cpu, compose, nb, seed=1)
            ip, fp = ip.to(device), fp.to(device)
            t = time_calls(lambda: composite_reference(bank, ip, fp, compose, out, 0.5, False), device,
                           iters=args.ref_repeats, warmup=1)
            ref_rate = nb / t
            rows.append({"device": device, "size": size, "impl": "reference", "threads": torch.get_num_threads(),
                         "compose": "no", "batch": nb, "samples/s": ref_rate, "ms/sample": 1e3 * t / nb,
                         "x ref": 1.0})

        ok, why = _ops.supports_device(torch.device(device))
        if not ok:
            print(f"extension on {device}: {why} (skipped)")
            continue
        nb = args.cuda_batch if is_cuda else args.batch
        ip_cpu, fp_cpu = make_batch(bank_cpu, compose, nb, seed=2)
        ip, fp = ip_cpu.to(device), fp_cpu.to(device)
        threads = [torch.get_num_threads()] if is_cuda else sorted({torch.get_num_threads(), 1}, reverse=True)
        for want in (False, True):
            def call(want=want):
                return _ops.composite(bank.bg_flat, bank.bg_table, bank.fg_flat, bank.fg_table, ip, fp, compose,
                                      out, mc, want)

            for th in threads:
                old = torch.get_num_threads()
                torch.set_num_threads(th)
                try:
                    t = time_calls(call, device, iters=args.repeats, warmup=2)
                finally:
                    torch.set_num_threads(old)
                row = {"device": device, "size": size, "impl": "ext", "threads": th, "compose": "yes" if want else "no",
                       "batch": nb, "samples/s": nb / t, "ms/sample": 1e3 * t / nb,
                       "x ref": (nb / t) / ref_rate if ref_rate else None}
                if is_cuda:
                    moved = bytes_moved(bank_cpu, ip_cpu, fp_cpu, compose, out, want)
                    tk = kernel_seconds(call, args.repeats)
                    copy = copy_bandwidth(moved, args.repeats * 2)
                    row.update({"MB/batch": moved / 1e6, "op GB/s": moved / t / 1e9,
                                "kernel GB/s": moved / tk / 1e9 if tk else None, "copy GB/s": copy,
                                "% copy": 100 * (moved / (tk or t) / 1e9) / copy})
                rows.append(row)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", help="all (every device present), cpu, cuda")
    ap.add_argument("--sizes", default="448:224,160:160", help="compose:out pairs")
    ap.add_argument("--batch", type=int, default=128, help="samples per call, extension on the CPU")
    ap.add_argument("--cuda-batch", type=int, default=512, help="samples per call, extension on CUDA")
    ap.add_argument("--ref-batch", type=int, default=8, help="samples per call, reference")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls (median)")
    ap.add_argument("--ref-repeats", type=int, default=2)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = args.device.split(",")
    m = machine()
    print_machine(m)
    print(f"extension: {_ops.available()[1]}")
    rows: list[dict] = []
    for d in devices:
        bench_device(d, sizes, args, rows)
    print()
    cols = ["device", "size", "impl", "threads", "compose", "batch", "samples/s", "ms/sample", "x ref"]
    if any("copy GB/s" in r for r in rows):
        cols += ["MB/batch", "op GB/s", "kernel GB/s", "copy GB/s", "% copy"]
    print_table(rows, cols)
    save_json("composite", {"machine": m, "settings": vars(args), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
