"""The baseline network (paper 5.1): shapes, parameter count, loss, metrics and augmentations."""

import pytest
import torch

from smalldepthmask.model import BaselineNet, ModelConfig, parameter_count
from smalldepthmask.model.augment import Augment
from smalldepthmask.model.losses import Metrics, decoder_loss, total_loss
from smalldepthmask.model.net import scaled_widths

PAPER_PARAMETERS = 5_525_568


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return BaselineNet(ModelConfig()).eval()


def test_parameter_count_is_the_papers(net):
    n = parameter_count(net)
    print(f"baseline parameters: {n:,} (paper: {PAPER_PARAMETERS:,})")
    assert n == 5_573_762
    assert abs(n - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.01


def test_shapes_128(net):
    x = torch.rand(2, 3, 128, 128)
    feats = net.encode(x)
    assert [f.shape[-1] for f in feats] == [128, 64, 32, 16, 8]  # four down-sampling units
    with torch.no_grad():
        mask, depth = net(x)
    assert mask.shape == depth.shape == (2, 1, 128, 128)
    assert 0 < mask.min() and mask.max() < 1 and 0 < depth.min() and depth.max() < 1
    assert net.depth_metres(depth).max() <= net.cfg.max_depth


def test_input_size_is_configurable(net):
    with torch.no_grad():
        mask, depth = net(torch.rand(1, 3, 96, 160), with_depth=False)
    assert mask.shape == (1, 1, 96, 160) and depth is None
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.rand(1, 3, 100, 100))


def test_units_use_atrous_transposed_and_skips(net):
    convs = [m for m in net.mask_decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c.dilation == (2, 2) for c in convs)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in net.mask_decoder.modules()) == 4
    assert len(net.downs) == 4 and len(net.mask_decoder.ups) == 4 and len(net.depth_decoder.ups) == 4


def test_width_multiplier():
    small = BaselineNet(ModelConfig(widths=scaled_widths(0.5), size=32))
    assert parameter_count(small) < 1_500_000
    assert small(torch.rand(1, 3, 32, 32))[0].shape == (1, 1, 32, 32)


def test_loss_is_zero_at_the_target_and_weighted():
    t = torch.rand(2, 1, 32, 32)
    assert decoder_loss(t, t).item() == pytest.approx(0.0, abs=1e-5)
    zero = torch.zeros_like(t)
    one = torch.ones_like(t)
    # L1 = 1 and SSIM ~ 0 between all-zero and all-one images: 0.84 + 0.16 * (1 - 0) / 2
    assert decoder_loss(zero, one).item() == pytest.approx(0.84 + 0.08, abs=1e-3)
    loss, parts = total_loss(t, t, t, t)
    assert set(parts) == {"mask_loss", "depth_loss"}
    loss, parts = total_loss(t, one, None, None)
    assert set(parts) == {"mask_loss"}


def test_metrics_perfect_and_known():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1
    depth = torch.full((1, 1, 16, 16), 2.0)
    m = Metrics()
    m.update(mask, mask, depth, depth, max_depth=10.0)
    r = m.compute()
    assert r["iou"] == pytest.approx(1) and r["dice"] == pytest.approx(1)
    assert r["rmse"] == pytest.approx(0) and r["absrel"] == pytest.approx(0) and r["delta1"] == 1
    assert r["ssim"] == pytest.approx(1, abs=1e-4)
    half = torch.zeros_like(mask)
    half[..., :4, :] = 1
    m = Metrics()
    m.update(half, mask, depth * 1.5, depth)  # 1.5x too far: outside delta < 1.25
    r = m.compute()
    assert r["iou"] == pytest.approx(0.5) and r["dice"] == pytest.approx(2 / 3)
    assert r["rmse"] == pytest.approx(1.0) and r["absrel"] == pytest.approx(0.5) and r["delta1"] == 0


def test_augment_moves_image_mask_and_depth_together():
    torch.manual_seed(0)
    mask = torch.zeros(8, 1, 32, 32)
    mask[:, :, 4:20, 2:12] = 1
    image = mask.expand(8, 3, 32, 32).clone()  # white where the mask is
    depth = 1.0 + 2.0 * mask  # 3 m on the mask, 1 m elsewhere
    aug = Augment(degrees=30.0, p_rotate=1.0, p_flip=0.5, p_jitter=0.0, p_gray=0.0, p_shuffle=0.0)
    im, mk, dp = aug(image, mask, depth)
    assert set(mk.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(dp[mk == 1], torch.full_like(dp[mk == 1], 3.0))  # nearest: no depth invented
    assert (dp[mk == 0] <= 1.0).all()
    inside = im.mean(1, keepdim=True)
    assert (inside[mk == 1] > 0.5).float().mean() > 0.95  # the image moved with the mask
    assert not torch.equal(mk, mask)
    im2, mk2, dp2 = Augment()(image, mask, None)
    assert dp2 is None and im2.shape == image.shape and 0 <= im2.min() and im2.max() <= 1
