"""An inference-only rewrite of `DenseDepth` that computes the same function with fewer FLOPs.

Every change is an exact identity in real arithmetic (only the rounding order changes):

* BatchNorms that follow a convolution are folded into it (`conv0`+`norm0`, each dense layer's
  `conv1`+`norm2`);
* a transition's 1x1 conv and 2x2 average pool are linear, so the pool runs first (4x fewer MACs);
* an up-block's first conv reads concat(up(x), skip). Its x part is
  `sum_k W_k up(x)[p + k]`, and because `up` acts on each channel alone, `W_k up(x) = up(W_k x)`.
  So the nine taps are applied as 1x1 convs at the *low* resolution (4x fewer MACs on the
  widest tensor; one conv per horizontal tap), then upsampled and summed with one-pixel shifts at the high resolution
  (zero padding at the border is the same as the conv's). Bilinear upsampling is separable,
  so the width is upsampled and the three horizontal taps summed before the height.
* the decoder's `conv2` (1x1) and up1's low-resolution taps are two linear maps in a row and are
  multiplied into one.

Convolutions then cost 98.4 instead of 160.3 GFLOP per 448x448 image. It is the default on the CPU; on
CUDA fewer FLOPs need not mean less time (more, smaller kernels: the tap convs, interpolations and shifted
adds), so there the runners time both graphs at the batch shape and keep the faster (runners.py). Nothing in
it is CPU-only: in-place shifted adds become out-of-place while tracing or compiling (CUDA graphs included).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from .densedepth import LEAKY_SLOPE, DenseDepth, UpBlock, check_input_size


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with bn(x) = scale * x + shift, in float64."""
    weight, bias = bn.weight.detach().double(), bn.bias.detach().double()
    scale = weight / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bias - bn.running_mean.double() * scale


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv (with bias) equal to bn(conv(x))."""
    scale, shift = _bn_scale_shift(bn)
    fused = skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(shift)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.detach().double() * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bias * scale + shift)
    return fused


class BnRelu(nn.Module):
    """relu(bn(x)) with the BatchNorm kept as an inference-mode affine map."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = copy.deepcopy(bn).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> same
        return F.relu(self.bn(x), inplace=True)


