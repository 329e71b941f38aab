"""The paper's loss (per decoder L = 0.84 * L1 + 0.16 * (1 - SSIM) / 2) and the validation metrics.

Both decoders output values in [0, 1]: the mask probability, and depth / max_depth. The depth target
is clamp(depth / max_depth, 0, 1). SSIM is kornia's (11x11 Gaussian window, data range 1).
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
L1_WEIGHT, SSIM_WEIGHT = 0.84, 0.16
DELTA = 1.25


def decoder_loss(pred: torch.Tensor,  # [B, 1, H, W] float32 in [0, 1]
                 target: torch.Tensor,  # [B, 1, H, W] float32 in [0, 1]
                 ) -> torch.Tensor:  # [] float32
    """0.84 * L1 + 0.16 * (1 - SSIM) / 2 (kornia's ssim_loss is (1 - SSIM) / 2)."""
    return L1_WEIGHT * F.l1_loss(pred, target) + SSIM_WEIGHT * kornia.losses.ssim_loss(pred, target, SSIM_WINDOW)


def total_loss(mask_pred: torch.Tensor,  # [B, 1, H, W] float32 probability
               mask: torch.Tensor,  # [B, 1, H, W] float32 in {0, 1}
               depth_pred: torch.Tensor | None,  # [B, 1, H, W] float32 depth / max_depth, or None
               depth_norm: torch.Tensor | None,  # [B, 1, H, W] float32 target depth / max_depth, or None
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over the decoders that have a target: (loss, {"mask_loss", "depth_loss"})."""
    mask_loss = decoder_loss(mask_pred, mask)
    parts = {"mask_loss": float(mask_loss.detach())}
    if depth_pred is None or depth_norm is None:
        return mask_loss, parts
    depth_loss = decoder_loss(depth_pred, depth_norm)
    parts["depth_loss"] = float(depth_loss.detach())
    return mask_loss + depth_loss, parts


class Metrics:
    """Validation metrics accumulated over batches.

    mask: IoU and Dice of (probability >= 0.5) over all pixels of the set (sums, not per-image means);
    depth (pixels with true depth > 0): RMSE in metres, AbsRel = mean |p - t| / t, delta1 = share of
    pixels with max(p / t, t / p) < 1.25; SSIM: mean SSIM of depth / max_depth (mask_ssim: of the mask).
    """

    def __init__(self):
        self.sums: dict[str, float] = {}

    def _add(self, **kw: float) -> None:
        for k, v in kw.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    @torch.no_grad()
    def update(self, mask_pred: torch.Tensor,  # [B, 1, H, W] float32 probability
               mask: torch.Tensor,  # [B, 1, H, W] float32 in {0, 1}
               depth_pred: torch.Tensor | None = None,  # [B, 1, H, W] float32 metres
               depth: torch.Tensor | None = None,  # [B, 1, H, W] float32 metres, 0 = unknown
               max_depth: float = 10.0, loss: float | None = None) -> None:
        b = mask.shape[0]
        hard = (mask_pred >= 0.5).float()
        inter, pred_sum, true_sum = (hard * mask).sum(), hard.sum(), mask.sum()
        self._add(inter=inter, union=pred_sum + true_sum - inter, pred_sum=pred_sum, true_sum=true_sum, n=b,
                  mask_ssim=kornia.metrics.ssim(mask_pred, mask, SSIM_WINDOW).mean() * b)
        if loss is not None:
            self._add(loss=loss * b)
        if depth_pred is None or depth is None:
            return
        valid = depth > 0
        p, t = depth_pred[valid].clamp_min(1e-6), depth[valid]
        ssim = kornia.metrics.ssim((depth_pred / max_depth).clamp(0, 1), (depth / max_depth).clamp(0, 1), SSIM_WINDOW)
        self._add(px=valid.sum(), sq=((p - t) ** 2).sum(), absrel=((p - t).abs() / t).sum(),
                  delta1=(torch.maximum(p / t, t / p) < DELTA).sum(), ssim=ssim.mean() * b)

    def compute(self) -> dict[str, float]:
        s, out = self.sums, {}
        if not s.get("n"):
            return out
        out["iou"] = s["inter"] / s["union"] if s["union"] else 1.0
        out["dice"] = 2 * s["inter"] / (s["pred_sum"] + s["true_sum"]) if s["pred_sum"] + s["true_sum"] else 1.0
        out["mask_ssim"] = s["mask_ssim"] / s["n"]
        if "loss" in s:
            out["loss"] = s["loss"] / s["n"]
        if s.get("px"):
            out.update(rmse=(s["sq"] / s["px"]) ** 0.5, absrel=s["absrel"] / s["px"], delta1=s["delta1"] / s["px"],
                       ssim=s["ssim"] / s["n"])
        return out
