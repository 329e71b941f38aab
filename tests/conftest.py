import numpy as np
import pytest
import torch

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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
