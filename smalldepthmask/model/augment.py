"""Training augmentations with kornia, on the batch's device.

Geometric (the same draw for image, mask and depth): horizontal flip and a random rotation; mask
and depth are resampled nearest (kornia's "mask" key), so the mask stays {0, 1} and no depth is
invented between foreground and background; corners rotated in are 0 (depth 0 = unknown).
Photometric (image only): colour jitter, random grayscale, channel shuffle.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


class Augment(nn.Module):
    def __init__(self, degrees: float = 10.0, p_rotate: float = 0.5, p_flip: float = 0.5,
                 jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.05), p_jitter: float = 0.8,
                 p_gray: float = 0.1, p_shuffle: float = 0.1):
        super().__init__()
        self.geometric = K.AugmentationSequential(K.RandomHorizontalFlip(p=p_flip),
                                                  K.RandomRotation(degrees, p=p_rotate), data_keys=None)
        self.photometric = K.AugmentationSequential(K.ColorJitter(*jitter, p=p_jitter), K.RandomGrayscale(p=p_gray),
                                                    K.RandomChannelShuffle(p=p_shuffle))

    @torch.no_grad()
    def forward(self, image: torch.Tensor,  # [B, 3, H, W] float32 in [0, 1]
                mask: torch.Tensor,  # [B, 1, H, W] float32 in {0, 1}
                depth: torch.Tensor | None = None,  # [B, 1, H, W] float32
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if depth is None:
            image, mask = self.geometric(image, mask, data_keys=["input", "mask"])
        else:
            image, mask, depth = self.geometric(image, mask, depth, data_keys=["input", "mask", "mask"])
        return self.photometric(image).clamp_(0, 1), mask, depth
