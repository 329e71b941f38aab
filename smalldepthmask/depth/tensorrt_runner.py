"""TensorRT runner: an engine built from the ONNX export, executed on torch's current stream.

Supported: TensorRT 10 and 11 (`pip install "tensorrt>=10,<12"`). The network is always built strongly
typed (on 10 the STRONGLY_TYPED flag opts in; 11 builds nothing else and ignores the flag), so the precision
comes from the exported graph: its weights and activations are already fp32, fp16 or bf16 (bf16 at ONNX
opset 22, see onnx_runner), with float32 input and output cast inside.

One optimisation profile per engine: batches 1..B, tuned for B, where B is the batch size given to
`prepare` (the generator's batch size; it pads its last batch, so every call has the tuned shape). Engines
live in the cache dir, keyed by GPU, compute capability, TensorRT version, ONNX hash, profile, precision
and graph; each is built once under a lock file (concurrent processes wait and share it) and renamed into
place; a timing cache per GPU and TensorRT version, also locked and renamed, makes rebuilds faster. The
engine is built, deserialized and run under `torch.cuda.device(dev)`, so cuda:N uses GPU N. Execution binds
the caller's float32 batch and a torch output tensor (no copies) and calls `execute_async_v3` on
`torch.cuda.current_stream()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from .buildcache import atomic_write, build_once, key_digest, locked, stderr_log
from .densedepth import DenseDepth
from .onnx_runner import INPUT_NAME, OUTPUT_NAME, cached_export, opset_for
from .runners import BaseRunner
from .weights import cache_dir, sha256_of

SUPPORTED_MAJORS = (10, 11)
EXTRA_PIN = "tensorrt>=10,<12"
WORKSPACE_BYTES = 4 << 30


def check_tensorrt_version(version: str) -> int:
    """The major version, or UsageError when it is not a supported one."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = -1
    if major not in SUPPORTED_MAJORS:
        raise UsageError(f"--depth-runner tensorrt supports TensorRT 10 and 11, found {version}: "
                         f"pip install \"{EXTRA_PIN}\" (or use --depth-runner torch)")
    return major


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise UsageError(f"--depth-runner tensorrt needs `pip install \"{EXTRA_PIN}\"` ({e})") from None
    check_tensorrt_version(trt.__version__)
    return trt


Shape = tuple[int, int, int, int]


