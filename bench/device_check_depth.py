"""GPU check of the DenseDepth runners (called from bench/device_check.sh on a CUDA machine).

    python bench/device_check_depth.py --out results/depth-device.json [--skip-trt] [--compile]

1. correctness at a small size: CUDA runners (fp32 / bf16 / fp16, reference and fast graphs)
   against the CPU fp32 reference; low precision is judged against the plain network cast to
   the same precision on the GPU (error <= 2x that yardstick);
2. throughput at 448x448, batches 8 and 32, for torch CUDA, ONNX Runtime CUDA (if
   onnxruntime-gpu is installed) and TensorRT (only if `tensorrt` imports);
3. a bf16 matmul FLOP/s measurement in the same run, to put the img/s in context
   (DenseDepth-448 = 160.6 GFLOP per image).
Prints a table and writes JSON to --out. Random weights. Exits 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smalldepthmask.depth.densedepth import DenseDepth
from smalldepthmask.depth.runners import build_runner

GFLOP_PER_IMAGE_448 = 160.6
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_model() -> DenseDepth:
    torch.manual_seed(0)
    model = DenseDepth().eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float().cpu() - ref).abs().max() / ref.abs().max())


def environment() -> dict:
    env = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1)
        )
        env["cuda"] = torch.version.cuda
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        env["ort_providers"] = onnxruntime.get_available_providers()
    if importlib.util.find_spec("tensorrt"):
        try:
            import tensorrt

            env["tensorrt"] = tensorrt.__version__
        except Exception as e:  # noqa: BLE001 - a broken install is reported, not fatal
            env["tensorrt_error"] = repr(e)
    return env


def correctness(model: DenseDepth, size: int, skip_trt: bool, device: str) -> list[dict]:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    rows = []
    cases = [("torch", p, v) for p in ("fp32", "bf16", "fp16") for v in ("reference", "fast")]
    cases += [("onnxruntime", "fp32", "reference")]
    if not skip_trt and importlib.util.find_spec("tensorrt"):
        cases += [("tensorrt", "fp16", "reference"), ("tensorrt", "fp32", "reference")]
    for runner, precision, variant in cases:
        row: dict = {"check": "correctness", "runner": runner, "precision": precision, "variant": variant, "size": size}
        try:
            out = build_runner(model, runner, device, precision, variant)(x.to(device))
            sync(device)
            row["err"] = rel_err(out, ref)
            if precision == "fp32":
                row["limit"] = 1e-4 if runner == "torch" else 5e-3  # torch turns TF32 off; ORT/TRT may use it
            else:
                plain = copy.deepcopy(model).to(device=device, dtype=DTYPES[precision])
                with torch.no_grad():
                    row["yardstick"] = rel_err(plain(x.to(device=device, dtype=DTYPES[precision])), ref)
                row["limit"] = 2 * row["yardstick"]
            row["ok"] = row["err"] <= row["limit"]
        except Exception as e:  # noqa: BLE001 - the check records every failure and goes on
            row.update(ok=None if "needs" in str(e) else False, error=f"{type(e).__name__}: {e}")
        rows.append(row)
        print(
            f"  {runner:12s} {precision:5s} {variant:9s} err {row.get('err', float('nan')):.2e} "
            f"limit {row.get('limit', float('nan')):.2e} ok={row['ok']} {row.get('error', '')}",
            flush=True,
        )
    return rows


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(run, x: torch.Tensor, iters: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        run(x)
    sync(str(x.device))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run(x)
        sync(str(x.device))
        times.append(time.perf_counter() - start)
    return times


def throughput(
    model: DenseDepth, size: int, batches: list[int], iters: int, args: argparse.Namespace, matmul_tflops: float
) -> list[dict]:
    skip_trt, compile_, device = args.skip_trt, args.compile, args.device
    cases = [("torch", p, v, None) for p in ("fp16", "bf16") for v in ("reference", "fast")]
    if compile_:
        cases += [
            ("torch", "fp16", "reference", "max-autotune-no-cudagraphs"),
            ("torch", "fp16", "reference", "reduce-overhead"),
        ]
    cases += [("onnxruntime", "fp32", "reference", None)]
    if not skip_trt and importlib.util.find_spec("tensorrt"):
        cases += [("tensorrt", "fp16", "reference", None)]
    rows = []
    for runner, precision, variant, mode in cases:
        try:
            run = build_runner(model, runner, device, precision, variant, compile_mode=mode)
        except Exception as e:  # noqa: BLE001 - the check records every failure and goes on
            rows.append({"check": "throughput", "runner": runner, "precision": precision, "error": str(e)})
            print(f"  skip {runner} {precision}: {e}", flush=True)
            continue
        for batch in batches:
            row = {
                "check": "throughput",
                "runner": runner,
                "precision": precision,
                "variant": variant,
                "compile": mode,
                "batch": batch,
                "size": size,
            }
            try:
                x = torch.rand(batch, 3, size, size, device=device)
                times = time_calls(run, x, iters)
                ips = batch / statistics.median(times)
                tflops = ips * GFLOP_PER_IMAGE_448 * (size / 448) ** 2 / 1000
                row.update(
                    img_per_s=round(ips, 1),
                    effective_tflops=round(tflops, 1),
                    vs_matmul=round(tflops / matmul_tflops, 3),
                )
            except Exception as e:  # noqa: BLE001 - the check records every failure and goes on
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
            print(
                f"  {runner:12s} {precision:5s} {variant:9s} {mode or ''!s:28s} batch {batch:3d} "
                f"{row.get('img_per_s', float('nan')):9.1f} img/s  {row.get('effective_tflops', float('nan')):7.1f} TFLOP/s "
                f"{row.get('error', '')}",
                flush=True,
            )
    return rows


def bf16_matmul_tflops(device: str, n: int = 8192, iters: int = 20) -> float:
    if torch.device(device).type == "cpu":
        n, iters = 1024, 3
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = time_calls(lambda _: a @ b, a, iters)
    return 2 * n**3 / statistics.median(times) / 1e12


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    parser.add_argument("--check-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--skip-trt", action="store_true", help="do not try TensorRT even if it imports")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile modes (slow to compile)")
    parser.add_argument("--device", default="cuda", help="cpu only to dry-run this script's code paths")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    print("environment: " + json.dumps(env), flush=True)
    result: dict = {"environment": env, "rows": []}
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", flush=True)
        result["skipped"] = "no CUDA device"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    model = random_model()
    try:
        print(f"correctness at {args.check_size}x{args.check_size} vs CPU fp32:", flush=True)
        result["rows"] += correctness(model, args.check_size, args.skip_trt, args.device)
        result["bf16_matmul_tflops"] = round(bf16_matmul_tflops(args.device), 3)
        print(f"bf16 matmul: {result['bf16_matmul_tflops']} TFLOP/s", flush=True)
        print(f"throughput at {args.size}x{args.size}:", flush=True)
        batches = [int(b) for b in args.batches.split(",")]
        result["rows"] += throughput(model, args.size, batches, args.iters, args, result["bf16_matmul_tflops"])
    except Exception:  # noqa: BLE001 - keep what was measured
        result["crash"] = traceback.format_exc()
        print(result["crash"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    failed = [r for r in result["rows"] if r.get("check") == "correctness" and r.get("ok") is False]
    return 1 if failed or "crash" in result else 0


if __name__ == "__main__":
    sys.exit(main())
