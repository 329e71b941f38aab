"""Throughput of the DenseDepth teacher (images/s at 448x448) for every available runner.

    .venv/bin/python bench/bench_depth.py                 # CPU runners, batches 1 and 4
    .venv/bin/python bench/bench_depth.py --quick         # batch 1 only, fewer repeats

Random weights (timing does not depend on them). Each runner is prepared first (ONNX export, TensorRT
engine, the timed graph choice of variant "auto" on CUDA; `prepare_s`, not in the timings). Each row:
median of --iters timed runs after --warmup untimed ones; `vs fp32` is the ratio to the torch fp32 eager reference at the same
batch; `err` is the max error relative to that reference's output scale (same input).
Writes JSON to bench/results/depth-<date>-<host>.json (or --json).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, print_machine, save_json  # noqa: E402

from smalldepthmask.depth.densedepth import DenseDepth  # noqa: E402
from smalldepthmask.depth.runners import build_runner, cpu_has_native_bf16  # noqa: E402
from smalldepthmask.errors import UsageError  # noqa: E402

GFLOP_PER_IMAGE_448 = 160.6


def machine_info() -> dict:
    """bench/common's machine description plus what matters for the depth runners."""
    info = machine()
    info.update(
        cpu_native_bf16=cpu_has_native_bf16(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        load_average_at_start=list(os.getloadavg()),
    )
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def random_model() -> DenseDepth:
    torch.manual_seed(0)
    model = DenseDepth().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    return model


def configs(args: argparse.Namespace) -> list[tuple[str, str, str, str, str | None]]:
    """(runner, device, precision, variant, torch.compile mode); the first is the baseline."""
    rows = [("torch", "cpu", "fp32", "reference", None), ("torch", "cpu", "fp32", "fast", None)]
    rows += [("torch", "cpu", "bf16", "reference", None), ("torch", "cpu", "bf16", "fast", None)]
    if args.compile:
        rows += [("torch", "cpu", "bf16", "fast", "default")]
    rows += [("onnxruntime", "cpu", "fp32", "reference", None), ("onnxruntime", "cpu", "fp32", "fast", None)]
    if torch.cuda.is_available() and not args.cpu_only:
        rows += [("torch", "cuda", p, v, None) for p in ("fp16", "bf16") for v in ("reference", "fast", "auto")]
        rows += [("tensorrt", "cuda", p, "auto", None) for p in ("fp16", "bf16")]
    return [r for r in rows if args.runners is None or r[0] in args.runners]


def time_runner(run, x: torch.Tensor, warmup: int, iters: int) -> tuple[list[float], torch.Tensor]:
    """Seconds per call for `iters` calls after `warmup` calls, and the last output."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    out = None
    for _ in range(warmup):
        out = run(x)
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        out = run(x)
        sync()
        times.append(time.perf_counter() - start)
    return times, out


def bench_config(model, config, batches, size, args, baseline: dict) -> list[dict]:
    runner, device, precision, variant, compile_mode = config
    try:
        run = build_runner(model, runner, device, precision, variant, compile_mode=compile_mode)
    except UsageError as e:
        print(f"  skip {runner}/{device}/{precision}/{variant}: {e.message}", flush=True)
        return []
    run.log = lambda msg: None
    start = time.perf_counter()
    run.prepare(max(batches), size, size)  # export / engine / graph choice before the timed calls
    prepare_s = time.perf_counter() - start
    variant = run.variant  # "auto" on CUDA resolves to the timed choice
    rows = []
    for batch in batches:
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)
        times, out = time_runner(run, x, args.warmup, args.iters)
        ips = batch / statistics.median(times)
        ref = baseline.get(batch)
        row = {
            "runner": runner,
            "device": device,
            "precision": precision,
            "variant": variant + ("+compile" if compile_mode else ""),
            "batch": batch,
            "img_per_s": round(ips, 3),
            "best_img_per_s": round(batch / min(times), 3),
            "times_s": [round(t, 4) for t in times],
            "prepare_s": round(prepare_s, 2),
        }
        if ref is None:
            baseline[batch] = {"ips": ips, "out": out.float().cpu()}
        else:
            row["vs_fp32"] = round(ips / ref["ips"], 2)
            row["err_vs_fp32"] = float((out.float().cpu() - ref["out"]).abs().max() / ref["out"].abs().max())
        row["effective_gflop_s"] = round(ips * GFLOP_PER_IMAGE_448 * (size / 448) ** 2, 1)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    name = f"{row['runner']}/{row['device']}/{row['precision']}/{row['variant']}"
    ratio = f"{row.get('vs_fp32', 1.0):5.2f}x"
    err = f"{row['err_vs_fp32']:.1e}" if "err_vs_fp32" in row else "  -    "
    return (
        f"  {name:36s} batch {row['batch']:3d}  {row['img_per_s']:8.3f} img/s "
        f"(best {row['best_img_per_s']:.3f})  {ratio}  err {err}  {row['effective_gflop_s']:.0f} GFLOP/s"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--runners", type=lambda s: set(s.split(",")), help="only these runners")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (inductor) bf16; minutes to compile")
    parser.add_argument("--quick", action="store_true", help="batch 1, 2 iterations")
    parser.add_argument("--json", type=Path, help="output JSON (default bench/results/depth-<date>-<host>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.iters = "1", 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    info = machine_info()
    print_machine(info)
    print(f"DenseDepth {args.size}x{args.size}, random weights, median of {args.iters} after {args.warmup} warm-up")
    model = random_model()
    baseline: dict = {}
    rows = []
    for config in configs(args):
        rows += bench_config(model, config, batches, args.size, args, baseline)
    info["load_average_at_end"] = list(os.getloadavg())
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    save_json("depth", {"machine": info, "size": args.size, "rows": rows}, args.json, stamp=stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
