"""The TensorRT runner's logic on the CPU: supported majors, the optimisation profile, cache keys and
paths, and the build / cache / device-guard flow driven through a stand-in `tensorrt` module that records
the calls (the TensorRT 10/11 API as documented: Builder, OnnxParser, IBuilderConfig, ITimingCache,
Runtime). Real engines are built by the `needs_trt` cases in test_depth_runners.py on a GPU machine."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from smalldepthmask.depth import tensorrt_runner as trt_runner
from smalldepthmask.depth.densedepth import DenseDepth
from smalldepthmask.depth.onnx_runner import INPUT_NAME
from smalldepthmask.depth.tensorrt_runner import (
    TensorRTRunner, build_engine, check_tensorrt_version, engine_key, engine_path, profile_shapes,
    timing_cache_path,
)
from smalldepthmask.errors import UsageError

GPU = {"gpu": "Fake H200", "compute_capability": "9.0"}


@pytest.mark.parametrize("version,major", [("10.0.1", 10), ("10.13.0.35", 10), ("11.4.0.106", 11)])
def test_supported_majors(version, major):
    assert check_tensorrt_version(version) == major


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "12.0.0", "dev"])
def test_other_majors_are_refused_with_the_pin(version):
    with pytest.raises(UsageError) as info:
        check_tensorrt_version(version)
    assert "TensorRT 10 and 11" in info.value.message and "tensorrt>=10,<12" in info.value.message
    assert "\n" not in info.value.message


def test_missing_tensorrt_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(UsageError, match="tensorrt>=10,<12"):
        trt_runner.import_tensorrt()


def test_profile_is_one_to_the_batch_size_tuned_for_the_batch_size():
    assert profile_shapes(64, 448, 448) == ((1, 3, 448, 448), (64, 3, 448, 448), (64, 3, 448, 448))
    assert profile_shapes(1, 64, 96) == ((1, 3, 64, 96),) * 3
    with pytest.raises(ValueError):
        profile_shapes(0, 64, 64)


def test_engine_key_and_paths_change_with_everything_they_depend_on(private_cache):
    base = dict(gpu=GPU, tensorrt="10.13.0", onnx_sha256="a" * 64, profile=profile_shapes(64, 448, 448),
                precision="fp16", variant="fast")
    first = engine_path(engine_key(**base))
    assert first.parent == private_cache / "tensorrt" and first.suffix == ".engine"
    changes = [dict(gpu={**GPU, "gpu": "Other"}), dict(tensorrt="11.4.0"), dict(onnx_sha256="b" * 64),
               dict(profile=profile_shapes(128, 448, 448)), dict(precision="bf16"), dict(variant="reference")]
    paths = {engine_path(engine_key(**{**base, **change})) for change in changes}
    assert first not in paths and len(paths) == len(changes)
    assert timing_cache_path(GPU, "10.13.0") != timing_cache_path(GPU, "11.4.0")
    assert timing_cache_path(GPU, "10.13.0") == timing_cache_path(dict(GPU), "10.13.0")


ACTIVE: list = []  # the device of the innermost torch.cuda.device guard


class FakeGuard:
    def __init__(self, device):
        self.device = torch.device(device)

    def __enter__(self):
        ACTIVE.append(self.device)

    def __exit__(self, *exc):
        ACTIVE.pop()


def fake_tensorrt(version: str = "10.13.0", strongly_typed_flag: bool = True, parses: bool = True):
    """A stand-in `tensorrt` module recording the calls the runner makes."""
    log: dict = {"builds": [], "timing_cache_in": [], "deserialized_on": [], "runtime_on": []}

    class Config:
        def __init__(self):
            self.profiles, self.cache = [], None

        def set_memory_pool_limit(self, pool, size):
            log["workspace"] = (pool, size)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            log["timing_cache_in"].append(bytes(data))
            return SimpleNamespace(data=bytes(data), serialize=lambda: bytes(data) + b"+entry")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            log["network_flags"] = flags
            return SimpleNamespace()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            profile = SimpleNamespace(shapes={})
            profile.set_shape = lambda name, lo, opt, hi: profile.shapes.__setitem__(name, (lo, opt, hi))
            return profile

        def build_serialized_network(self, network, config):
            assert config.cache is not None, "the timing cache is attached before the build"
            log["builds"].append({"profiles": [p.shapes for p in config.profiles], "on": list(ACTIVE)})
            return b"ENGINE" + json.dumps(config.profiles[0].shapes).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parses else 1

        def parse_from_file(self, path):
            log["parsed"] = path
            return parses

        def get_error(self, i):
            return "In node 3 (Conv):\n UNSUPPORTED_NODE: bfloat16"

    class Runtime:
        def __init__(self, logger):
            log["runtime_on"].append(list(ACTIVE))

        def deserialize_cuda_engine(self, blob):
            log["deserialized_on"].append(list(ACTIVE))
            return SimpleNamespace(blob=blob, create_execution_context=lambda: SimpleNamespace(on=list(ACTIVE)))

    flags = SimpleNamespace(STRONGLY_TYPED=1) if strongly_typed_flag else SimpleNamespace()
    module = SimpleNamespace(__version__=version, Logger=SimpleNamespace, Builder=Builder, OnnxParser=OnnxParser,
                             Runtime=Runtime, NetworkDefinitionCreationFlag=flags,
                             MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"))
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    return module, log


def test_build_engine_strongly_typed_with_profile_and_timing_cache(tmp_path):
    trt, log = fake_tensorrt()
    cache = tmp_path / "timing.cache"
    blob = build_engine(trt, tmp_path / "m.onnx", profile_shapes(64, 32, 32), "fp16", cache)
    assert log["network_flags"] == 1 << 1
    assert log["builds"][0]["profiles"] == [{INPUT_NAME: profile_shapes(64, 32, 32)}]
    assert blob.startswith(b"ENGINE") and cache.read_bytes() == b"+entry"
    build_engine(trt, tmp_path / "m.onnx", profile_shapes(8, 32, 32), "fp16", cache)
    assert log["timing_cache_in"] == [b"", b"+entry"]  # the second build starts from the first's timings
    assert cache.read_bytes() == b"+entry+entry"


def test_build_engine_without_the_flag_attribute_uses_the_default_network(tmp_path):
    trt, log = fake_tensorrt("11.4.0", strongly_typed_flag=False)
    build_engine(trt, tmp_path / "m.onnx", profile_shapes(4, 32, 32), "fp16", tmp_path / "t.cache")
    assert log["network_flags"] == 0  # TensorRT 11: every network is strongly typed


def test_a_graph_the_parser_refuses_is_one_line(tmp_path):
    trt, _ = fake_tensorrt(parses=False)
    with pytest.raises(UsageError) as info:
        build_engine(trt, tmp_path / "m.onnx", profile_shapes(4, 32, 32), "bf16", tmp_path / "t.cache")
    message = info.value.message
    assert "\n" not in message and "opset 22" in message and "UNSUPPORTED_NODE: bfloat16" in message
    assert message.endswith("use --depth-precision fp16") and not (tmp_path / "t.cache").exists()


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """TensorRTRunner on a pretend cuda:1: fake tensorrt, a recording device guard, a stub ONNX export."""
    trt, log = fake_tensorrt()
    exports: list = []

    def stub_export(model, fingerprint, height, width, precision, variant, device):
        exports.append((height, width, precision, variant, str(device)))
        path = tmp_path / f"{variant}-{precision}-{height}x{width}.onnx"
        path.write_bytes(f"onnx {variant} {precision} {height}x{width}".encode())
        return path

    monkeypatch.setattr(trt_runner, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_runner, "gpu_identity", lambda device: GPU)
    monkeypatch.setattr(trt_runner, "cached_export", stub_export)
    monkeypatch.setattr(torch.cuda, "device", FakeGuard)
    return log, exports


def test_runner_prepare_builds_caches_and_loads_under_the_device_guard(private_cache, fake_gpu):
    log, exports = fake_gpu
    model, cuda1 = DenseDepth(), torch.device("cuda", 1)
    lines: list[str] = []
    run = TensorRTRunner(model, cuda1, "fp16", variant="fast")
    run.log = lines.append
    info = run.prepare(64, 32, 32)
    assert exports == [(32, 32, "fp16", "fast", "cuda:1")]
    assert log["builds"] == [{"profiles": [{INPUT_NAME: profile_shapes(64, 32, 32)}], "on": [cuda1]}]
    assert log["runtime_on"] == [[cuda1]] and log["deserialized_on"] == [[cuda1]]
    assert run.engines[("fast", 32, 32)].context.on == [cuda1]
    assert info["engine_build_s"] is not None and len(lines) == 1 and "building a TensorRT 10.13.0 engine" in lines[0]
    (engine,) = (private_cache / "tensorrt").glob("*.engine")
    key = json.loads(engine.with_suffix(".json").read_text())
    assert key["profile_min_opt_max"] == [[1, 3, 32, 32], [64, 3, 32, 32], [64, 3, 32, 32]]
    assert key["precision"] == "fp16" and key["variant"] == "fast" and key["strongly_typed"] is True
    assert run.describe() == {"runner": "tensorrt", "precision": "fp16", "device": "cuda:1", "variant": "fast",
                              "tensorrt": "10.13.0", "strongly_typed": True, "opset": 17}

    again = TensorRTRunner(model, cuda1, "fp16", variant="fast")  # another process, same cache
    assert again.prepare(64, 32, 32)["engine_build_s"] is None and len(log["builds"]) == 1
    assert log["deserialized_on"] == [[cuda1], [cuda1]]

    other_batch = TensorRTRunner(model, cuda1, "fp16", variant="fast")
    other_batch.prepare(128, 32, 32)
    assert len(log["builds"]) == 2 and log["builds"][1]["profiles"][0][INPUT_NAME][2][0] == 128
    assert log["timing_cache_in"][1] == b"+entry"  # the shared timing cache was read
    assert not [p for p in (private_cache / "tensorrt").iterdir() if p.name.endswith(".tmp")]


def test_runner_bf16_exports_the_bf16_graph(private_cache, fake_gpu, monkeypatch):
    log, exports = fake_gpu
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    run = TensorRTRunner(DenseDepth(), torch.device("cuda", 0), "bf16", variant="reference")
    run.log = lambda msg: None
    run.prepare(4, 32, 32)
    assert exports == [(32, 32, "bf16", "reference", "cuda:0")] and run.describe()["opset"] == 22
