"""The paper's baseline (section 5.1): a light U-Net-style network with one encoder and two decoders.

    input [B, 3, S, S] ──stem──> e0 (S) ──down1──> e1 (S/2) ──down2──> e2 (S/4) ──down3──> e3 (S/8) ──down4──> e4 (S/16)
    each decoder:  e4 ──up1──(+e3)──up2──(+e2)──up3──(+e1)──up4──(+e0)──head──> [B, 1, S, S]

* A down unit is a stride-2 3x3 convolution followed by a residual unit (short skip).
* An up unit is a 2x2 transposed convolution (stride 2); the encoder output of the same size is
  added to it (long skip); then an atrous residual unit: a 3x3 convolution with dilation 2 and a
  3x3 convolution, with a short skip around both.
* The mask head gives a probability (sigmoid); the depth head gives depth / max_depth in (0, 1)
  (sigmoid), which `BaselineNet.depth_metres` turns into metres.

With the default widths (32, 64, 128, 192, 240) the network has 5,573,762 parameters (the paper
reports 5,525,568; `parameter_count` gives ours). The input side must be a multiple of 16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

DEFAULT_WIDTHS = (32, 64, 128, 192, 240)
SIZE_MULTIPLE = 16  # four stride-2 units


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, bias=False), nn.BatchNorm2d(c_out))


class ResidualUnit(nn.Module):
    """relu(x + bn(conv(relu(bn(conv_d(x)))))) with the first convolution dilated by `dilation`."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.a = conv_bn(channels, channels, dilation=dilation)
        self.b = conv_bn(channels, channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W] -> [B, C, H, W]
        return self.act(x + self.b(self.act(self.a(x))))


class Down(nn.Module):
    """Halve the size: stride-2 conv + BN + ReLU, then a residual unit."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.reduce = nn.Sequential(conv_bn(c_in, c_out, stride=2), nn.ReLU(inplace=True))
        self.res = ResidualUnit(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, Cin, H, W] -> [B, Cout, H/2, W/2]
        return self.res(self.reduce(x))


class Up(nn.Module):
    """Double the size: transposed conv + BN + ReLU, add the encoder output (long skip), atrous residual unit."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False), nn.BatchNorm2d(c_out),
                                nn.ReLU(inplace=True))
        self.res = ResidualUnit(c_out, dilation=2)

    def forward(self, x: torch.Tensor,  # [B, Cin, H, W]
                skip: torch.Tensor,  # [B, Cout, 2H, 2W] encoder output
                ) -> torch.Tensor:  # [B, Cout, 2H, 2W]
        return self.res(self.up(x) + skip)


class Decoder(nn.Module):
    """Four up units from the bottleneck back to the input size, then a 1x1 head with a sigmoid."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:  # feats: e0..e4 -> [B, 1, S, S] in (0, 1)
        y = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            y = up(y, skip)
        return torch.sigmoid(self.head(y))


@dataclass(frozen=True)
class ModelConfig:
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    size: int = 128  # input side the model was trained at (any multiple of 16 runs)
    max_depth: float = 10.0  # metres that the depth head's 1.0 stands for

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        return ModelConfig(widths=tuple(int(w) for w in d["widths"]), size=int(d["size"]),
                           max_depth=float(d["max_depth"]))


class BaselineNet(nn.Module):
    """One encoder (stem + four down units), two decoders (mask, depth)."""

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        w = cfg.widths
        if len(w) != 5:
            raise ValueError(f"widths needs 5 entries (stem + 4 down units), got {len(w)}")
        self.cfg = cfg
        self.stem = nn.Sequential(conv_bn(3, w[0]), nn.ReLU(inplace=True), ResidualUnit(w[0]))
        self.downs = nn.ModuleList(Down(w[i], w[i + 1]) for i in range(4))
        self.mask_decoder = Decoder(w)
        self.depth_decoder = Decoder(w)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:  # x: [B, 3, S, S] -> e0 [B, w0, S, S] .. e4
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats

    def forward(self, x: torch.Tensor,  # [B, 3, S, S] float in [0, 1], S a multiple of 16
                with_depth: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mask probability [B, 1, S, S], depth / max_depth [B, 1, S, S] or None)."""
        check_size(x.shape[-2], x.shape[-1])
        feats = self.encode(x)
        mask = self.mask_decoder(feats)
        depth = self.depth_decoder(feats) if with_depth else None
        return mask, depth

    def depth_metres(self, depth: torch.Tensor) -> torch.Tensor:  # [B, 1, S, S] in (0, 1) -> metres
        return depth * self.cfg.max_depth


def check_size(height: int, width: int) -> None:
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height <= 0 or width <= 0:
        raise ValueError(f"the model needs height and width that are multiples of {SIZE_MULTIPLE}, "
                         f"got {height}x{width}")


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def scaled_widths(mult: float, widths: tuple[int, ...] = DEFAULT_WIDTHS) -> tuple[int, ...]:
    """Widths times `mult`, rounded to multiples of 4 (at least 4): a lighter or heavier variant."""
    return tuple(max(4, int(round(w * mult / 4)) * 4) for w in widths)