class FastDenseLayer(nn.Module):
    """norm1 -> relu -> conv1 (norm2 folded in) -> relu -> conv2."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.pre = BnRelu(layer.norm1)
        self.conv1 = fold_bn_into_conv(layer.conv1, layer.norm2)
        self.conv2 = copy.deepcopy(layer.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, 32, H, W]
        return self.conv2(F.relu(self.conv1(self.pre(x)), inplace=True))


class FastDenseBlock(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(FastDenseLayer(layer) for layer in block.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C + 32 L, H, W]
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class FastTransition(nn.Module):
    """norm -> relu -> avgpool(2) -> conv1x1 (pool and conv swapped: both are linear)."""

    def __init__(self, transition: nn.Module):
        super().__init__()
        self.pre = BnRelu(transition.norm)
        self.conv = copy.deepcopy(transition.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C/2, H/2, W/2]
        return self.conv(F.avg_pool2d(self.pre(x), 2))


def _shifted(
    t: torch.Tensor,  # [B, C, H, W]
    shift: int,  # -1: out[p] = t[p - 1]; +1: out[p] = t[p + 1] (zero outside)
    dim: int,  # -1 for width, -2 for height
) -> torch.Tensor:  # [B, C, H, W]
    n = t.shape[dim]
    kept = t.narrow(dim, 0, n - 1) if shift < 0 else t.narrow(dim, 1, n - 1)
    pad = (1, 0) if shift < 0 else (0, 1)
    return F.pad(kept, pad if dim == -1 else (0, 0) + pad)


def _add_shifted(
    acc: torch.Tensor,  # [B, C, H, W] accumulated in place (out of place while tracing for export)
    t: torch.Tensor,  # [B, C, H, W]
    shift: int,  # -1: acc[p] += t[p - 1]; +1: acc[p] += t[p + 1]
    dim: int,  # -1 for width, -2 for height
) -> torch.Tensor:  # acc
    if torch.jit.is_tracing() or torch.compiler.is_compiling():  # export mistraces in-place adds into views
        return acc + _shifted(t, shift, dim)
    n = t.shape[dim]
    if shift < 0:
        acc.narrow(dim, 1, n - 1).add_(t.narrow(dim, 0, n - 1))
    else:
        acc.narrow(dim, 0, n - 1).add_(t.narrow(dim, 1, n - 1))
    return acc


def _upsample_taps(
    taps: list[torch.Tensor],  # 3 x [B, C, h, w]: the -1, 0, +1 taps along `dim`
    size: tuple[int, int],  # target (H, W), changed along `dim` only
    dim: int,  # -1 for width, -2 for height
) -> torch.Tensor:  # [B, C, H, W]: sum over taps of upsampled tap shifted by its offset
    """One tap at a time keeps every temporary small (large ones cost page faults on each call)."""
    out = F.interpolate(taps[1], size=size, mode="bilinear", align_corners=True)
    for shift, t in ((-1, taps[0]), (1, taps[2])):
        out = _add_shifted(out, F.interpolate(t, size=size, mode="bilinear", align_corners=True), shift, dim)
    return out


class SplitUpBlock(nn.Module):
    """UpBlock whose first conv applies its x taps at low resolution (see the module docstring)."""

    def __init__(self, block: UpBlock, in_channels: int, pre: nn.Conv2d | None = None):
        super().__init__()
        weight = block.convA.weight.detach().double()  # [Co, Cx + Cs, 3, 3]
        co, cx = weight.shape[0], in_channels
        # taps ordered (dx, dy, co): width taps outermost, so _shift_sum can peel them off first.
        taps = weight[:, :cx].permute(3, 2, 0, 1).reshape(9 * co, cx)
        bias = None
        if pre is not None:  # fold a preceding 1x1 conv: taps (W x + b) = (taps W) x + taps b
            bias = taps @ pre.bias.detach().double()
            taps = taps @ pre.weight.detach().double()[:, :, 0, 0]
        self.taps = nn.ModuleList(
            skip_init(nn.Conv2d, taps.shape[1], 3 * co, 1, bias=bias is not None) for _ in range(3)
        )
        self.skip = skip_init(nn.Conv2d, weight.shape[1] - cx, co, 3, padding=1)
        with torch.no_grad():
            for dx, conv in enumerate(self.taps):  # one 1x1 conv per horizontal tap
                conv.weight.copy_(taps[dx * 3 * co : (dx + 1) * 3 * co, :, None, None])
                if bias is not None:
                    conv.bias.copy_(bias[dx * 3 * co : (dx + 1) * 3 * co])
            self.skip.weight.copy_(weight[:, cx:])
            self.skip.bias.copy_(block.convA.bias.detach())
        self.convB = copy.deepcopy(block.convB)

    def forward(
        self,
        x: torch.Tensor,  # [B, Cin, h, w]
        skip: torch.Tensor,  # [B, Cs, H, W]
    ) -> torch.Tensor:  # [B, Co, H, W]
        height, width = skip.shape[-2:]
        co = self.skip.out_channels
        wide = _upsample_taps([conv(x) for conv in self.taps], (x.shape[-2], width), -1)  # [B, 3 Co, h, W]
        rows = [wide[:, dy * co : (dy + 1) * co] for dy in range(3)]
        y = _upsample_taps(rows, (height, width), -2)  # [B, Co, H, W]
        y = y + self.skip(skip) if torch.jit.is_tracing() or torch.compiler.is_compiling() else y.add_(self.skip(skip))
        return F.leaky_relu(self.convB(y), LEAKY_SLOPE, inplace=True)


class FastDenseDepth(nn.Module):
    """Same function as a `DenseDepth` (raw output), restructured for inference speed."""

    def __init__(self, model: DenseDepth):
        super().__init__()
        enc = model.encoder
        self.stem = fold_bn_into_conv(enc.conv0, enc.norm0)
        self.pool0 = copy.deepcopy(enc.pool0)
        self.blocks = nn.ModuleList(FastDenseBlock(getattr(enc, f"denseblock{i}")) for i in range(1, 5))
        self.transitions = nn.ModuleList(FastTransition(getattr(enc, f"transition{i}")) for i in range(1, 4))
        self.bottleneck = BnRelu(enc.norm5)
        widths = [model.conv2.out_channels >> k for k in range(4)]
        self.ups = nn.ModuleList(
            SplitUpBlock(getattr(model, f"up{k + 1}"), widths[k], model.conv2 if k == 0 else None) for k in range(4)
        )
        self.conv3 = copy.deepcopy(model.conv3)
        self.eval()

    def forward(
        self,
        x: torch.Tensor,  # [B, 3, H, W] in [0, 1], H and W multiples of 32
    ) -> torch.Tensor:  # [B, 1, H/2, W/2] raw network output
        if not torch.jit.is_tracing():
            check_input_size(x.shape[-2], x.shape[-1])
        relu0 = F.relu(self.stem(x), inplace=True)  # skip of up4
        y = self.pool0(relu0)  # skip of up3
        skips = [relu0, y]
        for block, transition in zip(self.blocks, self.transitions):
            y = transition(block(y))
            skips.append(y)  # transition1 (up2), transition2 (up1), transition3 (not a skip)
        y = self.bottleneck(self.blocks[3](y))
        for up, skip in zip(self.ups, (skips[3], skips[2], skips[1], skips[0])):
            y = up(y, skip)
        return self.conv3(y)
