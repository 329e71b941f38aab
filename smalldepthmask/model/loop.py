"""The training loop (paper 5.1): SGD + OneCycleLR, L1 + SSIM per decoder, kornia augmentations on the
device, mixed precision on GPU, per-epoch validation metrics, figures and checkpoints with resume.

Data sources are re-iterable objects with `set_epoch(e)`, `__len__` (batches per epoch) and
`has_depth`, yielding batch dicts (`data.Batches` over shards, `stream.StreamDataset`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint
from .augment import Augment
from .losses import Metrics, total_loss
from .net import BaselineNet
from .plots import plot_curves, plot_grid


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    max_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    amp: str = "auto"  # auto (bf16 where supported, else fp16, on CUDA only), bf16, fp16, off
    augment: bool = True
    grid_samples: int = 6


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def prepare(batch: dict, device: torch.device, size: int) -> dict:
    """Move a batch to the device and resize it to the model's input side (image area, mask/depth nearest)."""
    out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if out["image"].shape[-1] != size:
        out["image"] = F.interpolate(out["image"], size=(size, size), mode="area" if out["image"].shape[-1] > size
                                     else "bilinear")
        for k in ("mask", "depth"):
            if k in out:
                out[k] = F.interpolate(out[k], size=(size, size), mode="nearest")
    return out


class Trainer:
    def __init__(self, model: BaselineNet, train_data, val_data, device: torch.device, cfg: TrainConfig,
                 out: Path, identity: dict, log=print, quiet: bool = False):
        self.model, self.train_data, self.val_data = model.to(device), train_data, val_data
        self.device, self.cfg, self.out, self.identity, self.log, self.quiet = device, cfg, out, identity, log, quiet
        self.size, self.max_depth = model.cfg.size, model.cfg.max_depth
        self.with_depth = bool(train_data.has_depth)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.steps_per_epoch = len(train_data)
        self.total_steps = max(1, cfg.epochs * self.steps_per_epoch)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.max_lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=cfg.max_lr, total_steps=self.total_steps)
        self.amp = amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.augment = Augment().to(device) if cfg.augment else None
        self.epoch, self.step, self.history, self.best = 0, 0, [], math.inf

    # ------------------------------------------------------------------------------------- one step

    def _forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # image: [B, 3, S, S] float32 -> (mask [B, 1, S, S], depth / max_depth [B, 1, S, S] or None), float32
        if self.device.type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            mask, depth = self.model(image, with_depth=self.with_depth)
        return mask.float(), (depth.float() if depth is not None else None)

    def _norm(self, depth: torch.Tensor | None) -> torch.Tensor | None:
        # depth: [B, 1, S, S] metres -> [B, 1, S, S] depth / max_depth in [0, 1]
        return (depth / self.max_depth).clamp(0, 1) if depth is not None else None

    def train_step(self, batch: dict) -> dict[str, float]:
        b = prepare(batch, self.device, self.size)
        image, mask, depth = b["image"], b["mask"], (b["depth"] if self.with_depth else None)
        if self.augment is not None:
            image, mask, depth = self.augment(image, mask, depth)
        mask_pred, depth_pred = self._forward(image)
        loss, parts = total_loss(mask_pred, mask, depth_pred, self._norm(depth))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step += 1
        if self.step < self.total_steps:  # the schedule's last value stays for any extra step
            self.sched.step()
        return {"loss": float(loss.detach()), **parts}

    # ---------------------------------------------------------------------------------- the epochs

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.train_data.set_epoch(self.epoch)
        sums, n, t0 = {}, 0, time.perf_counter()
        bar = tqdm(self.train_data, total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                   unit="batch", disable=self.quiet, dynamic_ncols=True, leave=False)
        for batch in bar:
            bs = len(batch["__key__"])
            r = self.train_step(batch)
            for k, v in r.items():
                sums[k] = sums.get(k, 0.0) + v * bs
            n += bs
            bar.set_postfix(loss=f"{r['loss']:.4f}", lr=f"{self.sched.get_last_lr()[0]:.3g}")
        bar.close()
        secs = time.perf_counter() - t0
        out = {f"train_{k}": v / max(n, 1) for k, v in sums.items()}
        out.update(samples=n, seconds=secs, samples_per_s=n / secs if secs > 0 else 0.0)
        return out

    @torch.no_grad()
    def evaluate(self, grid_path: Path | None = None) -> dict[str, float]:
        if self.val_data is None:
            return {}
        self.model.eval()
        self.val_data.set_epoch(0)
        metrics, grid = Metrics(), None
        for batch in self.val_data:
            b = prepare(batch, self.device, self.size)
            depth = b["depth"] if self.with_depth else None
            mask_pred, depth_pred = self._forward(b["image"])
            loss, _ = total_loss(mask_pred, b["mask"], depth_pred, self._norm(depth))
            depth_m = self.model.depth_metres(depth_pred) if depth_pred is not None else None
            metrics.update(mask_pred, b["mask"], depth_m, depth, self.max_depth, float(loss))
            if grid is None:
                k = self.cfg.grid_samples
                grid = (b["image"][:k], b["mask"][:k], mask_pred[:k], depth[:k] if depth is not None else None,
                        depth_m[:k] if depth_m is not None else None)
        if grid is not None and grid_path is not None:
            plot_grid(*grid, path=grid_path, max_depth=self.max_depth, title=f"validation, epoch {self.epoch}")
        return {("val_loss" if k == "loss" else k): v for k, v in metrics.compute().items()}

    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train from self.epoch to cfg.epochs (or `stop_after` epochs of it), checkpointing each epoch."""
        last = self.cfg.epochs if stop_after is None else min(self.cfg.epochs, self.epoch + stop_after)
        while self.epoch < last:
            row = self.train_epoch()
            self.epoch += 1
            row.update(self.evaluate(self.out / "samples.png"))
            row.update(epoch=self.epoch, step=self.step, lr=self.sched.get_last_lr()[0])
            self.history.append(row)
            self.log(format_row(row, self.cfg.epochs))
            self._save(row)
        return self.history

    # --------------------------------------------------------------------------------- checkpoints

    def _save(self, row: dict) -> None:
        score = row.get("val_loss", row.get("train_loss", math.inf))
        is_best = score < self.best
        self.best = min(self.best, score)
        state = self.state_dict()
        checkpoint.save(self.out / "last.pt", state)
        if is_best:
            checkpoint.save(self.out / "best.pt", state)
        (self.out / "history.json").write_text(json.dumps(self.history, indent=1) + "\n")
        plot_curves(self.history, self.out / "curves.png")

    def state_dict(self) -> dict:
        model = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        return {"model": model, "model_config": self.model.cfg.to_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
                "step": self.step, "rng": checkpoint.rng_state(), "train_config": asdict(self.cfg),
                "identity": self.identity, "history": self.history, "best": self.best,
                "has_depth": self.with_depth}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.history, self.best = state["epoch"], state["step"], state["history"], state["best"]
        checkpoint.set_rng_state(state["rng"])


def format_row(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row.get('train_loss', float('nan')):.4f}"]
    for k in ("val_loss", "iou", "dice", "rmse", "absrel", "delta1", "ssim"):
        if k in row:
            parts.append(f"{k} {row[k]:.4f}")
    parts.append(f"({row['samples_per_s']:.0f} samples/s)")
    return "  ".join(parts)
