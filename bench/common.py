"""Shared bits of the benchmark scripts: the machine description, timing, table and JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    m = {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
         "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
         "date": datetime.date.today().isoformat()}
    if torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name(0)
        m["cuda"] = torch.version.cuda
    try:
        from smalldepthmask.composite import extension_status
        m["extension"] = extension_status()[1]
    except Exception as e:  # a benchmark still runs without the extension
        m["extension"] = f"unavailable ({e})"
    return m


def print_machine(m: dict) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in m.items()), flush=True)


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return "" if v is None else str(v)


def save_json(name: str, payload: dict, path: str | Path | None = None, stamp: str | None = None) -> Path:
    """Write `payload` to `path`, else to results/<name>-<stamp>-<host>.json (`stamp`: today's date by default)."""
    stamp = stamp or datetime.date.today().isoformat()
    out = Path(path) if path else RESULTS / f"{name}-{stamp}-{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")
    return out
