"""prepare(): what a runner builds before the first batch, the timed choice of graph (run for real on the
CPU with variant="timed"), the start-up message, and the fp16 overflow watch. CUDA cases skip without a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from smalldepthmask.depth import onnx_runner, runners, teacher_from_model
from smalldepthmask.depth.buildcache import CHOICES_FILE
from smalldepthmask.depth.densedepth import DenseDepth
from smalldepthmask.depth.runners import build_runner
from smalldepthmask.depth.teacher import OverflowWatch, Teacher, ready_message
from smalldepthmask.errors import UsageError

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture(scope="module")
def model() -> DenseDepth:
    torch.manual_seed(0)
    return DenseDepth().eval()


@pytest.fixture
def quick_timing(monkeypatch):
    """One warm-up and one timed call per graph: the same flow, less CPU."""
    monkeypatch.setattr(runners, "TIMING_WARMUP", 1)
    monkeypatch.setattr(runners, "TIMING_ITERS", 1)


@pytest.fixture
def exports(monkeypatch) -> list:
    """Counts ONNX exports (each call of export_onnx_bytes) while still exporting for real."""
    calls: list = []
    real = onnx_runner.export_onnx_bytes

    def counting(*args, **kwargs):
        calls.append(args[1:3])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_runner, "export_onnx_bytes", counting)
    return calls


def test_onnxruntime_prepare_exports_before_the_first_batch(model, private_cache, exports):
    run = build_runner(model, "onnxruntime", "cpu", "fp32", "reference", fingerprint="ab" * 32)
    run.prepare(2, 64, 64)
    assert exports == [(64, 64)]
    (path,) = (private_cache / "onnx").rglob("*.onnx")
    assert "reference-fp32-opset17-64x64" in path.name
    out = run(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 32, 32) and exports == [(64, 64)]  # the batch ran what prepare made
    again = build_runner(model, "onnxruntime", "cpu", "fp32", "reference", fingerprint="ab" * 32)
    again.prepare(2, 64, 64)
    assert exports == [(64, 64)]  # another runner (process) reads the cached export
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_unprepared_runner_prepares_for_the_first_batch_shape(model, private_cache):
    run = build_runner(model, "torch", "cpu", "fp32", "fast")
    assert run.prepared == {}
    run(torch.rand(1, 3, 64, 64))
    assert set(run.prepared) == {(64, 64)} and set(run.nets) == {"fast"}


def test_prepare_refuses_sizes_the_network_cannot_take(model):
    run = build_runner(model, "torch", "cpu", "fp32", "fast")
    with pytest.raises(ValueError, match="multiples of 32"):
        run.prepare(4, 48, 64)
    with pytest.raises(ValueError, match="batch_size"):
        run.prepare(0, 64, 64)


def test_timed_variant_keeps_the_faster_graph_and_remembers_it(model, private_cache, quick_timing, monkeypatch):
    run = build_runner(model, "torch", "cpu", "fp32", "timed")
    assert run.variant == "timed"
    info = run.prepare(1, 32, 32)
    seconds = info["variant_timing"]["seconds_per_batch"]
    assert set(seconds) == {"reference", "fast"} and info["variant_timing"]["cached"] is False
    assert run.variant == min(seconds, key=seconds.get) and set(run.nets) == {run.variant}  # the other is freed
    table = json.loads((private_cache / CHOICES_FILE).read_text())
    (record,) = table.values()
    assert record["choice"] == run.variant and record["key"]["height"] == 32 and record["key"]["batch"] == 1

    def no_timing(*args, **kwargs):
        raise AssertionError("timed again although the choice is remembered")

    monkeypatch.setattr(runners, "median_seconds", no_timing)
    again = build_runner(model, "torch", "cpu", "fp32", "timed")
    info = again.prepare(1, 32, 32)
    assert again.variant == run.variant and info["variant_timing"]["cached"] is True
    assert set(again.nets) == {run.variant}  # only the chosen graph is built
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    assert ((again(x) - ref).abs().max() / ref.abs().max()).item() <= 1e-4


def test_the_timed_choice_is_per_batch_and_size(model, private_cache, quick_timing):
    build_runner(model, "torch", "cpu", "fp32", "timed").prepare(1, 32, 32)
    build_runner(model, "torch", "cpu", "fp32", "timed").prepare(2, 32, 32)
    assert len(json.loads((private_cache / CHOICES_FILE).read_text())) == 2


def test_auto_variant_is_the_rewrite_on_cpu_and_timed_on_cuda():
    assert runners.resolve_variant("auto", torch.device("cpu")) == "fast"
    assert runners.resolve_variant("auto", torch.device("cuda", 0)) == "timed"
    assert runners.resolve_variant("reference", torch.device("cuda", 0)) == "reference"
    with pytest.raises(UsageError, match="unknown variant"):
        runners.resolve_variant("quick", torch.device("cpu"))


def test_teacher_prepare_says_one_line(model, private_cache):
    teacher = teacher_from_model(model, "nyu", "cpu", "torch", "fp32", "fast")
    lines: list[str] = []
    info = teacher.prepare(4, 64, 64, log=lines.append)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("smalldepthmask: depth teacher ready in ")
    assert "torch fp32 on cpu, fast graph, 64x64, batch 4" in lines[0] and info["seconds"] >= 0


def test_ready_message_names_engine_build_and_timing():
    described = {"runner": "tensorrt", "precision": "fp16", "device": "cuda:1", "variant": "fast"}
    info = {"seconds": 95.25, "engine": "/c/x.engine", "engine_build_s": 93.0,
            "variant_timing": {"seconds_per_batch": {"reference": 0.05, "fast": 0.04}, "cached": False}}
    line = ready_message(described, 64, 448, 448, info)
    assert line == ("smalldepthmask: depth teacher ready in 95.2 s: tensorrt fp16 on cuda:1, fast graph, "
                    "448x448, batch 64, graph chosen by timing (reference 50.0 ms, fast 40.0 ms per batch), "
                    "engine built in 93.0 s")
    info.update(engine_build_s=None, variant_timing={"seconds_per_batch": {"fast": 0.04}, "cached": True})
    assert "remembered" in ready_message(described, 64, 448, 448, info)
    assert "engine loaded from the cache" in ready_message(described, 64, 448, 448, info)


class _Fp16Runner(nn.Module):
    """A runner stand-in that claims fp16 and returns what it is given."""

    name, precision, device, variant = "fake", "fp16", torch.device("cpu"), "reference"

    def forward(self, x):
        return x[:, :1, ::2, ::2].clone()


def test_fp16_overflow_stops_the_run():
    from smalldepthmask.depth.conventions import CONVENTIONS

    teacher = Teacher(DenseDepth(), _Fp16Runner(), CONVENTIONS["nyu"])
    assert teacher(torch.rand(1, 3, 64, 64)).shape == (1, 1, 32, 32)
    bad = torch.rand(1, 3, 64, 64)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(UsageError, match="overflowed in fp16"):
        teacher(bad)


@needs_cuda
def test_overflow_watch_needs_no_sync_on_cuda():
    watch = OverflowWatch()
    raw = torch.ones(2, 1, 8, 8, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            watch.watch(raw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    raw[0, 0, 0, 0] = float("nan")
    with pytest.raises(UsageError, match="overflowed"):
        watch.watch(raw)
        torch.cuda.synchronize()
        watch.watch(torch.ones_like(raw))


@needs_cuda
def test_cuda_timed_choice_and_cudnn_warmup(model, private_cache):
    run = build_runner(model, "torch", "cuda", "fp16")
    info = run.prepare(2, 64, 64)
    assert run.variant in ("fast", "reference") and info["variant_timing"]["cached"] is False
    assert build_runner(model, "torch", "cuda", "fp16").prepare(2, 64, 64)["variant_timing"]["cached"] is True


@needs_cuda
def test_onnxruntime_cuda_on_another_stream(model, private_cache):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    run = build_runner(model, "onnxruntime", "cuda", "fp32", "reference")
    run.prepare(2, 64, 64)
    assert run.stream.cuda_stream == torch.cuda.current_stream().cuda_stream
    x = torch.rand(2, 3, 64, 64, device="cuda")
    same = run(x)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        other = run(x)
    torch.cuda.synchronize()
    assert torch.equal(same, other)
