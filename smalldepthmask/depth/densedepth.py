"""DenseDepth (Alhashim & Wonka 2018) as released: DenseNet-169 encoder + full-width decoder.

This is the architecture of the released `nyu.h5` / `kitti.h5` files, which differs from the
final `model.py` in the authors' repository:

* the decoder is full width: `conv2` keeps the encoder's 1664 channels and up1..up4 halve it
  (832, 416, 208, 104);
* each up-block applies LeakyReLU(0.2) only after its second convolution;
* skips come from Keras `pool3_pool`, `pool2_pool`, `pool1`, `conv1/relu`
  (torchvision: transition2, transition1, pool0, relu0);
* the bottleneck is the encoder's final BatchNorm + ReLU;
* upsampling is bilinear with `align_corners=True` to the skip's size;
* every BatchNorm uses Keras's epsilon 1.001e-5.

Input: RGB in [0, 1] (pixels / 255, no mean/std), height and width multiples of 32.
Output: the raw network output at half resolution (the checkpoint's depth convention,
see `smalldepthmask.depth.conventions`, turns it into metres).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERAS_BN_EPS = 1.001e-5
ENCODER_CHANNELS = 1664
LEAKY_SLOPE = 0.2
# (torch name of the skip in `encoder`, its channel count), deepest first: up1 .. up4.
SKIPS: tuple[tuple[str, int], ...] = (
    ("transition2", 256),  # Keras pool3_pool, 1/16
    ("transition1", 128),  # Keras pool2_pool, 1/8
    ("pool0", 64),  # Keras pool1, 1/4
    ("relu0", 64),  # Keras conv1/relu, 1/2
)
SIZE_MULTIPLE = 32


class UpBlock(nn.Module):
    """Upsample to the skip's size, concatenate, conv3x3, conv3x3, LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convA = nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1)
        self.convB = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(
        self,
        x: torch.Tensor,  # [B, Cin, h, w] float
        skip: torch.Tensor,  # [B, Cskip, H, W] float
    ) -> torch.Tensor:  # [B, Cout, H, W] float
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        y = self.convA(torch.cat([up, skip], dim=1))
        return F.leaky_relu(self.convB(y), LEAKY_SLOPE)


class DenseDepth(nn.Module):
    """The released DenseDepth network; `forward` returns the raw output (not metres)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import densenet169  # lazy: torchvision costs ~1 s to import
        self.encoder = densenet169(weights=None).features
        for m in self.encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = KERAS_BN_EPS
        width = ENCODER_CHANNELS
        self.conv2 = nn.Conv2d(width, width, 1)
        self.up1 = UpBlock(width, SKIPS[0][1], width // 2)
        self.up2 = UpBlock(width // 2, SKIPS[1][1], width // 4)
        self.up3 = UpBlock(width // 4, SKIPS[2][1], width // 8)
        self.up4 = UpBlock(width // 8, SKIPS[3][1], width // 16)
        self.conv3 = nn.Conv2d(width // 16, 1, 3, padding=1)

    def encode(
        self,
        x: torch.Tensor,  # [B, 3, H, W] float in [0, 1]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:  # [B, 1664, H/32, W/32], skips deepest first
        wanted = {name for name, _ in SKIPS}
        feats: dict[str, torch.Tensor] = {}
        for name, module in self.encoder.named_children():
            x = module(x)
            if name in wanted:
                feats[name] = x
        return F.relu(x), [feats[name] for name, _ in SKIPS]

    def forward(
        self,
        x: torch.Tensor,  # [B, 3, H, W] float in [0, 1], H and W multiples of 32
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] float, raw network output
        if not torch.jit.is_tracing():
            check_input_size(x.shape[-2], x.shape[-1])
        bottleneck, skips = self.encode(x)
        y = self.conv2(bottleneck)
        for block, skip in zip((self.up1, self.up2, self.up3, self.up4), skips):
            y = block(y, skip)
        return self.conv3(y)


def check_input_size(height: int, width: int) -> None:
    """Raise ValueError unless both sides are positive multiples of 32."""
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(
            f"DenseDepth needs height and width that are multiples of {SIZE_MULTIPLE}, got {height}x{width}"
        )


def from_state_dict(state: dict[str, torch.Tensor]) -> DenseDepth:
    """A float32 eval-mode DenseDepth holding `state`, built without random initialisation."""
    with torch.device("meta"):
        model = DenseDepth()
    full = dict(state)
    for name, buffer in model.state_dict().items():
        if name.endswith("num_batches_tracked") and name not in full:
            full[name] = torch.zeros((), dtype=buffer.dtype)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in full.items()}, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def keras_parameter_count(model: nn.Module) -> int:
    """Parameters as Keras counts them: weights plus BatchNorm moving mean and variance."""
    count = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            count += m.running_mean.numel() + m.running_var.numel()
    return count
