"""Training throughput (samples/s) of the baseline from shards and from the online stream, per device.

    python bench/bench_train.py                      # every device present, default sizes
    python bench/bench_train.py --device cuda        # the GPU case (bench/device_check.sh)
    python bench/bench_train.py --device cpu --quick # a short CPU run

For each device: makes a shard set with the gen command (demo inputs unless --fg/--bg), then times
full training steps (augmentation, forward, loss, backward, SGD) fed (1) from the shards through
DataLoader workers, (2) from the online stream (generator on the same device), and (3) from one
batch already on the device (the model's own ceiling). Reports the median samples/s over the steps
after warm-up, prints a table and writes JSON to bench/results/train-<date>-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smalldepthmask import gen  # noqa: E402
from smalldepthmask.data import Batches, ShardDataset, open_shards  # noqa: E402
from smalldepthmask.model import BaselineNet, ModelConfig, parameter_count  # noqa: E402
from smalldepthmask.model.loop import Trainer, TrainConfig  # noqa: E402
from smalldepthmask.model.net import scaled_widths  # noqa: E402
from smalldepthmask.generator import build_generator  # noqa: E402
from smalldepthmask.stream import StreamDataset, stream_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_shards(out: Path, a: argparse.Namespace) -> None:
    args = ["--shards", str(out), "--k", str(a.k), "--compose-size", str(a.compose_size), "--out-size",
            str(a.size), "--shard-size", str(a.shard_size), "--depth", a.depth, "--quiet", "--device", "cpu"]
    if a.fg:
        args += ["--fg", a.fg, "--bg", a.bg]
    if a.depth_weights:
        args += ["--depth-weights", a.depth_weights]
    if gen.main(args) != 0:
        raise SystemExit("gen failed")


def time_steps(trainer: Trainer, batches, steps: int, warmup: int, device: torch.device) -> dict:
    """Median samples/s of whole steps (waiting for the data included) after `warmup` steps."""
    rates, epoch, it = [], 0, None
    t = time.perf_counter()
    while len(rates) < steps + warmup:
        if it is None:
            if hasattr(batches, "set_epoch"):
                batches.set_epoch(epoch)
            it, epoch = iter(batches), epoch + 1
        try:
            batch = next(it)
        except StopIteration:
            it = None
            continue
        trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        rates.append(len(batch["__key__"]) / (now - t))
        t = now
    kept = rates[warmup:]
    return {"samples_per_s": statistics.median(kept), "steps": len(kept), "warmup": warmup}


class Repeat:
    """The same batch, forever (already on the device): the model's ceiling."""

    def __init__(self, batch: dict):
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def bench_device(device: torch.device, shards_dir: Path, a: argparse.Namespace, log) -> dict:
    torch.manual_seed(0)
    widths = scaled_widths(a.width)
    cfg = TrainConfig(epochs=1000, batch_size=a.batch_size, amp=a.amp)
    gcfg = stream_config(fg=a.fg, bg=a.bg, k=a.k, compose_size=a.compose_size, out_size=a.size, depth=a.depth,
                         depth_weights=a.depth_weights, device=str(device), batch_size=a.batch_size)
    g = build_generator(gcfg, str(device), log)
    workers = a.workers if a.workers is not None else min(8, max(1, (os.cpu_count() or 2) - 1))
    shard_data = Batches(ShardDataset(open_shards(str(shards_dir)), shuffle=1000), a.batch_size, workers,
                         drop_last=True, pin_memory=device.type == "cuda")
    sources = {"shards": shard_data, "stream": StreamDataset(g, a.batch_size, drop_last=True)}
    row = {"device": str(device), "batch_size": a.batch_size, "size": a.size, "workers": workers,
           "teacher": g.teacher.describe()["teacher"] if g.teacher is not None else "none", "composite": g.backend}
    for name, data in list(sources.items()) + [("model only", None)]:
        model = BaselineNet(ModelConfig(widths=widths, size=a.size))
        row["parameters"] = parameter_count(model)
        if data is None:
            data = Repeat(next(iter(sources["stream"])))
            data.has_depth = sources["stream"].has_depth
        trainer = Trainer(model, _Sized(data, 10**6), None, device, cfg, Path(tempfile.gettempdir()), {}, quiet=True)
        r = time_steps(trainer, data, a.steps, a.warmup, device)
        row[name] = r["samples_per_s"]
        log(f"  {device} {name:<10} {r['samples_per_s']:9.1f} samples/s (median of {r['steps']} steps)")
    row["stream/shards"] = row["stream"] / row["shards"]
    return row


class _Sized:
    """Gives a data source the length and depth flag the Trainer reads (the schedule's length only)."""

    def __init__(self, data, n: int):
        self.data, self.n, self.has_depth = data, n, data.has_depth

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", action="append", help="cpu, cuda (repeatable; default: every device present)")
    p.add_argument("--quick", action="store_true", help="batch 16, 6 steps: a short CPU run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=128, help="image and model side")
    p.add_argument("--compose-size", type=int, default=256)
    p.add_argument("--k", type=int, default=40, help="gen --k (demo set: 48 samples per unit of k)")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=None, help="shard DataLoader workers (default: cores - 1, <= 8)")
    p.add_argument("--amp", default="auto")
    p.add_argument("--depth", default="none", help="teacher for shards and stream (default none: training only)")
    p.add_argument("--depth-weights", default=None)
    p.add_argument("--fg")
    p.add_argument("--bg")
    p.add_argument("--json", "--out", dest="out", type=Path, default=None,
                   help="JSON path (default bench/results/train-DATE-HOST.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.batch_size, a.steps, a.warmup, a.k = 16, 6, 2, 4
    devices = a.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        make_shards(Path(tmp) / "shards", a)
        for dev in devices:
            rows.append(bench_device(torch.device(dev), Path(tmp) / "shards", a, log))
    print(f"\n{'device':<8} {'batch':>5} {'size':>4} {'shards/s':>10} {'stream/s':>10} {'model/s':>10} {'stream/shards':>14}")
    for r in rows:
        print(f"{r['device']:<8} {r['batch_size']:>5} {r['size']:>4} {r['shards']:>10.1f} {r['stream']:>10.1f} "
              f"{r['model only']:>10.1f} {r['stream/shards']:>14.2f}")
    out = a.out or RESULTS / f"train-{date.today().isoformat()}-{info['host']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": {k: v for k, v in vars(a).items() if k != "out"},
                               "results": rows}, indent=1, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
