"""`--profile`: time and share per stage of a gen run (plan, upload, composite, teacher, device-to-host, encode,
write, idle).

Host stages are wall clocks (time.perf_counter) summed over the threads that run them; device stages on CUDA
are CUDA event pairs on the stream they run on, read once at the end (`summary()`), so profiling adds no sync
to the loop. Stages overlap (the encoders run while the device works), so a stage's share is of the summed
stage time, and `wall_s` is the run's own duration. `idle` is the time the producer waited for the encoders
and the writer (back-pressure): a large idle share means the host side is the bottleneck.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

STAGES = ("plan", "upload", "composite", "teacher", "device-to-host", "encode", "write", "idle")


class Profile:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._host = {s: 0.0 for s in STAGES}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        if self.enabled:
            with self._lock:
                self._host[stage] += seconds

    @contextmanager
    def host(self, stage: str):
        """Time a block on the host (any thread)."""
        if not self.enabled:
            yield
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)

    @contextmanager
    def device(self, stage: str, device: torch.device):
        """Time a block of device work: CUDA events on the current stream, a wall clock on the CPU."""
        if not self.enabled or device.type != "cuda":
            with self.host(stage):
                yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            with self._lock:
                self._events.append((stage, start, end))

    def summary(self) -> dict:
        """{"wall_s", "stages": {stage: {"seconds", "share"}}}; synchronises the recorded events (end of run)."""
        totals = dict(self._host)
        for stage, start, end in self._events:
            end.synchronize()
            totals[stage] += start.elapsed_time(end) / 1000.0
        busy = sum(totals.values())
        stages = {s: {"seconds": round(t, 4), "share": round(t / busy, 4) if busy > 0 else 0.0}
                  for s, t in totals.items()}
        return {"wall_s": round(time.perf_counter() - self._t0, 4), "stages": stages}


NO_PROFILE = Profile(enabled=False)


def render(summary: dict, samples: int) -> str:
    lines = [f"profile: {samples} samples in {summary['wall_s']:.2f} s wall "
             "(stages overlap: shares are of the summed stage time)",
             f"  {'stage':<15}{'seconds':>10}{'share':>8}{'ms/sample':>11}"]
    for stage, v in summary["stages"].items():
        per = 1000.0 * v["seconds"] / samples if samples else 0.0
        lines.append(f"  {stage:<15}{v['seconds']:>10.3f}{100 * v['share']:>7.1f}%{per:>11.3f}")
    return "\n".join(lines)


def write(summary: dict, samples: int, path: Path) -> None:
    path.write_text(json.dumps({"samples": samples, **summary}, indent=1))
