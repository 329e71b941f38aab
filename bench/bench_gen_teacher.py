"""gen end to end WITH the depth teacher (a random-weight DenseDepth: the real network, no download), as a
marginal rate between two run sizes so start-up cancels, with the per-stage profile of the larger run.

    python bench/bench_gen_teacher.py --device cuda --batches 64,128 --n 1024 4096     # a GPU machine
    python bench/bench_gen_teacher.py --device cpu --batches 8 --n 8 24                 # a smoke run here

Each run is `python -m smalldepthmask.gen --shards TMP --depth densedepth --depth-weights W --profile` on the
bundled demo set at 448 -> 224; triplets/s = (n2 - n1) / (t2 - t1) of the whole processes' wall times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_machine, print_table, save_json  # noqa: E402


def random_weights(path: Path) -> Path:
    """A random-weight DenseDepth checkpoint in the converted format (positive output -> depths in range)."""
    from smalldepthmask.depth.densedepth import DenseDepth
    from smalldepthmask.depth.weights import save_converted

    torch.manual_seed(0)
    state = {k: v for k, v in DenseDepth().state_dict().items() if not k.endswith("num_batches_tracked")}
    with torch.no_grad():
        state["conv3.bias"].fill_(2.0)
        state["conv3.weight"].mul_(0.01)
    save_converted(state, path.with_suffix(".h5"), "0" * 64, path)
    return path


def run_gen(out: Path, weights: Path, n: int, batch: int, device: str, extra: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "smalldepthmask.gen", "--shards", str(out), "--depth", "densedepth",
           "--depth-weights", str(weights), "--limit", str(n), "--k", "400", "--batch-size", str(batch),
           "--device", device, "--profile", "--quiet", "--overwrite", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"gen failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return secs, json.loads((out / "profile.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--n", type=int, nargs=2, default=(1024, 4096), metavar=("N1", "N2"))
    ap.add_argument("--gen-args", default="", help="extra gen flags, e.g. '--depth-runner torch'")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    m = machine()
    print_machine(m)
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_weights(Path(tmp) / "densedepth-random.safetensors")
        for batch in [int(b) for b in args.batches.split(",")]:
            t = {}
            for n in args.n:
                t[n], prof = run_gen(Path(tmp) / f"out-{batch}-{n}", weights, n, batch, args.device,
                                     args.gen_args.split())
            n1, n2 = args.n
            rate = (n2 - n1) / (t[n2] - t[n1]) if t[n2] > t[n1] else float("nan")
            rows.append({"device": args.device, "batch": batch, "n1": n1, "t1_s": round(t[n1], 2), "n2": n2,
                         "t2_s": round(t[n2], 2), "triplets/s": round(rate, 1)})
            profiles[str(batch)] = prof
    print_table(rows, ["device", "batch", "n1", "t1_s", "n2", "t2_s", "triplets/s"])
    for batch, prof in profiles.items():
        print(f"\nstages, batch {batch}, the {prof['samples']}-sample run ({prof['wall_s']:.2f} s wall):")
        for stage, v in prof["stages"].items():
            print(f"  {stage:<15}{v['seconds']:>9.3f} s {100 * v['share']:>6.1f}%")
    save_json("gen-teacher", {"machine": m, "rows": rows, "profiles": profiles, "args": vars(args)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
