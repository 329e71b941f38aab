"""End-to-end generator throughput (--depth none) against the naive per-image Pillow loop, one process.

    python bench/bench_gen.py [--n 2000] [--naive-n 300] [--device cpu] [--json PATH]

Uses the bundled demo photographs. For each size (448 -> 224, 160 -> 160) and each composite backend
present, it runs the real `gen` command into a temporary directory (median of --repeats runs, after a
warm-up run), and the naive loop on the same inputs; prints a table with the ratio and writes JSON.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median_time, print_machine, print_table, save_json  # noqa: E402
from naive_loop import naive_run  # noqa: E402

from smalldepthmask import gen, sources  # noqa: E402
from smalldepthmask.composite import extension_status  # noqa: E402

SIZES = [(448, 224), (160, 160)]


def gen_rate(n: int, compose: int, out: int, backend: str, device: str, repeats: int, workers: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gen-"))

    def once():
        shutil.rmtree(tmp / "out", ignore_errors=True)
        rc = gen.main(["--shards", str(tmp / "out"), "--k", "1000", "--limit", str(n), "--compose-size",
                       str(compose), "--out-size", str(out), "--depth", "none", "--quiet", "--device", device,
                       "--composite-backend", backend, "--workers", str(workers), "--shard-size", "100000"])
        assert rc == 0

    try:
        return n / median_time(once, repeats=repeats, warmup=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def naive_rate(n: int, compose: int, out: int) -> float:
    fg_dir, bg_dir = sources.demo_dirs()
    fgs, bgs = sources.list_images(fg_dir, "fg"), sources.list_images(bg_dir, "bg")
    tmp = Path(tempfile.mkdtemp(prefix="bench-naive-"))
    try:
        t0 = time.perf_counter()
        naive_run(bgs, fgs, n, compose, out, tmp)
        return n / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="samples per generator run")
    ap.add_argument("--naive-n", type=int, default=300, help="samples for the naive loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", default="auto", help="comma list of ext,reference (auto: those present)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    m = machine()
    print_machine(m)
    backends = (["ext"] if extension_status(a.device)[0] else []) + ["reference"] if a.backends == "auto" \
        else a.backends.split(",")
    rows = []
    for compose, out in SIZES:
        base = naive_rate(a.naive_n, compose, out)
        rows.append({"size": f"{compose}->{out}", "method": "naive Pillow loop", "samples/s": base, "x naive": 1.0})
        for be in backends:
            n = a.n if be == "ext" else max(64, a.n // 8)
            r = gen_rate(n, compose, out, be, a.device, a.repeats, a.workers)
            rows.append({"size": f"{compose}->{out}", "method": f"gen --composite-backend {be} ({a.device})",
                         "samples/s": r, "x naive": r / base, "n": n})
    print()
    print_table(rows, ["size", "method", "samples/s", "x naive", "n"])
    save_json("gen", {"machine": m, "settings": vars(a), "rows": rows}, a.json)


if __name__ == "__main__":
    main()
