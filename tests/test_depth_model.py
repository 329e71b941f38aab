"""DenseDepth torch model: architecture as released, shapes, parameter count, and the fast rewrite."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from smalldepthmask.depth.conventions import CONVENTIONS
from smalldepthmask.depth.densedepth import (
    KERAS_BN_EPS,
    DenseDepth,
    UpBlock,
    check_input_size,
    from_state_dict,
    keras_parameter_count,
)
from smalldepthmask.depth.fast import FastDenseDepth


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def model() -> DenseDepth:
    torch.manual_seed(0)
    return randomize_bn(DenseDepth()).eval()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref).abs().max() / ref.abs().max()).item()


def test_parameter_counts(model):
    assert sum(p.numel() for p in model.parameters()) == 42_657_689
    assert keras_parameter_count(model) == 42_816_089  # Keras also counts BN mean/variance: "42.8M"


def test_decoder_widths_and_bn_eps(model):
    assert model.conv2.out_channels == 1664
    assert [getattr(model, f"up{k}").convB.out_channels for k in range(1, 5)] == [832, 416, 208, 104]
    assert [getattr(model, f"up{k}").convA.in_channels for k in range(1, 5)] == [1920, 960, 480, 272]
    eps = {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert eps == {KERAS_BN_EPS}


def test_no_download_when_building(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("DenseDepth() must not download anything")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    DenseDepth()


@pytest.mark.parametrize("batch,height,width", [(1, 64, 64), (2, 64, 96)])
def test_output_shape(model, batch, height, width):
    with torch.no_grad():
        out = model(torch.rand(batch, 3, height, width))
    assert out.shape == (batch, 1, height // 2, width // 2) and out.dtype == torch.float32


def test_skips_and_bottleneck(model):
    with torch.no_grad():
        bottleneck, skips = model.encode(torch.rand(1, 3, 64, 64))
    assert bottleneck.shape == (1, 1664, 2, 2) and bottleneck.min() >= 0  # final BN + ReLU
    assert [tuple(s.shape[1:]) for s in skips] == [(256, 4, 4), (128, 8, 8), (64, 16, 16), (64, 32, 32)]


@pytest.mark.parametrize("size", [(60, 64), (64, 0), (33, 64)])
def test_size_not_multiple_of_32_refused(size):
    with pytest.raises(ValueError, match="multiples of 32"):
        check_input_size(*size)


def _identity_conv(conv: nn.Conv2d, channel: int = 0) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, channel, 1, 1] = 1.0


def test_upblock_leaky_relu_only_after_second_conv():
    block = UpBlock(1, 1, 1)
    with torch.no_grad():
        block.convA.weight.zero_()
        block.convA.bias.fill_(-1.0)  # convA output -1 everywhere
    _identity_conv(block.convB)
    out = block(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4))
    assert torch.allclose(out, torch.full_like(out, -0.2))  # one LeakyReLU(0.2), not two (-0.04)


def test_upblock_bilinear_align_corners():
    block = UpBlock(1, 1, 1)
    _identity_conv(block.convA, channel=0)  # pass the upsampled input through
    _identity_conv(block.convB)
    x = torch.tensor([[[[0.0, 3.0]]]])  # [1, 1, 1, 2]
    out = block(x, torch.zeros(1, 1, 1, 4))
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))  # align_corners=False: 0, .75, 2.25, 3


def test_from_state_dict_round_trip(model):
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    again = from_state_dict(state)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_fast_rewrite_matches_reference_fp32(model):
    fast = FastDenseDepth(model)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4


def test_fast_rewrite_bf16_error_like_reference_bf16(model):
    x = torch.rand(2, 3, 64, 96)
    xl = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        plain = copy.deepcopy(model).to(torch.bfloat16, memory_format=torch.channels_last)(xl)
        fast = FastDenseDepth(model).to(torch.bfloat16, memory_format=torch.channels_last)(xl)
    assert rel_err(fast, ref) <= 2 * rel_err(plain, ref)


def test_conventions():
    nyu, kitti = CONVENTIONS["nyu"], CONVENTIONS["kitti"]
    raw = torch.tensor([1.0, 100.0, 0.0, 2.0, -1.0]).view(1, 1, 1, 5)
    assert nyu.to_metres(raw).flatten().tolist() == pytest.approx([10.0, 0.1, 10.0, 5.0, 0.1])
    assert kitti.to_metres(torch.tensor([1.0, 80.0, 8.0]).view(1, 1, 1, 3)).flatten().tolist() == [80.0, 1.0, 10.0]
