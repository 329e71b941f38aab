import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision  # noqa: F401 - before the Keras-parity test imports TensorFlow: torchvision pulls in triton,
# whose import segfaults once TensorFlow's own LLVM is loaded (the package imports torchvision lazily, so the
# order would otherwise depend on which test builds a DenseDepth first)


def pytest_sessionstart(session):
    """Compile (or find in the cache) the composite kernels once, before any test and outside every test's
    subprocess timeout; subprocesses and tests that move SMALLDEPTHMASK_CACHE keep using that one build."""
    from smalldepthmask import _build, _ops

    os.environ.setdefault(_build.EXT_CACHE_ENV, str(_build.ext_cache_root().resolve()))
    status = _ops.load()  # raises under SMALLDEPTHMASK_REQUIRE_EXT=1 when a part did not build
    print(f"smalldepthmask kernels: {_ops.available()[1]}; {status.get('source')}: {status.get('path')}")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])]


def soft_disc(h: int, w: int, rng: np.random.Generator, hard: bool = False) -> np.ndarray:
    """[h, w, 4] uint8 random-coloured ellipse with a soft (or hard) alpha edge."""
    yy, xx = np.mgrid[:h, :w]
    r = np.sqrt(((yy + 0.5 - h / 2) / (h / 2)) ** 2 + ((xx + 0.5 - w / 2) / (w / 2)) ** 2)
    alpha = (r < 0.9) * 255.0 if hard else np.clip((1.0 - r) / 0.2, 0, 1) * 255
    rgba = np.empty((h, w, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (h, w, 3))
    rgba[..., 3] = alpha.astype(np.uint8)
    return rgba


def random_densedepth_weights(path):
    """Write a random-weights DenseDepth checkpoint (converted .safetensors) to `path`; returns `path`.

    Seeded, with a positive raw output so the depths fall inside the convention's range."""
    from smalldepthmask.depth.densedepth import DenseDepth
    from smalldepthmask.depth.weights import save_converted

    torch.manual_seed(0)
    state = {k: v for k, v in DenseDepth().state_dict().items() if not k.endswith("num_batches_tracked")}
    with torch.no_grad():
        state["conv3.bias"].fill_(2.0)  # a positive raw output -> depths inside the range
        state["conv3.weight"].mul_(0.01)
    save_converted(state, path.with_suffix(".h5"), "0" * 64, path)
    return path


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """SMALLDEPTHMASK_CACHE pointed at an empty folder under tmp_path; returns that folder."""
    monkeypatch.setenv("SMALLDEPTHMASK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


class FakeTeacher:
    """A cheap deterministic stand-in for DenseDepth: depth from the composite's brightness."""

    size_multiple = 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, 1, S/2, S/2] metres
        return 1.0 + 4.0 * F.avg_pool2d(x.mean(1, keepdim=True), 2)

    def describe(self) -> dict:
        return {"teacher": "fake", "convention": "nyu", "depth_range_m": [0.1, 10.0]}


def gen_with_fake_teacher(out, argv: list[str]) -> None:
    """Run gen into `out` with the fake teacher standing in for DenseDepth."""
    from smalldepthmask import depth as depth_pkg
    from smalldepthmask import gen
    mp = pytest.MonkeyPatch()
    mp.setattr(depth_pkg, "resolve_for_gen", lambda *a, **k: FakeTeacher())
    try:
        assert gen.main(["--shards", str(out), *argv]) == 0
    finally:
        mp.undo()
