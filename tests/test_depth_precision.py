"""--depth-precision x --depth-runner x device: every combination is accepted with a stated precision or
refused with a one-line reason (exit 2) before anything is written. The table is checked for CUDA devices
too (the decision needs no GPU); the runs are the ones this machine can make."""

from __future__ import annotations

import onnx
import onnxruntime
import pytest
import torch

from conftest import random_densedepth_weights
from smalldepthmask import gen
from smalldepthmask.depth.densedepth import DenseDepth
from smalldepthmask.depth.onnx_runner import OPSET_BF16, export_onnx_bytes
from smalldepthmask.depth.runners import build_runner, cpu_has_native_bf16, resolve_runner_precision
from smalldepthmask.errors import UsageError, run_cli
from test_gen import make_inputs

pytestmark = pytest.mark.usefixtures("private_cache")

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)
CPU_AUTO = "bf16" if cpu_has_native_bf16() else "fp32"
# (runner, precision, device, GPU has bf16) -> the precision used, or a piece of the refusal
TABLE = [
    ("torch", "auto", CPU, None, CPU_AUTO),
    ("torch", "fp32", CPU, None, "fp32"),
    ("torch", "bf16", CPU, None, "bf16"),
    ("torch", "fp16", CPU, None, "!fp16 is a GPU precision"),
    ("torch", "auto", GPU, True, "fp16"),
    ("torch", "fp32", GPU, True, "fp32"),
    ("torch", "bf16", GPU, True, "bf16"),
    ("torch", "bf16", GPU, False, "!this GPU has no bf16"),
    ("torch", "fp16", GPU, False, "fp16"),
    ("onnxruntime", "auto", CPU, None, "fp32"),
    ("onnxruntime", "fp32", CPU, None, "fp32"),
    ("onnxruntime", "bf16", CPU, None, "!ONNX Runtime has no bfloat16 convolution"),
    ("onnxruntime", "fp16", CPU, None, "!needs CUDA"),
    ("onnxruntime", "auto", GPU, True, "fp32"),
    ("onnxruntime", "fp16", GPU, True, "fp16"),
    ("onnxruntime", "bf16", GPU, True, "!ONNX Runtime has no bfloat16 convolution"),
    ("tensorrt", "auto", CPU, None, "!needs a CUDA device"),
    ("tensorrt", "fp32", CPU, None, "!needs a CUDA device"),
    ("tensorrt", "auto", GPU, True, "fp16"),
    ("tensorrt", "fp32", GPU, True, "fp32"),
    ("tensorrt", "fp16", GPU, True, "fp16"),
    ("tensorrt", "bf16", GPU, True, "bf16"),
    ("tensorrt", "bf16", GPU, False, "!this GPU has no bf16"),
]


@pytest.mark.parametrize("runner,precision,device,gpu_bf16,expected", TABLE)
def test_precision_table(runner, precision, device, gpu_bf16, expected):
    if not expected.startswith("!"):
        assert resolve_runner_precision(runner, precision, device, gpu_bf16) == expected
        return
    with pytest.raises(UsageError) as info:
        resolve_runner_precision(runner, precision, device, gpu_bf16)
    message = info.value.message
    assert expected[1:] in message and "\n" not in message and not info.value.details
    assert message.startswith("--depth-")  # names the flag


def test_unknown_names_are_refused():
    with pytest.raises(UsageError, match="unknown --depth-precision 'int8'"):
        resolve_runner_precision("torch", "int8", CPU)
    with pytest.raises(UsageError, match="unknown --depth-runner 'openvino'"):
        resolve_runner_precision("openvino", "auto", CPU)


@pytest.fixture(scope="module")
def model() -> DenseDepth:
    torch.manual_seed(0)
    return DenseDepth().eval()


@pytest.mark.parametrize("runner,precision", [("torch", "auto"), ("torch", "fp32"), ("torch", "bf16"),
                                              ("onnxruntime", "auto"), ("onnxruntime", "fp32")])
def test_every_accepted_cpu_combination_runs(model, runner, precision):
    run = build_runner(model, runner, "cpu", precision, "fast")
    out = run(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 1, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert run.describe()["precision"] == resolve_runner_precision(runner, precision, CPU)


def test_bf16_onnx_export_is_valid_at_opset_22_and_onnxruntime_cannot_run_it(model):
    """What the onnxruntime refusal rests on (and the graph TensorRT gets for bf16): at opset 22 a bf16
    export passes onnx's full check; onnxruntime has no kernel for it. Fails once onnxruntime gains one."""
    data = export_onnx_bytes(model, 32, 32, "bf16", "reference")
    graph = onnx.load_from_string(data)
    onnx.checker.check_model(graph, full_check=True)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == OPSET_BF16
    conv_weights = {n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    kinds = {i.data_type for i in graph.graph.initializer if i.name in conv_weights}
    assert kinds == {onnx.TensorProto.BFLOAT16}
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    with pytest.raises(Exception, match="(?i)conv"):
        onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


SIZES = ["--k", "1", "--compose-size", "64", "--out-size", "32", "--shard-size", "5", "--quiet", "--limit", "2"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_densedepth_weights(tmp_path_factory.mktemp("w") / "random.safetensors")


@pytest.mark.parametrize("flags,reason", [
    (["--depth-runner", "onnxruntime", "--depth-precision", "bf16"], "ONNX Runtime has no bfloat16 convolution"),
    (["--depth-runner", "torch", "--depth-precision", "fp16"], "fp16 is a GPU precision"),
    (["--depth-runner", "onnxruntime", "--depth-precision", "fp16"], "needs CUDA"),
    (["--depth-runner", "tensorrt"], "needs a CUDA device"),
])
def test_gen_refuses_with_one_line_before_anything_is_written(tmp_path, weights, capsys, flags, reason):
    fg, bg = make_inputs(tmp_path / "in")
    out = tmp_path / "o"
    argv = ["--shards", str(out), "--fg", str(fg), "--bg", str(bg), *SIZES, "--device", "cpu",
            "--depth-weights", str(weights), *flags]
    assert run_cli(gen.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and reason in err[0] and "Traceback" not in err[0]
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--depth-runner", "torch", "--depth-precision", "bf16"],
                                   ["--depth-runner", "onnxruntime", "--depth-precision", "fp32"]])
def test_gen_runs_with_accepted_cpu_combinations(tmp_path, weights, flags):
    import json

    fg, bg = make_inputs(tmp_path / "in")
    out = tmp_path / "o"
    argv = ["--shards", str(out), "--fg", str(fg), "--bg", str(bg), *SIZES, "--device", "cpu",
            "--depth-weights", str(weights), *flags]
    assert gen.main(argv) == 0
    teacher = json.loads((out / "manifest.json").read_text())["identity"]["teacher"]
    assert teacher["runner"] == flags[1] and teacher["precision"] == flags[3]
