"""ONNX export of DenseDepth and the ONNX Runtime runner.

The export has a fixed spatial size and a dynamic batch, opset 17, input `image`
(float32 [B, 3, H, W] in [0, 1]) and output `depth` (float32 [B, 1, H/2, W/2], the raw network
output). A half-precision export casts inside the graph, so callers always exchange float32.
Exports are cached under the user cache dir, keyed by the weights' fingerprint.
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
from .densedepth import DenseDepth
from .runners import DTYPES, BaseRunner, inference_network
from .weights import cache_dir

OPSET = 17
EXPORT_VERSION = 1  # bump when the exported graph changes, to invalidate cached exports
INPUT_NAME = "image"
OUTPUT_NAME = "depth"


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


def export_onnx(
    model: DenseDepth,
    path: Path,
    height: int,
    width: int,
    precision: str = "fp32",
    variant: str = "reference",
    device: torch.device | str = "cpu",
) -> Path:
    """Write an ONNX export of `model` for inputs [B, 3, height, width]; returns `path`.

    Traced on `device` (use the GPU for half precision: CPUs may lack fp16 kernels)."""
    net = CastWrapper(inference_network(model, variant).to(device).float(), DTYPES[precision]).eval()
    example = torch.rand(1, 3, height, width, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(path)
    return path


def onnx_path_for(fingerprint: str | None, height: int, width: int, precision: str, variant: str) -> Path:
    """Cache location of an export; a fresh temporary folder when there is no fingerprint."""
    name = f"densedepth-v{EXPORT_VERSION}-{variant}-{precision}-{height}x{width}.onnx"
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
    path = onnx_path_for(fingerprint, height, width, precision, variant)
    if not path.is_file():
        export_onnx(model, path, height, width, precision, variant, device)
    return path


class OnnxRuntimeRunner(BaseRunner):
    """ONNX Runtime (CPU, or CUDA when onnxruntime-gpu is installed); exports once per input size."""

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
        self.providers = self._providers(ort, device)
        self._sessions: dict[tuple[int, int], object] = {}

    @staticmethod
    def _precision(precision: str, device: torch.device) -> str:
        if precision in ("auto", "fp32"):
            return "fp32"
        if device.type == "cuda" and precision == "fp16":
            return "fp16"
        raise UsageError(f"--depth-runner onnxruntime runs fp32 (or fp16 on CUDA), not {precision} on {device.type}")

    @staticmethod
    def _providers(ort, device: torch.device) -> list:
        available = ort.get_available_providers()
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise UsageError("--depth-runner onnxruntime on CUDA needs `pip install onnxruntime-gpu`")
            return [("CUDAExecutionProvider", {"device_id": device.index or 0})]
        return ["CPUExecutionProvider"]

    def _session(self, height: int, width: int):
        key = (height, width)
        if key not in self._sessions:
            import onnxruntime as ort

            path = cached_export(self.model, self.fingerprint, height, width, self.precision, self.variant, self.device)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = torch.get_num_threads()
            self._sessions[key] = ort.InferenceSession(str(path), options, providers=self.providers)
        return self._sessions[key]

    def __call__(
        self,
        x: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1] on self.device
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float32 raw output on self.device
        session = self._session(x.shape[-2], x.shape[-1])
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
        torch.cuda.current_stream(x.device).synchronize()  # ORT uses its own stream
        session.run_with_iobinding(binding)
        return out

    def _details(self) -> dict:
        return {"opset": OPSET}
