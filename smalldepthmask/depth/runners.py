"""Runners: ways to execute a DenseDepth network. Each returns the raw output as float32.

* `torch`: eager PyTorch on CPU (bf16 + channels_last where the CPU has native bf16) or CUDA
  (fp16/bf16, channels_last, optional torch.compile / CUDA graphs);
* `onnxruntime`: an ONNX export (opset 17, fixed spatial size, dynamic batch) run by ONNX Runtime;
* `tensorrt`: an engine built from a (half-precision, strongly typed) ONNX export.

`auto` picks tensorrt on CUDA when it is installed, else torch. A runner whose package or
device is missing raises UsageError with the reason.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from ..errors import UsageError
from ..devices import resolve_device
from .densedepth import DenseDepth
from .fast import FastDenseDepth

RUNNERS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ("auto", "fast", "reference")


class Runner(Protocol):
    name: str
    precision: str
    device: torch.device

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


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CPUs with native bf16, else fp32; fp16 on CUDA. Refuses what cannot run."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UsageError("bf16 is not supported on this GPU; use fp16 or fp32")
        return "fp16" if precision == "auto" else precision
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16":
        raise UsageError("fp16 is a GPU precision; on CPU use bf16 or fp32")
    return precision


def resolve_variant(variant: str, device: torch.device) -> str:
    """'auto' -> the FLOP-saving rewrite on CPU, the reference graph on CUDA."""
    if variant not in VARIANTS:
        raise UsageError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if variant == "auto":
        return "fast" if device.type == "cpu" else "reference"
    return variant


def inference_network(model: DenseDepth, variant: str) -> nn.Module:
    """A separate eval-mode network computing `model`'s raw output (the teacher's model is untouched)."""
    net = FastDenseDepth(model) if variant == "fast" else copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class BaseRunner:
    """What the runners share: the resolved precision and variant on `device`, and `describe`.

    Subclasses pick how precision and variant resolve (`_precision`, `_variant`) and add their
    own fields to `describe` (`_details`)."""

    name: str

    def __init__(self, model: DenseDepth, device: torch.device, precision: str, variant: str):
        self.model = model
        self.device = device
        self.precision = self._precision(precision, device)
        self.variant = self._variant(variant, device)

    _precision = staticmethod(resolve_precision)
    _variant = staticmethod(resolve_variant)

    def _details(self) -> dict:
        return {}

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
        net = inference_network(model, self.variant).to(device=device, dtype=self.dtype)
        self.net = net.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if compile_mode:  # e.g. "max-autotune-no-cudagraphs", or "reduce-overhead" for CUDA graphs
            self.net = self._compiled(self.net, compile_mode, device)

    @staticmethod
    def _compiled(net: nn.Module, mode: str, device: torch.device) -> nn.Module:
        if device.type == "cpu" and mode == "default":
            # freezing lets inductor pre-pack the oneDNN weights and fuse conv + pointwise ops
            return torch.compile(net, options={"freezing": True}, dynamic=False)
        return torch.compile(net, mode=mode, dynamic=False)

    def __call__(
        self,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on self.device
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 raw output
        x = x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)
        exact = self.device.type == "cuda" and self.precision == "fp32"
        with torch.inference_mode(), no_tf32() if exact else contextlib.nullcontext():
            out = self.net(x)
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
    or "reduce-overhead" (CUDA graphs); compiling takes minutes and happens on the first call.
    """
    dev = resolve_device(device, flag="device", allow_auto=False)
    if runner not in RUNNERS:
        raise UsageError(f"unknown runner {runner!r}; choose from {', '.join(RUNNERS)}")
    if runner == "auto":
        runner = auto_runner(dev)
    if runner == "torch":
        return TorchRunner(model, dev, precision, variant, compile_mode)
    if runner == "onnxruntime":
        require_module("onnxruntime", runner, "onnxruntime (or onnxruntime-gpu)")
        require_module("onnx", runner, "onnx")
        from .onnx_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model, dev, precision, variant, fingerprint)
    require_module("tensorrt", runner, "tensorrt")
    require_module("onnx", runner, "onnx")
    if dev.type != "cuda":
        raise UsageError("--depth-runner tensorrt needs a CUDA device (use --device cuda)")
    from .tensorrt_runner import TensorRTRunner

    return TensorRTRunner(model, dev, precision, fingerprint=fingerprint)
