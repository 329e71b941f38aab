"""Start-up: a whole small gen process against `python -c "import torch"`, medians of 3 with warm caches.

    python bench/bench_startup.py

Two input sets: the bundled demo set, and 100 foregrounds + 4 backgrounds (made from the demo's images:
rotated and cropped copies). Each gen run makes 64 samples with --depth none; "beyond torch" is the gen
process's median wall time minus the median of `import torch` alone (goal: <= 1.0 s).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_machine, print_table, save_json  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "smalldepthmask" / "data" / "demo"


def many_inputs(root: Path, n_fg: int = 100, n_bg: int = 4) -> tuple[Path, Path]:
    fg, bg = root / "fg", root / "bg"
    fg.mkdir(parents=True)
    bg.mkdir()
    sources = sorted((DEMO / "fg").iterdir())
    for i in range(n_fg):
        im = Image.open(sources[i % len(sources)]).convert("RGBA").rotate(7 * i, expand=True)
        w, h = im.size
        im.crop((i % 5, i % 3, w - i % 7, h - i % 4)).save(fg / f"fg{i:03d}.png")
    for i, p in enumerate(sorted((DEMO / "bg").iterdir())[:n_bg]):
        Image.open(p).save(bg / f"bg{i}{p.suffix}")
    return fg, bg


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run warms the caches and is dropped
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    m = machine()
    print_machine(m)
    base = wall([sys.executable, "-c", "import torch"], args.repeats)
    rows = [{"run": "python -c 'import torch'", "median_s": round(base, 3), "beyond_torch_s": 0.0}]
    with tempfile.TemporaryDirectory() as tmp:
        fg, bg = many_inputs(Path(tmp) / "in")
        sets = {"demo set (3 fg, 4 bg)": [], "100 fg + 4 bg": ["--fg", str(fg), "--bg", str(bg)]}
        for name, inputs in sets.items():
            cmd = [sys.executable, "-m", "smalldepthmask.gen", "--shards", str(Path(tmp) / "out"), "--limit", "64",
                   "--depth", "none", "--quiet", "--overwrite", *inputs]
            t = wall(cmd, args.repeats)
            rows.append({"run": f"gen 64 samples, {name}", "median_s": round(t, 3), "beyond_torch_s": round(t - base, 3)})
    print_table(rows, ["run", "median_s", "beyond_torch_s"])
    save_json("startup", {"machine": m, "rows": rows, "repeats": args.repeats}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
