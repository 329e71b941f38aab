"""How each DenseDepth checkpoint's raw output becomes metres.

The released networks predict `scale / depth`: NYU with scale 10 (maxDepth 1000 cm), KITTI
with scale 80. As in the authors' code, depth = clip(scale / output, min, max); an output of 0
gives +inf and is clipped to the maximum, a negative output is clipped to the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DepthConvention:
    name: str
    scale: float  # metres = scale / raw output
    min_m: float
    max_m: float

    def to_metres(
        self,
        raw: torch.Tensor,  # [B, 1, h, w] raw network output, any float dtype
    ) -> torch.Tensor:  # [B, 1, h, w] float32 metres in [min_m, max_m]
        return (self.scale / raw.float()).clamp_(self.min_m, self.max_m)


CONVENTIONS: dict[str, DepthConvention] = {
    "nyu": DepthConvention("nyu", 10.0, 0.1, 10.0),
    "kitti": DepthConvention("kitti", 80.0, 1.0, 80.0),
}
