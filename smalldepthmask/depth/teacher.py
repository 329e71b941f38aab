"""The depth teacher: a DenseDepth network, a runner, and the checkpoint's depth convention."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UsageError
from .conventions import CONVENTIONS, DepthConvention
from .densedepth import SIZE_MULTIPLE, DenseDepth, check_input_size, from_state_dict
from .runners import Runner, build_runner
from .weights import DEFAULT_WEIGHTS, REGISTRY, WeightsInfo, find_cached, load_state_dict, weights_dir

TEACHER_NAMES = ("densedepth", "densedepth-nyu", "densedepth-kitti")


class Teacher:
    """`teacher(x)` maps [B, 3, H, W] RGB in [0, 1] to depth in metres [B, 1, H/2, W/2].

    `teacher.model` is the plain torch `DenseDepth` (raw network output, float32, on CPU unless
    moved); the runner executes its own copy in the chosen precision and device.
    """

    name = "densedepth"
    size_multiple = SIZE_MULTIPLE  # input height and width must be multiples of this

    def __init__(
        self,
        model: DenseDepth,
        runner: Runner,
        convention: DepthConvention,
        weights: WeightsInfo | None = None,
    ):
        self.model = model
        self.runner = runner
        self.convention = convention
        self.weights = weights
        self._overflow = OverflowWatch() if runner.precision == "fp16" else None

    @property
    def max_depth(self) -> float:
        return self.convention.max_m

    @property
    def min_depth(self) -> float:
        return self.convention.min_m

    @property
    def device(self) -> torch.device:
        return self.runner.device

    def __call__(
        self,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on the teacher's device, H, W multiples of 32
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 metres in [min_depth, max_depth]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected [B, 3, H, W] RGB, got {tuple(x.shape)}")
        check_input_size(x.shape[-2], x.shape[-1])
        raw = self.runner(x)
        if self._overflow is not None:
            self._overflow.watch(raw)
        return self.convention.to_metres(raw)

    def prepare(
        self, batch_size: int, height: int, width: int, log: Callable[[str], None] | None = None
    ) -> dict:
        """Build (or load) what the runner needs for batches of `batch_size` [B, 3, height, width] images
        before the first batch, and say so in one line with the time it took. Returns the runner's facts."""
        log = log or (lambda msg: print(msg, file=sys.stderr))
        self.runner.log = log
        start = time.perf_counter()
        info = self.runner.prepare(batch_size, height, width)
        info["seconds"] = time.perf_counter() - start
        log(ready_message(self.runner.describe(), batch_size, height, width, info))
        return info

    def describe(self) -> dict:
        """JSON-able record for manifests: teacher, weights, runner, precision, units and range."""
        info = {
            "teacher": self.name,
            "convention": self.convention.name,
            "units": "metres",
            "depth_range_m": [self.convention.min_m, self.convention.max_m],
            "output_scale": 0.5,
            "weights_file": self.weights.path.name if self.weights else None,
            "weights_sha256": self.weights.sha256 if self.weights else None,
        }
        info.update(self.runner.describe())
        return info


