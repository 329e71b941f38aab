"""Start-up cost of the gen command as a whole process, against `python -c "import torch"`.

    python bench/bench_startup.py [--repeats 3] [--limit 64] [--json PATH] [--also DIR]

Two input sets: the bundled demo (3 foregrounds, 4 backgrounds) and 100 foregrounds + 4 backgrounds
made once in /tmp from the demo's images (rotated and cropped copies, seeded). Each case is a fresh
`python -m smalldepthmask.gen --shards TMP --limit 64 --depth none` process for this checkout, into an
output directory removed before every run (a rerun into a complete output is a no-op resume that makes
nothing); the cases are interleaved, one untimed warm-up round first (warm file caches), then --repeats
timed rounds; the table gives medians and the excess over the median `import torch` process. `--also DIR` times the gen
cases of another checkout of the package too (e.g. a `git worktree` of an older commit), in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, print_machine, print_table, save_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MANY = Path(tempfile.gettempdir()) / "smalldepthmask-startup-100fg-4bg"


def make_many(dest: Path = MANY, n_fg: int = 100) -> tuple[Path, Path]:
    """dest/fg: n_fg rotated, cropped copies of the demo foregrounds; dest/bg: the demo backgrounds."""
    import numpy as np
    from PIL import Image

    from smalldepthmask import sources
    fg_dir, bg_dir = dest / "fg", dest / "bg"
    if fg_dir.is_dir() and len(list(fg_dir.glob("*.png"))) == n_fg and bg_dir.is_dir():
        return fg_dir, bg_dir
    shutil.rmtree(dest, ignore_errors=True)
    fg_dir.mkdir(parents=True)
    shutil.copytree(sources.demo_dirs()[1], bg_dir)
    demo = [Image.open(p).convert("RGBA") for p in sources.list_images(sources.demo_dirs()[0], "fg")]
    rng = np.random.default_rng(0)
    for i in range(n_fg):
        im = demo[i % len(demo)].rotate(float(rng.uniform(-40, 40)), resample=Image.BILINEAR, expand=True)
        w, h = im.size
        x0, y0 = int(rng.uniform(0, 0.15) * w), int(rng.uniform(0, 0.15) * h)
        im.crop((x0, y0, w - int(rng.uniform(0, 0.15) * w), h - int(rng.uniform(0, 0.15) * h))).save(
            fg_dir / f"fg{i:03d}.png")
    return fg_dir, bg_dir


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmd: list[str], root: Path, out: Path | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system, all threads) of one run of `cmd` with the package of `root`."""
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)  # a complete output would make the run a no-op
    c0, t0 = _children_cpu(), time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(root)}  # and cwd: `python -m` puts the cwd first on sys.path
    r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    secs, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr[-2000:]}")
    return secs, cpu


def commit(root: Path) -> str:
    """Short commit of the checkout at `root`, '+' when it has uncommitted changes to tracked files."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+" if git("status", "--porcelain", "-uno") else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--json", default=None, help="default: results/startup-<date>-<host>.json")
    p.add_argument("--also", metavar="DIR", default=None, help="another checkout whose gen cases to time as well")
    a = p.parse_args()
    m = machine()
    print_machine(m)
    fg, bg = make_many()
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    gen = [sys.executable, "-m", "smalldepthmask.gen", "--limit", str(a.limit), "--depth", "none"]
    cases = {"import torch": ([sys.executable, "-c", "import torch"], None, ROOT)}
    roots = [ROOT] + ([Path(a.also).resolve()] if a.also else [])
    checkouts = {str(r): commit(r) for r in roots}
    for tag, root in [("", ROOT)] + [(f" [{checkouts[str(r)]}]", r) for r in roots[1:]]:
        out = tmp / f"out{len(cases)}"
        cases[f"gen demo{tag}"] = ([*gen, "--shards", str(out / "demo")], out / "demo", root)
        cases[f"gen 100 fg + 4 bg{tag}"] = ([*gen, "--shards", str(out / "many"), "--fg", str(fg), "--bg", str(bg)],
                                            out / "many", root)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    try:
        for rnd in range(a.repeats + 1):  # round 0 warms the caches and is not kept
            for name, (cmd, out, root) in cases.items():
                t = timed(cmd, root, out)
                if rnd:
                    runs[name].append(t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(w for w, _ in runs["import torch"])
    base_cpu = statistics.median(c for _, c in runs["import torch"])
    rows = []
    for name, ts in runs.items():
        med, cpu = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
        rows.append({"case": name, "median_s": round(med, 3), "over_import_torch_s": round(med - base, 3),
                     "ratio": round(med / base, 2), "cpu_s": round(cpu, 3),
                     "cpu_over_import_torch_s": round(cpu - base_cpu, 3), "runs_s": [round(w, 3) for w, _ in ts]})
    print(f"whole process, median of {a.repeats} (after a warm-up round), --limit {a.limit}, --depth none; "
          f"wall and CPU (user + system) seconds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          "cores (shared machine, noisy)")
    print_table(rows, ["case", "median_s", "over_import_torch_s", "ratio", "cpu_s", "cpu_over_import_torch_s",
                       "runs_s"])
    print(f"checkouts: {checkouts}")
    save_json("startup", {"machine": m, "checkouts": checkouts, "limit": a.limit, "repeats": a.repeats,
                          "inputs_100fg": str(fg.parent),
                          "load_average": os.getloadavg(), "rows": rows}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
