"""GPU check of the DenseDepth teacher (called from bench/device_check.sh on a CUDA machine).

    python bench/device_check_depth.py --out results/depth-device.json [--batch 64] [--skip-trt] [--compile]
    python bench/device_check_depth.py --dry-run --out /tmp/d.json   # the same code paths on the CPU, tiny

1. precision x runner on this device: what each combination resolves to, or its one-line refusal;
2. correctness at a small size: every accepted runner/precision/graph against the CPU fp32 reference
   (low precision judged against the plain network cast to that precision: error <= 2x that yardstick);
   ONNX Runtime CUDA called from a side stream gives the same output as from its own stream;
3. prepare at the gen shape (448, --batch): the timed choice of graph (a second prepare must find it
   remembered), TensorRT's engine build with profile 1..B and its reload from the cache, timed;
4. no host sync in the steady state: a prepared fp16 teacher runs batches under
   torch.cuda.set_sync_debug_mode("error");
5. cuda:N: with more than one GPU, the runners on the last GPU keep their work there;
6. throughput at 448 x --batch for each runner (prepare excluded), with a bf16 matmul FLOP/s measured in
   the same run for context (DenseDepth-448 = 160.6 GFLOP per image, the fast graph 98.4).
Random weights. Prints each result as it goes, writes JSON to --out, exits 1 if a check fails.
Sections past --budget seconds are skipped and recorded as such.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smalldepthmask.depth.conventions import CONVENTIONS  # noqa: E402
from smalldepthmask.depth.densedepth import DenseDepth  # noqa: E402
from smalldepthmask.depth.runners import (  # noqa: E402
    PRECISIONS, build_runner, median_seconds, resolve_runner_precision,
)
from smalldepthmask.depth.teacher import Teacher  # noqa: E402
from smalldepthmask.errors import UsageError  # noqa: E402

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


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def environment() -> dict:
    env = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(),
                   memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   bf16=torch.cuda.is_bf16_supported())
    if have("onnxruntime"):
        import onnxruntime

        env.update(onnxruntime=onnxruntime.__version__, ort_providers=onnxruntime.get_available_providers())
    if have("tensorrt"):
        try:
            import tensorrt

            env["tensorrt"] = tensorrt.__version__
        except Exception as e:  # noqa: BLE001 - a broken install is reported, not fatal
            env["tensorrt_error"] = repr(e)
    return env


class Check:
    """Collects rows, prints them as they come, and knows how much of the time budget is left."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.rows, self.start = args, [], time.perf_counter()

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.start)

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        print("  " + json.dumps(row, default=str), flush=True)
        return row

    def guarded(self, row: dict, fn) -> dict:
        """Run fn(row) recording any exception in the row (ok=False, except a 'needs X' refusal: ok=None)."""
        if self.left() < 10:
            return self.add({**row, "ok": None, "skipped": "out of time budget"})
        try:
            fn(row)
        except Exception as e:  # noqa: BLE001 - the check records every failure and goes on
            needs = isinstance(e, UsageError) and "needs" in str(e)
            row.update(ok=None if needs else False, error=f"{type(e).__name__}: {e}")
        return self.add(row)


def runners_here(args) -> list[str]:
    names = ["torch", "onnxruntime"]
    if not args.skip_trt and have("tensorrt") and args.device != "cpu":
        names.append("tensorrt")
    return names


def precision_table(check: Check, device: torch.device) -> None:
    for runner in ("torch", "onnxruntime", "tensorrt"):
        for precision in PRECISIONS:
            row = {"check": "precision", "runner": runner, "asked": precision}
            try:
                row.update(resolved=resolve_runner_precision(runner, precision, device), ok=True)
            except UsageError as e:
                row.update(refused=e.message, ok="\n" not in e.message)
            check.add(row)


