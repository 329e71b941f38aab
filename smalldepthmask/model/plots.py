"""Training figures with matplotlib (Agg): loss and metric curves, and a validation sample grid."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PANELS = (("loss", ("train_loss", "val_loss")), ("mask", ("iou", "dice", "mask_ssim")),
          ("depth error", ("rmse", "absrel")), ("depth accuracy", ("delta1", "ssim")))


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def plot_curves(history: list[dict], path: Path) -> None:
    """One panel per group of PANELS; a series is drawn when some epoch has it."""
    panels = [(t, [k for k in keys if any(k in h for h in history)]) for t, keys in PANELS]
    panels = [(t, keys) for t, keys in panels if keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            pts = [(h["epoch"], h[k]) for h in history if k in h]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_grid(image: torch.Tensor,  # [N, 3, H, W] float32 in [0, 1]
              mask: torch.Tensor,  # [N, 1, H, W] float32 in {0, 1}
              mask_pred: torch.Tensor,  # [N, 1, H, W] float32 probability
              depth: torch.Tensor | None,  # [N, 1, H, W] float32 metres
              depth_pred: torch.Tensor | None,  # [N, 1, H, W] float32 metres
              path: Path, max_depth: float, title: str = "") -> None:
    """Rows of (image, true mask, predicted mask, true depth, predicted depth); both depths share one colour
    range (near = bright)."""
    cols = [("image", image), ("true mask", mask), ("predicted mask", mask_pred)]
    if depth is not None and depth_pred is not None:
        cols += [("true depth (m)", depth), ("predicted depth (m)", depth_pred)]
    lo, hi = 0.0, max_depth  # depth colour range: the true depths shown, when there are any
    if depth is not None and (depth > 0).any():
        lo, hi = float(depth[depth > 0].min()), float(depth.max())
        hi = hi if hi > lo else lo + 1.0
    n = image.shape[0]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.1 * len(cols), 2.1 * n), squeeze=False)
    for r in range(n):
        for c, (name, t) in enumerate(cols):
            ax = axes[r][c]
            x = t[r].detach().float().cpu()
            if name == "image":
                ax.imshow(x.permute(1, 2, 0).clamp(0, 1).numpy())
            elif "mask" in name:
                ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(x[0].numpy(), cmap="magma_r", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
