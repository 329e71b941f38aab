"""Runners: ways to execute a DenseDepth network. Each returns the raw output as float32.

* `torch`: eager PyTorch on CPU (bf16 + channels_last where the CPU has native bf16) or CUDA
  (fp16/bf16/fp32, channels_last, optional torch.compile / CUDA graphs);
* `onnxruntime`: an ONNX export (fixed spatial size, dynamic batch) run by ONNX Runtime, on torch's
  CUDA stream when on the GPU;
* `tensorrt`: a strongly typed engine built from an ONNX export in the chosen precision.

`auto` picks tensorrt on CUDA when it is installed, else torch. Precision and runner are checked
together (`resolve_runner_precision`) when the runner is made, so a combination that cannot run is a
UsageError before anything starts. `runner.prepare(batch_size, height, width)` builds (or loads from the
cache) what the batches will run, before the first one; a runner called unprepared prepares itself for
the first batch's shape.

Graph variant: "reference" (the released network) or "fast" (depth/fast.py: the same function, 98 instead
of 160 GFLOP at 448²). "auto" is fast on the CPU and *timed* on CUDA: at prepare both graphs are run at the
batch shape and the faster is kept; the choice is remembered per GPU, software versions, precision, size
and batch in the cache dir (`variant-choice.json`), so later runs on that machine make the same choice
without timing. "timed" asks for the timing on any device.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

from ..errors import UsageError
from ..devices import resolve_device
from .buildcache import CHOICES_FILE, remembered_choice, stderr_log
from .densedepth import DenseDepth, check_input_size
from .fast import FastDenseDepth
from .weights import cache_dir

RUNNERS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ("auto", "fast", "reference", "timed")
GRAPHS = ("reference", "fast")  # the concrete variants, in the order they are timed
TIMING_WARMUP, TIMING_ITERS = 2, 5

ORT_BF16 = (
    "--depth-precision bf16: ONNX Runtime has no bfloat16 convolution kernels (ONNX allows bf16 Conv only "
    "from opset 22, which onnxruntime does not implement for it); use fp32 (fp16 on CUDA) or --depth-runner torch"
)


class Runner(Protocol):
    name: str
    precision: str
    device: torch.device
    variant: str

    def prepare(self, batch_size: int, height: int, width: int) -> dict: ...

    def __call__(
        self,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on `device`
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 raw network output on `device`
        ...

    def describe(self) -> dict: ...


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_runner_precision(
    runner: str, precision: str, device: torch.device, gpu_bf16: bool | None = None
) -> str:
    """The concrete precision `runner` uses on `device` for `--depth-precision precision`, or UsageError.

    auto: fp16 on CUDA (fp32 for onnxruntime), bf16 on CPUs with native bf16, else fp32. bf16 runs on
    torch (CPU, and GPUs with bf16) and tensorrt (a bf16 graph exported at opset 22); onnxruntime refuses
    it. `gpu_bf16` overrides the GPU's bf16 query (tests)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --depth-precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if runner not in RUNNERS[1:]:
        raise UsageError(f"unknown --depth-runner {runner!r}; choose from {', '.join(RUNNERS)}")
    if runner == "tensorrt" and device.type != "cuda":
        raise UsageError("--depth-runner tensorrt needs a CUDA device (use --device cuda)")
    if runner == "onnxruntime" and precision == "bf16":
        raise UsageError(ORT_BF16)
    if device.type == "cuda":
        if precision == "bf16" and not (torch.cuda.is_bf16_supported() if gpu_bf16 is None else gpu_bf16):
            raise UsageError("--depth-precision bf16: this GPU has no bf16 support; use fp16 or fp32")
        if precision == "auto":
            return "fp32" if runner == "onnxruntime" else "fp16"
        return precision
    if precision == "fp16":
        if runner == "onnxruntime":
            raise UsageError("--depth-precision fp16 with --depth-runner onnxruntime needs CUDA; on the CPU use fp32")
        raise UsageError("--depth-precision fp16 is a GPU precision; on the CPU use bf16 or fp32")
    if precision == "auto":
        return "fp32" if runner == "onnxruntime" or not cpu_has_native_bf16() else "bf16"
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """The torch runner's precision (see resolve_runner_precision)."""
    return resolve_runner_precision("torch", precision, device)