def correctness(check: Check, model: DenseDepth, args) -> None:
    size, device = args.check_size, torch.device(args.device)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    for runner in runners_here(args):
        for precision in ("fp32", "bf16", "fp16"):
            for variant in ("reference", "fast"):
                row = {"check": "correctness", "runner": runner, "precision": precision, "variant": variant}
                try:
                    resolve_runner_precision(runner, precision, device)
                except UsageError as e:  # refused before anything starts (the precision section shows it)
                    check.add({**row, "ok": None, "refused": e.message})
                    continue

                def run(row, runner=runner, precision=precision, variant=variant):
                    out = build_runner(model, runner, device, precision, variant)(x.to(device))
                    row["err"] = rel_err(out, ref)
                    if precision == "fp32":
                        row["limit"] = 1e-4 if runner == "torch" else 5e-3  # torch turns TF32 off; ORT/TRT may not
                    else:
                        plain = copy.deepcopy(model).to(device=device, dtype=DTYPES[precision])
                        with torch.no_grad():
                            row["yardstick"] = rel_err(plain(x.to(device=device, dtype=DTYPES[precision])), ref)
                        row["limit"] = 2 * row["yardstick"]
                    row["ok"] = row["err"] <= row["limit"]

                check.guarded(row, run)
    if device.type == "cuda" and "onnxruntime" in runners_here(args):
        def side_stream(row):
            run = build_runner(model, "onnxruntime", device, "fp32", "reference")
            xd = x.to(device)
            own = run(xd)
            side = torch.cuda.Stream(device)
            with torch.cuda.stream(side):
                other = run(xd)
            torch.cuda.synchronize(device)
            row["ok"] = bool(torch.equal(own, other))

        check.guarded({"check": "onnxruntime side stream"}, side_stream)


def prepare_flow(check: Check, model: DenseDepth, args) -> None:
    device, size, batch = torch.device(args.device), args.size, args.batch
    cases = [("torch", "fp16" if device.type == "cuda" else "fp32", "timed")]
    if "tensorrt" in runners_here(args):
        cases += [("tensorrt", "fp16", "reference"), ("tensorrt", "bf16", "reference")]
    for runner, precision, variant in cases:
        row = {"check": "prepare", "runner": runner, "precision": precision, "variant": variant, "batch": batch}

        def run(row, runner=runner, precision=precision, variant=variant):
            lines: list[str] = []
            for attempt in ("first", "second"):
                teacher = Teacher(model, build_runner(model, runner, device, precision, variant), CONVENTIONS["nyu"])
                info = teacher.prepare(batch, size, size, log=lines.append)
                row[f"{attempt}_s"] = round(info["seconds"], 2)
                row[f"{attempt}_info"] = {k: v for k, v in info.items() if k != "seconds"}
            row["messages"] = lines
            second = row["second_info"]
            remembered = "variant_timing" not in second or second["variant_timing"]["cached"]
            rebuilt = second.get("engine_build_s") is not None
            row["ok"] = remembered and not rebuilt and all(line.count("\n") == 0 for line in lines)

        check.guarded(row, run)


