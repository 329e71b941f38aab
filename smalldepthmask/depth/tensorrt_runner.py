"""TensorRT runner: an engine built from the ONNX export, executed on torch's current stream.

The network is built strongly typed from an ONNX export whose weights and activations are
already in the chosen precision (fp16 by default; the graph casts the float32 input inside),
so the same code works on TensorRT 10 (where the flag opts in) and 11 (where strong typing is
the only mode). Engines are cached under the user cache dir, keyed by GPU, TensorRT version,
ONNX hash, spatial size, batch range and precision. Execution binds the caller's float32
composite batch and a torch output tensor directly (no copies) and calls `execute_async_v3`
on `torch.cuda.current_stream()`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ..errors import UsageError
from .densedepth import DenseDepth
from .onnx_runner import INPUT_NAME, OUTPUT_NAME, cached_export
from .runners import BaseRunner
from .weights import cache_dir, sha256_of

WORKSPACE_BYTES = 4 << 30


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise UsageError(f"--depth-runner tensorrt needs `pip install tensorrt` ({e})") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise UsageError(f"--depth-runner tensorrt needs TensorRT 10 or newer, found {trt.__version__}")
    return trt


def engine_key(
    device: torch.device, onnx_sha256: str, shape: tuple[int, int], batch: tuple[int, int, int], precision: str
) -> dict:
    """Everything an engine depends on; its hash names the cached file."""
    trt = _trt()
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "tensorrt": trt.__version__,
        "onnx_sha256": onnx_sha256,
        "height": shape[0],
        "width": shape[1],
        "batch_min_opt_max": list(batch),
        "precision": precision,
    }


def build_engine(onnx_path: Path, shape: tuple[int, int], batch: tuple[int, int, int]) -> bytes:
    """Serialized engine for inputs [b, 3, H, W] with b in batch (min, opt, max)."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    height, width = shape
    profile.set_shape(INPUT_NAME, *[(b, 3, height, width) for b in batch])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path}")
    return bytes(serialized)


class TensorRTRunner(BaseRunner):
    """Runs batches of up to `max_batch` images per engine call (larger batches are split)."""

    name = "tensorrt"

    def __init__(
        self,
        model: DenseDepth,
        device: torch.device,
        precision: str = "auto",
        max_batch: int = 32,
        opt_batch: int = 8,
        variant: str = "reference",
        fingerprint: str | None = None,
    ):
        self.trt = _trt()
        if device.type != "cuda":
            raise UsageError("--depth-runner tensorrt needs a CUDA device")
        super().__init__(model, device, precision, variant)
        self.fingerprint = fingerprint
        self.batch = (1, min(opt_batch, max_batch), max_batch)
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self._contexts: dict[tuple[int, int], tuple[object, object]] = {}
        self.engine_files: list[str] = []

    @staticmethod
    def _variant(variant: str, device: torch.device) -> str:
        return variant  # the ONNX export's graph, as given (the reference one by default)

    def _engine_path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return cache_dir() / "tensorrt" / f"densedepth-{digest}.engine"

    def _context(self, shape: tuple[int, int]):
        if shape not in self._contexts:
            onnx_path = cached_export(self.model, self.fingerprint, *shape, self.precision, self.variant, self.device)
            key = engine_key(self.device, sha256_of(onnx_path), shape, self.batch, self.precision)
            path = self._engine_path(key)
            if not path.is_file():
                print(
                    f"smalldepthmask: building a TensorRT engine for {shape[0]}x{shape[1]} "
                    f"({self.precision}; once per GPU and size, may take minutes) -> {path}",
                    file=sys.stderr,
                )
                with torch.cuda.device(self.device):
                    blob = build_engine(onnx_path, shape, self.batch)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blob)
                path.with_suffix(".json").write_text(json.dumps(key, indent=2) + "\n")
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not load the cached engine {path}; delete it to rebuild")
            self._contexts[shape] = (engine, engine.create_execution_context())
            self.engine_files.append(str(path))
        return self._contexts[shape][1]

    def __call__(
        self,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on self.device
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 raw output on self.device
        x = x.to(device=self.device, dtype=torch.float32).contiguous()
        context = self._context((x.shape[2], x.shape[3]))
        out = torch.empty(x.shape[0], 1, x.shape[2] // 2, x.shape[3] // 2, device=self.device)
        stream = torch.cuda.current_stream(self.device)
        for start in range(0, x.shape[0], self.batch[2]):
            chunk, target = x[start : start + self.batch[2]], out[start : start + self.batch[2]]
            context.set_input_shape(INPUT_NAME, tuple(chunk.shape))
            context.set_tensor_address(INPUT_NAME, chunk.data_ptr())
            context.set_tensor_address(OUTPUT_NAME, target.data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        return out

    def _details(self) -> dict:
        return {"tensorrt": self.trt.__version__, "batch_min_opt_max": list(self.batch)}