def profile_shapes(batch_size: int, height: int, width: int) -> tuple[Shape, Shape, Shape]:
    """The optimisation profile's (min, opt, max) input shapes: batches 1..batch_size, tuned for batch_size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    full = (batch_size, 3, height, width)
    return (1, 3, height, width), full, full


def gpu_identity(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    return {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def engine_key(
    gpu: dict, tensorrt: str, onnx_sha256: str, profile: tuple[Shape, Shape, Shape], precision: str, variant: str
) -> dict:
    """Everything an engine depends on; its hash names the cached file."""
    return {**gpu, "tensorrt": tensorrt, "onnx_sha256": onnx_sha256, "profile_min_opt_max": [list(s) for s in profile],
            "precision": precision, "variant": variant, "strongly_typed": True}


def engine_path(key: dict) -> Path:
    return cache_dir() / "tensorrt" / f"densedepth-{key_digest(key)}.engine"


def timing_cache_path(gpu: dict, tensorrt: str) -> Path:
    """One timing cache per GPU model and TensorRT version (what its entries depend on)."""
    return cache_dir() / "tensorrt" / f"timing-{key_digest({**gpu, 'tensorrt': tensorrt})}.cache"


def parse_errors(parser) -> str:
    errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
    return "; ".join(errors) or "no error reported"


def build_engine(trt, onnx_path: Path, profile: tuple[Shape, Shape, Shape], precision: str,
                 timing_cache: Path, log=stderr_log) -> bytes:
    """A serialized strongly typed engine for `onnx_path` with one optimisation profile (min, opt, max).

    Reads and updates `timing_cache` (under its lock, written atomically). A graph the parser refuses is a
    UsageError (for bf16: a TensorRT whose parser lacks opset 22)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # 11 may drop the no-op flag
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        hint = "; use --depth-precision fp16" if precision == "bf16" else ""
        raise UsageError(f"--depth-runner tensorrt: TensorRT {trt.__version__} could not parse the {precision} "
                         f"ONNX export (opset {opset_for(precision)}): {parse_errors(parser)}{hint}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    optimization = builder.create_optimization_profile()
    optimization.set_shape(INPUT_NAME, *profile)
    config.add_optimization_profile(optimization)
    with locked(timing_cache, "updating the TensorRT timing cache", log):
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT could not build an engine from {onnx_path}")
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


@dataclass
class Engine:
    engine: object  # trt.ICudaEngine
    context: object  # trt.IExecutionContext
    max_batch: int
    path: Path
    build_s: float | None  # None: loaded from the cache


class TensorRTRunner(BaseRunner):
    """Runs batches of up to the prepared batch size per engine call (larger batches are split)."""

    name = "tensorrt"

    def __init__(
        self,
        model: DenseDepth,
        device: torch.device,
        precision: str = "auto",
        variant: str = "auto",
        fingerprint: str | None = None,
    ):
        self.trt = import_tensorrt()
        super().__init__(model, device, precision, variant)
        self.fingerprint = fingerprint
        with torch.cuda.device(self.device):
            self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.engines: dict[tuple[str, int, int], Engine] = {}

    def _prepare(self, variant: str, batch: int, height: int, width: int) -> dict:
        have = self.engines.get((variant, height, width))
        if have is not None and have.max_batch >= batch:
            return {"engine": str(have.path), "engine_build_s": have.build_s}
        trt, version = self.trt, self.trt.__version__
        onnx_path = cached_export(self.model, self.fingerprint, height, width, self.precision, variant, self.device)
        profile = profile_shapes(batch, height, width)
        gpu = gpu_identity(self.device)
        key = engine_key(gpu, version, sha256_of(onnx_path), profile, self.precision, variant)
        path = engine_path(key)

        def build() -> bytes:
            self.log(f"smalldepthmask: building a TensorRT {version} engine ({variant} graph, {self.precision}, "
                     f"{height}x{width}, batch 1..{batch}; once per GPU, size and batch, may take minutes)")
            with torch.cuda.device(self.device):
                blob = build_engine(trt, onnx_path, profile, self.precision, timing_cache_path(gpu, version), self.log)
            atomic_write(path.with_suffix(".json"), (json.dumps(key, indent=2) + "\n").encode())
            return blob

        blob, seconds = build_once(path, build, "building a TensorRT engine", self.log)
        with torch.cuda.device(self.device):
            engine = self.runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise RuntimeError(f"TensorRT could not load the cached engine {path}; delete it to rebuild")
            context = engine.create_execution_context()
        self.engines[(variant, height, width)] = Engine(engine, context, batch, path, seconds)
        return {"engine": str(path), "engine_build_s": seconds}

    def _release(self, variant: str) -> None:
        for key in [k for k in self.engines if k[0] == variant]:
            del self.engines[key]

    def _run(
        self,
        variant: str,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on self.device
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 raw output on self.device
        x = x.to(device=self.device, dtype=torch.float32).contiguous()
        entry = self.engines[(variant, x.shape[2], x.shape[3])]
        out = torch.empty(x.shape[0], 1, x.shape[2] // 2, x.shape[3] // 2, device=self.device)
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device).cuda_stream
            for start in range(0, x.shape[0], entry.max_batch):
                chunk, target = x[start : start + entry.max_batch], out[start : start + entry.max_batch]
                entry.context.set_input_shape(INPUT_NAME, tuple(chunk.shape))
                entry.context.set_tensor_address(INPUT_NAME, chunk.data_ptr())
                entry.context.set_tensor_address(OUTPUT_NAME, target.data_ptr())
                if not entry.context.execute_async_v3(stream):
                    raise RuntimeError("TensorRT execute_async_v3 failed")
        return out

    def _versions(self) -> dict:
        return {"tensorrt": self.trt.__version__}

    def _details(self) -> dict:
        return {"tensorrt": self.trt.__version__, "strongly_typed": True, "opset": opset_for(self.precision)}