def no_sync(check: Check, model: DenseDepth, args) -> None:
    device = torch.device(args.device)
    if device.type != "cuda":
        check.add({"check": "no sync in steady state", "ok": None, "skipped": "CPU"})
        return

    def run(row):
        teacher = Teacher(model, build_runner(model, "torch", device, "fp16", "reference"), CONVENTIONS["nyu"])
        teacher.prepare(args.batch, args.check_size, args.check_size, log=lambda m: None)
        x = torch.rand(args.batch, 3, args.check_size, args.check_size, device=device)
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(4):
                teacher(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize(device)
        row["ok"] = True

    check.guarded({"check": "no sync in steady state", "runner": "torch", "precision": "fp16"}, run)


def other_gpu(check: Check, model: DenseDepth, args) -> None:
    if args.device == "cpu" or torch.cuda.device_count() < 2:
        check.add({"check": "cuda:N", "ok": None, "skipped": "fewer than 2 GPUs"})
        return
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    for runner in runners_here(args):
        def run(row, runner=runner):
            out = build_runner(model, runner, last, "fp32", "reference")(torch.rand(1, 3, 64, 64, device=last))
            row.update(out_device=str(out.device), ok=out.device == last)

        check.guarded({"check": "cuda:N", "runner": runner, "device": str(last)}, run)


def throughput(check: Check, model: DenseDepth, args, matmul_tflops: float) -> None:
    device, size, batch = torch.device(args.device), args.size, args.batch
    low = ("fp16", "bf16") if device.type == "cuda" else ("bf16",)
    cases = [("torch", p, v, None) for p in low for v in ("reference", "fast")]
    if args.compile:
        cases += [("torch", "fp16", "fast", "max-autotune-no-cudagraphs")]
    cases += [("onnxruntime", "fp16" if device.type == "cuda" else "fp32", "fast", None)]
    if "tensorrt" in runners_here(args):
        cases += [("tensorrt", p, v, None) for p in ("fp16", "bf16") for v in ("reference", "fast")]
    for runner, precision, variant, mode in cases:
        row = {"check": "throughput", "runner": runner, "precision": precision, "variant": variant,
               "compile": mode, "batch": batch, "size": size}

        def run(row, runner=runner, precision=precision, variant=variant, mode=mode):
            runner_ = build_runner(model, runner, device, precision, variant, compile_mode=mode)
            runner_.log = lambda m: None
            t0 = time.perf_counter()
            runner_.prepare(batch, size, size)
            row["prepare_s"] = round(time.perf_counter() - t0, 2)
            x = torch.rand(batch, 3, size, size, device=device)
            seconds = median_seconds(lambda: runner_(x), device, 2, args.iters)
            ips = batch / seconds
            gflop = GFLOP_PER_IMAGE_448 * (size / 448) ** 2
            row.update(img_per_s=round(ips, 1), effective_tflops=round(ips * gflop / 1000, 2),
                       vs_bf16_matmul=round(ips * gflop / 1000 / matmul_tflops, 3), ok=True)

        check.guarded(row, run)


def bf16_matmul_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    if device.type == "cpu":
        n, iters = 512, 2
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return 2 * n**3 / median_seconds(lambda: a @ b, device, 2, iters) / 1e12


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    parser.add_argument("--check-size", type=int, default=64, help="image side of the correctness checks")
    parser.add_argument("--size", type=int, default=448, help="image side of prepare and throughput")
    parser.add_argument("--batch", type=int, default=64, help="batch size (the gen default)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--budget", type=float, default=140, help="seconds; later sections are skipped")
    parser.add_argument("--skip-trt", action="store_true", help="do not try TensorRT even if it imports")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: see --dry-run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every section on the CPU at toy sizes (checks this script, measures nothing)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.check_size, args.size, args.batch, args.iters = "cpu", 32, 32, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    print("environment: " + json.dumps(env), flush=True)
    result: dict = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --dry-run to exercise the script on the CPU)", flush=True)
        result["skipped"] = "no CUDA device"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    model, check = random_model(), Check(args)
    device = torch.device(args.device)
    try:
        for title, section in [("precision x runner", lambda: precision_table(check, device)),
                               ("correctness vs CPU fp32", lambda: correctness(check, model, args)),
                               ("prepare at the gen shape", lambda: prepare_flow(check, model, args)),
                               ("no host sync", lambda: no_sync(check, model, args)),
                               ("cuda:N", lambda: other_gpu(check, model, args))]:
            print(f"{title}:", flush=True)
            section()
        result["bf16_matmul_tflops"] = round(bf16_matmul_tflops(device), 3)
        print(f"bf16 matmul: {result['bf16_matmul_tflops']} TFLOP/s\nthroughput:", flush=True)
        throughput(check, model, args, result["bf16_matmul_tflops"])
    except Exception:  # noqa: BLE001 - keep what was measured
        result["crash"] = traceback.format_exc()
        print(result["crash"], flush=True)
    result["rows"] = check.rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    failed = [r for r in check.rows if r.get("ok") is False]
    for r in failed:
        print(f"FAILED: {r}", flush=True)
    print("summary: " + json.dumps({"checks": len(check.rows), "failed": len(failed),
                                    "skipped": sum(r.get("ok") is None for r in check.rows)}), flush=True)
    return 1 if failed or "crash" in result else 0


if __name__ == "__main__":
    sys.exit(main())