def resolve_variant(variant: str, device: torch.device) -> str:
    """'auto' -> the FLOP-saving rewrite on CPU, 'timed' (the faster of the two, measured) on CUDA."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "auto":
        return "fast" if device.type == "cpu" else "timed"
    return variant


def inference_network(model: DenseDepth, variant: str) -> nn.Module:
    """A separate eval-mode network computing `model`'s raw output (the teacher's model is untouched)."""
    net = FastDenseDepth(model) if variant == "fast" else copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def concrete_device(device: torch.device) -> torch.device:
    """cuda -> cuda:<current>, so engines, sessions and guards name one GPU."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(call: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall time of `call()` over `iters` runs after `warmup` runs, device work included."""
    for _ in range(warmup):
        call()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class BaseRunner:
    """What the runners share: precision and variant resolution, the prepare flow, `describe`.

    Subclasses implement `_prepare(variant, batch, h, w)` (build or load that graph's executable; returns
    facts for the start-up message), `_run(variant, x)` and `_release(variant)`, and may add
    `_details()` to `describe` and `_versions()` to the timing key."""

    name: str

    def __init__(self, model: DenseDepth, device: torch.device, precision: str, variant: str):
        self.model = model
        self.device = concrete_device(device)
        self.precision = resolve_runner_precision(self.name, precision, self.device)
        self.variant = resolve_variant(variant, self.device)
        self.prepared: dict[tuple[int, int], dict] = {}  # (H, W) -> what prepare did
        self.log: Callable[[str], None] = stderr_log

    def prepare(self, batch_size: int, height: int, width: int) -> dict:
        """Make ready everything batches of `batch_size` [B, 3, height, width] images run, before the first.

        Returns facts for a start-up message: the variant timing (when timed) and the runner's own."""
        check_input_size(height, width)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        info: dict = {}
        if self.variant == "timed":
            self.variant, info["variant_timing"] = self._choose_variant(batch_size, height, width)
        info.update(self._prepare(self.variant, batch_size, height, width))
        self.prepared[(height, width)] = info
        return info

    def __call__(
        self,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on self.device
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 raw output on self.device
        if (x.shape[-2], x.shape[-1]) not in self.prepared:
            self.prepare(x.shape[0], x.shape[-2], x.shape[-1])
        return self._run(self.variant, x)

    def _choose_variant(self, batch: int, height: int, width: int) -> tuple[str, dict]:
        def decide() -> dict:
            seconds = {}
            for variant in GRAPHS:
                self._prepare(variant, batch, height, width)
                x = torch.rand(batch, 3, height, width, device=self.device)
                seconds[variant] = median_seconds(lambda: self._run(variant, x), self.device,
                                                  TIMING_WARMUP, TIMING_ITERS)
            return {"choice": min(GRAPHS, key=seconds.__getitem__), "seconds_per_batch": seconds}

        key = self._timing_key(batch, height, width)
        record, cached = remembered_choice(cache_dir() / CHOICES_FILE, key, decide, self.log)
        for variant in GRAPHS:
            if variant != record["choice"]:
                self._release(variant)
        return record["choice"], {"seconds_per_batch": record["seconds_per_batch"], "cached": cached}

    def _timing_key(self, batch: int, height: int, width: int) -> dict:
        """Everything the timed choice depends on."""
        key = {"runner": self.name, "device": self.device.type, "torch": torch.__version__,
               "precision": self.precision, "height": height, "width": width, "batch": batch, **self._versions()}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            key.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                       cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        else:
            key.update(cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads())
        return key

    def _versions(self) -> dict:
        return {}

    def _details(self) -> dict:
        return {}

    def _prepare(self, variant: str, batch: int, height: int, width: int) -> dict:
        raise NotImplementedError

    def _run(self, variant: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _release(self, variant: str) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "runner": self.name,
            "precision": self.precision,
            "device": str(self.device),
            "variant": self.variant,
            **self._details(),
        }


class TorchRunner(BaseRunner):
    """Eager (optionally compiled) PyTorch in the chosen precision, channels_last."""

    name = "torch"

    def __init__(
        self,
        model: DenseDepth,
        device: torch.device,
        precision: str = "auto",
        variant: str = "auto",
        compile_mode: str | None = None,
    ):
        super().__init__(model, device, precision, variant)
        self.dtype = DTYPES[self.precision]
        self.compile_mode = compile_mode
        self.nets: dict[str, nn.Module] = {}
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @staticmethod
    def _compiled(net: nn.Module, mode: str, device: torch.device) -> nn.Module:
        if device.type == "cpu" and mode == "default":
            # freezing lets inductor pre-pack the oneDNN weights and fuse conv + pointwise ops
            return torch.compile(net, options={"freezing": True}, dynamic=False)
        return torch.compile(net, mode=mode, dynamic=False)

    def _prepare(self, variant: str, batch: int, height: int, width: int) -> dict:
        if variant not in self.nets:
            net = inference_network(self.model, variant).to(device=self.device, dtype=self.dtype)
            net = net.to(memory_format=torch.channels_last)
            # e.g. "max-autotune-no-cudagraphs", or "reduce-overhead" for CUDA graphs
            self.nets[variant] = self._compiled(net, self.compile_mode, self.device) if self.compile_mode else net
        if self.device.type == "cuda" or self.compile_mode:  # cuDNN autotuning / compiling now, not in batch 1
            with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
                self._run(variant, torch.rand(batch, 3, height, width, device=self.device))
            synchronize(self.device)
        return {}

    def _release(self, variant: str) -> None:
        self.nets.pop(variant, None)

    def _run(
        self,
        variant: str,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on self.device
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 raw output
        x = x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        exact = self.device.type == "cuda" and self.precision == "fp32"
        with torch.inference_mode(), no_tf32() if exact else contextlib.nullcontext():
            out = self.nets[variant](x)
            if self.compile_mode == "reduce-overhead":
                out = out.clone()  # CUDA-graph outputs are overwritten by the next call
        return out.float()

    def _details(self) -> dict:
        return {"compile": self.compile_mode}


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 really in fp32 on CUDA: TF32 convolutions and matmuls off for the duration."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def require_module(module: str, runner: str, install: str) -> None:
    """UsageError naming the missing package when `module` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"--depth-runner {runner} needs the `{module}` package: pip install {install}")


def auto_runner(device: torch.device) -> str:
    if device.type == "cuda" and importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt"
    return "torch"


def check_runner(runner: str, device: str | torch.device, precision: str) -> tuple[str, torch.device, str]:
    """(runner, device, precision) resolved and checked without building anything: every refusal
    (unknown name, missing package, no CUDA, a precision the runner cannot run) is a UsageError here."""
    dev = resolve_device(str(device), flag="--device", allow_auto=False)
    if runner not in RUNNERS:
        raise UsageError(f"unknown --depth-runner {runner!r}; choose from {', '.join(RUNNERS)}")
    if runner == "auto":
        runner = auto_runner(dev)
    resolved = resolve_runner_precision(runner, precision, dev)
    if runner == "onnxruntime":
        require_module("onnxruntime", runner, "onnxruntime (or onnxruntime-gpu)")
        require_module("onnx", runner, "onnx")
    if runner == "tensorrt":
        require_module("tensorrt", runner, "tensorrt")
        require_module("onnx", runner, "onnx")
    return runner, dev, resolved


def build_runner(
    model: DenseDepth,
    runner: str = "auto",
    device: str | torch.device = "cpu",
    precision: str = "auto",
    variant: str = "auto",
    fingerprint: str | None = None,
    compile_mode: str | None = None,
) -> Runner:
    """The runner named `runner` for `model` on `device`; `fingerprint` keys exported files.

    `compile_mode` (torch runner only) is passed to torch.compile, e.g. "max-autotune-no-cudagraphs"
    or "reduce-overhead" (CUDA graphs); compiling takes minutes and happens in `prepare`.
    """
    runner, dev, _ = check_runner(runner, device, precision)
    if runner == "torch":
        return TorchRunner(model, dev, precision, variant, compile_mode)
    if runner == "onnxruntime":
        from .onnx_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model, dev, precision, variant, fingerprint)
    from .tensorrt_runner import TensorRTRunner

    return TensorRTRunner(model, dev, precision, variant=variant, fingerprint=fingerprint)
