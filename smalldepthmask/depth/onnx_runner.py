"""ONNX export of DenseDepth and the ONNX Runtime runner.

The export has a fixed spatial size and a dynamic batch, input `image` (float32 [B, 3, H, W] in [0, 1])
and output `depth` (float32 [B, 1, H/2, W/2], the raw network output). A half-precision export casts
inside the graph, so callers always exchange float32; its weights and activations are in that precision,
which is what TensorRT's strongly typed networks read the precision from. fp32 and fp16 exports are
opset 17; bf16 exports are opset 22, the first opset whose Conv accepts bfloat16 (at opset 17 onnx's
checker and onnxruntime reject a bf16 Conv). Exports are cached under the user cache dir, keyed by the
weights' fingerprint, built once under a lock and renamed into place.

On CUDA the ONNX Runtime session runs on torch's current CUDA stream (`user_compute_stream`), reads the
batch where it lies and writes into a torch tensor (IO binding on their data pointers), and does not
synchronize the host after the run (`disable_synchronize_execution_providers`).
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from .buildcache import build_once
from .densedepth import DenseDepth
from .runners import DTYPES, BaseRunner, inference_network, synchronize
from .weights import cache_dir

OPSET = 17  # fp32 and fp16 exports
OPSET_BF16 = 22  # ONNX Conv takes bfloat16 from opset 22 on
EXPORT_VERSION = 2  # bump when the exported graph changes, to invalidate cached exports
INPUT_NAME = "image"
OUTPUT_NAME = "depth"


def opset_for(precision: str) -> int:
    return OPSET_BF16 if precision == "bf16" else OPSET


class CastWrapper(nn.Module):
    """float32 in, `dtype` inside, float32 out."""

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net = net.to(dtype)
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] f32 -> [B, 1, H/2, W/2] f32
        return self.net(image.to(self.dtype)).float()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, shapes and bytes); keys exported files."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_onnx_bytes(
    model: DenseDepth,
    height: int,
    width: int,
    precision: str = "fp32",
    variant: str = "reference",
    device: torch.device | str = "cpu",
) -> bytes:
    """The serialized ONNX export of `model` for inputs [B, 3, height, width] in `precision`.

    Traced on `device` (use the GPU for fp16: CPUs may lack fp16 kernels)."""
    net = CastWrapper(inference_network(model, variant).to(device).float(), DTYPES[precision]).eval()
    example = torch.rand(1, 3, height, width, device=device)
    with tempfile.TemporaryDirectory(prefix="smalldepthmask-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset_for(precision),
                do_constant_folding=True,
                dynamo=False,
            )
        return path.read_bytes()


def export_onnx(
    model: DenseDepth,
    path: Path,
    height: int,
    width: int,
    precision: str = "fp32",
    variant: str = "reference",
    device: torch.device | str = "cpu",
) -> Path:
    """Write an ONNX export of `model` to `path` (atomically, built once under a lock); returns `path`."""
    build_once(path, lambda: export_onnx_bytes(model, height, width, precision, variant, device),
               f"exporting {path.name}")
    return path


def onnx_path_for(fingerprint: str | None, height: int, width: int, precision: str, variant: str) -> Path:
    """Cache location of an export; a fresh temporary folder when there is no fingerprint."""
    name = (f"densedepth-v{EXPORT_VERSION}-{variant}-{precision}-opset{opset_for(precision)}"
            f"-{height}x{width}.onnx")
    if fingerprint is None:
        return Path(tempfile.mkdtemp(prefix="smalldepthmask-onnx-")) / name
    return cache_dir() / "onnx" / fingerprint[:16] / name


def cached_export(
    model: DenseDepth,
    fingerprint: str | None,
    height: int,
    width: int,
    precision: str,
    variant: str,
    device: torch.device | str = "cpu",
) -> Path:
    return export_onnx(model, onnx_path_for(fingerprint, height, width, precision, variant),
                       height, width, precision, variant, device)


def cuda_provider_options(device: torch.device, stream: int) -> dict:
    """CUDA execution provider options: the GPU of `device`, running on the CUDA stream handle `stream`."""
    return {"device_id": device.index or 0, "user_compute_stream": str(stream), "has_user_compute_stream": "1"}


class OnnxRuntimeRunner(BaseRunner):
    """ONNX Runtime (CPU, or CUDA when onnxruntime-gpu is installed); exports once per graph and size."""

    name = "onnxruntime"

    def __init__(
        self,
        model: DenseDepth,
        device: torch.device,
        precision: str = "auto",
        variant: str = "auto",
        fingerprint: str | None = None,
    ):
        import onnxruntime as ort

        super().__init__(model, device, precision, variant)
        self.fingerprint = fingerprint
        self.ort = ort
        self._check_provider()
        self.sessions: dict[tuple[str, int, int], object] = {}
        self.stream: torch.cuda.Stream | None = None  # the CUDA stream the sessions run on
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def _check_provider(self) -> None:
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in self.ort.get_available_providers():
            raise UsageError("--depth-runner onnxruntime on CUDA needs `pip install onnxruntime-gpu`")

    def _providers(self) -> list:
        if self.device.type != "cuda":
            return ["CPUExecutionProvider"]
        if self.stream is None:  # torch's current stream when the first session is made
            self.stream = torch.cuda.current_stream(self.device)
        return [("CUDAExecutionProvider", cuda_provider_options(self.device, self.stream.cuda_stream))]

    def _prepare(self, variant: str, batch: int, height: int, width: int) -> dict:
        key = (variant, height, width)
        if key not in self.sessions:
            path = cached_export(self.model, self.fingerprint, height, width, self.precision, variant, self.device)
            options = self.ort.SessionOptions()
            options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = torch.get_num_threads()
            self.sessions[key] = self.ort.InferenceSession(str(path), options, providers=self._providers())
        if self.device.type == "cuda":  # cuDNN's algorithm search at the batch shape now, not in batch 1
            self._run(variant, torch.rand(batch, 3, height, width, device=self.device))
            synchronize(self.device)
        return {}

    def _release(self, variant: str) -> None:
        for key in [k for k in self.sessions if k[0] == variant]:
            del self.sessions[key]

    def _run(
        self,
        variant: str,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on self.device
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 raw output on self.device
        session = self.sessions[(variant, x.shape[-2], x.shape[-1])]
        x = x.to(device=self.device, dtype=torch.float32).contiguous()
        if self.device.type == "cpu":
            (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
            return torch.from_numpy(out)
        return self._run_cuda(session, x)

    def _run_cuda(
        self,
        session,
        x: torch.Tensor,  # [B, 3, H, W] float32 contiguous on CUDA
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 on CUDA
        out = torch.empty(x.shape[0], 1, x.shape[2] // 2, x.shape[3] // 2, device=x.device)
        index = x.device.index or 0
        binding = session.io_binding()
        binding.bind_input(INPUT_NAME, "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream == self.stream.cuda_stream:
            session.run_with_iobinding(binding, self.run_options)
        else:  # the caller moved to another stream: order the session's stream after it and back, no host sync
            self.stream.wait_stream(current)
            session.run_with_iobinding(binding, self.run_options)
            current.wait_stream(self.stream)
        return out

    def _versions(self) -> dict:
        return {"onnxruntime": self.ort.__version__}

    def _details(self) -> dict:
        return {"opset": opset_for(self.precision)}
