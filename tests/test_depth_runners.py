"""Runners agree with the fp32 torch reference: ONNX Runtime exactly, low precision judged
against plain torch in the same precision. CUDA / TensorRT cases skip without them."""

from __future__ import annotations

import copy
import importlib.util
import json

import onnx
import pytest
import torch
from torch import nn

from smalldepthmask.depth import teacher_from_model
from smalldepthmask.depth.densedepth import DenseDepth
from smalldepthmask.depth.onnx_runner import OPSET, export_onnx
from smalldepthmask.depth.runners import build_runner
from smalldepthmask.errors import UsageError

pytestmark = pytest.mark.usefixtures("private_cache")  # SMALLDEPTHMASK_CACHE in tmp_path

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
needs_trt = pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs CUDA and the tensorrt package")


@pytest.fixture(scope="module")
def model() -> DenseDepth:
    torch.manual_seed(0)
    net = DenseDepth().eval()
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # [B, 3, H, W] in [0, 1]


@pytest.fixture(scope="module")
def reference(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float().cpu() - ref).abs().max() / ref.abs().max()).item()


def plain_low_precision_error(model, x, ref, dtype, device="cpu") -> float:
    """Error of the unmodified network simply cast to `dtype`: the yardstick for low precision."""
    net = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    with torch.no_grad():
        return rel_err(net(x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)), ref)


@pytest.mark.parametrize("variant", ["fast", "reference"])
def test_torch_cpu_fp32(model, x, reference, variant):
    run = build_runner(model, "torch", "cpu", "fp32", variant)
    assert rel_err(run(x), reference) <= 1e-4


def test_torch_cpu_bf16_relative_to_plain_bf16(model, x, reference):
    run = build_runner(model, "torch", "cpu", "bf16")
    assert run.describe()["precision"] == "bf16"
    assert rel_err(run(x), reference) <= 2 * plain_low_precision_error(model, x, reference, torch.bfloat16)


@pytest.mark.parametrize("variant", ["fast", "reference"])
def test_onnxruntime_cpu_fp32(model, x, reference, variant):
    run = build_runner(model, "onnxruntime", "cpu", "fp32", variant)
    assert rel_err(run(x), reference) <= 1e-4
    assert rel_err(run(x[:1]), reference[:1]) <= 1e-4  # dynamic batch


def test_onnx_export_fixed_size_dynamic_batch(model, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx", 64, 96)
    graph = onnx.load(str(path), load_external_data=False)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= OPSET >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 96]
    out_dims = graph.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param and [d.dim_value for d in out_dims[1:]] == [1, 32, 48]


def test_onnxruntime_refuses_bf16_on_cpu(model):
    with pytest.raises(UsageError, match="ONNX Runtime has no bfloat16 convolution"):
        build_runner(model, "onnxruntime", "cpu", "bf16")


def test_missing_runner_or_device_is_a_usage_error(model):
    with pytest.raises(UsageError, match="tensorrt"):
        build_runner(model, "tensorrt", "cpu")
    if not HAS_CUDA:
        with pytest.raises(UsageError, match="no usable CUDA"):
            build_runner(model, "torch", "cuda")
    with pytest.raises(UsageError, match="fp16 is a GPU precision"):
        build_runner(model, "torch", "cpu", "fp16")


def test_teacher_api(model, x):
    teacher = teacher_from_model(model, "nyu", "cpu", "torch", "fp32")
    depth = teacher(x)
    assert depth.shape == (3, 1, 32, 32) and depth.dtype == torch.float32
    assert depth.min() >= 0.1 and depth.max() <= 10.0 and teacher.max_depth == 10.0
    info = json.loads(json.dumps(teacher.describe()))
    assert info["units"] == "metres" and info["runner"] == "torch" and info["depth_range_m"] == [0.1, 10.0]
    with pytest.raises(ValueError, match="multiples of 32"):
        teacher(torch.rand(1, 3, 60, 64))


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("variant", ["reference", "fast"])
def test_torch_cuda(model, x, reference, precision, variant):
    run = build_runner(model, "torch", "cuda", precision, variant)
    out = run(x.cuda())
    assert out.is_cuda and out.dtype == torch.float32
    if precision == "fp32":
        assert rel_err(out, reference) <= 1e-4  # the runner turns TF32 off for fp32
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        assert rel_err(out, reference) <= 2 * plain_low_precision_error(model, x, reference, dtype, "cuda")


@needs_cuda
def test_onnxruntime_cuda(model, x, reference):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    run = build_runner(model, "onnxruntime", "cuda", "fp32", "reference")
    assert rel_err(run(x.cuda()), reference) <= 5e-3  # cuDNN inside ORT may use TF32


@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "fp32", "bf16"])
def test_tensorrt(model, x, reference, precision):
    run = build_runner(model, "tensorrt", "cuda", precision, "reference")
    run.prepare(4, 64, 64)  # profile 1..4, tuned for 4
    out = run(x.cuda())  # a batch of 3: inside the profile
    assert out.shape == reference.shape and out.dtype == torch.float32
    if precision == "fp32":
        limit = 5e-3  # TensorRT may use TF32 for fp32 networks
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        limit = 2 * plain_low_precision_error(model, x, reference, dtype, "cuda")
    assert rel_err(out, reference) <= limit
    big = run(torch.cat([x, x, x]).cuda())  # 9 > 4: split into engine calls
    assert rel_err(big[6:], reference) <= limit