class OverflowWatch:
    """fp16 outputs checked for inf/nan on every batch without a host sync.

    On CUDA the flag of each batch is copied to pinned memory behind a CUDA event and read once the event
    has passed (a later call), so an overflow stops the run a batch or two after it happened; on the CPU
    it is read at once."""

    def __init__(self):
        self.pending: list[tuple[torch.Tensor, torch.cuda.Event]] = []

    def watch(self, raw: torch.Tensor) -> None:  # [B, 1, h, w] float32 raw network output
        bad = ~torch.isfinite(raw).all()
        if not raw.is_cuda:
            self._raise_if(bool(bad))
            return
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(bad, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((host, event))
        while self.pending and self.pending[0][1].query():
            self._raise_if(bool(self.pending.pop(0)[0]))

    @staticmethod
    def _raise_if(overflowed: bool) -> None:
        if overflowed:
            raise UsageError("the depth network overflowed in fp16; use --depth-precision bf16 or fp32")


def ready_message(described: dict, batch_size: int, height: int, width: int, info: dict) -> str:
    """One line: runner, precision, graph, shape, how long prepare took and what it did."""
    parts = [f"{described['runner']} {described['precision']} on {described['device']}",
             f"{described['variant']} graph", f"{height}x{width}", f"batch {batch_size}"]
    timing = info.get("variant_timing")
    if timing:
        ms = ", ".join(f"{v} {s * 1000:.1f} ms" for v, s in timing["seconds_per_batch"].items())
        parts.append(f"graph chosen by timing ({ms} per batch{'; remembered' if timing['cached'] else ''})")
    if info.get("engine"):
        built = info.get("engine_build_s")
        parts.append(f"engine built in {built:.1f} s" if built is not None else "engine loaded from the cache")
    return f"smalldepthmask: depth teacher ready in {info['seconds']:.1f} s: " + ", ".join(parts)


def _convention_for(name: str, info: WeightsInfo) -> DepthConvention:
    if name == "densedepth":
        return CONVENTIONS[info.convention]
    return CONVENTIONS[REGISTRY[name].convention]


def load_model(weights: str | Path) -> tuple[DenseDepth, WeightsInfo]:
    """A float32 CPU DenseDepth loaded from a released `.h5` or a converted `.safetensors`."""
    state, info = load_state_dict(weights)
    return from_state_dict(state), info


def missing_weights_error(name: str, pass_file: str = "--depth-weights nyu.h5", gen: bool = True) -> UsageError:
    """No weights for `name`: say how to fetch them, how to pass a file, and (for gen) how to go without."""
    entry = REGISTRY[name]
    hints = [
        f"fetch them: smalldepthmask weights fetch {name}  (or --url URL / --file FILE: the published links are reported dead)",
        f"or pass a file: {pass_file}",
    ]
    if gen:
        hints.append("or run without depth: --depth none")
    return UsageError(f"no {name} weights found (looked for {weights_dir() / entry.filename})", hints)


def load_teacher(
    name: str = "densedepth",
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    runner: str = "auto",
    precision: str = "auto",
    variant: str = "auto",
    compile_mode: str | None = None,
) -> Teacher:
    """Load a depth teacher. `name`: densedepth (convention from the file), densedepth-nyu or -kitti.

    `variant`: "fast" (exact FLOP-saving rewrite), "reference", "timed" (both timed at `prepare`, the
    faster kept and remembered per machine) or "auto" (fast on CPU, timed on CUDA); `compile_mode`: torch
    runner only, passed to torch.compile ("default" on CPU also freezes weights); compiling takes minutes
    per input size and happens in `prepare`. Call `teacher.prepare(batch_size, height, width)` before the
    first batch (else the first batch prepares for its own shape).
    """
    if name not in TEACHER_NAMES:
        raise UsageError(f"unknown depth teacher {name!r}; choose from {', '.join(TEACHER_NAMES)}")
    registry_name = DEFAULT_WEIGHTS if name == "densedepth" else name
    path = Path(weights).expanduser() if weights is not None else find_cached(registry_name)
    if path is None:
        raise missing_weights_error(registry_name, "weights=PATH (smalldepthmask depth: --weights nyu.h5)", gen=False)
    model, info = load_model(path)
    built = build_runner(model, runner, device, precision, variant, info.sha256 or None, compile_mode)
    return Teacher(model, built, _convention_for(name, info), info)


def teacher_from_model(
    model: DenseDepth,
    convention: str = "nyu",
    device: str | torch.device = "cpu",
    runner: str = "auto",
    precision: str = "auto",
    variant: str = "auto",
) -> Teacher:
    """A teacher around an in-memory model (tests, benchmarks)."""
    return Teacher(model, build_runner(model, runner, device, precision, variant), CONVENTIONS[convention])
