"""`smalldepthmask train`: train the paper's baseline mask + depth network from shards or the online stream.

    smalldepthmask train --shards out/ --out runs/a                       # every shard-*.tar in out/
    smalldepthmask train --shards 'out/shard-{000000..000039}.tar' --out runs/a --epochs 20
    smalldepthmask train --stream --fg fg/ --bg bg/ --compose-size 256 --out-size 128 --out runs/b
    smalldepthmask train ... --out runs/a --resume                        # continue runs/a/last.pt

OUT receives last.pt (every epoch), best.pt (lowest validation loss), history.json, curves.png
(loss and metric curves) and samples.png (validation image, true mask, predicted mask, true depth,
predicted depth).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError, run_cli
from .devices import resolve_device
from .model import BaselineNet, ModelConfig, parameter_count
from .model import checkpoint
from .model.loop import Trainer, TrainConfig
from .model.net import SIZE_MULTIPLE, scaled_widths

PAPER_PARAMETERS = 5_525_568
DEFAULT_MAX_DEPTH = 10.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smalldepthmask train", description="Train the baseline mask + depth network "
                                "(paper 5.1) from gen shards or from the online stream.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", nargs="+", metavar="SHARDS",
                     help="shard files, a gen output directory, or brace patterns (out/shard-{000000..000039}.tar)")
    src.add_argument("--stream", action="store_true", help="make the samples online, never touching disk")
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoints, history and figures go here")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-lr", type=float, default=0.1, help="OneCycleLR peak learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--size", type=int, default=None, help="model input side, a multiple of 16 (default: the data's)")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0: ~5.5M parameters)")
    p.add_argument("--max-depth", type=float, default=None,
                   help="metres the depth head's 1.0 stands for (default: the teacher's maximum, else 10)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of backgrounds held out for validation")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--split", metavar="PATH", default=None,
                   help="a split made by `smalldepthmask split` (default: the shards' own split.json if any)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and augmentation")
    p.add_argument("--shuffle-buffer", type=int, default=1000, help="samples in the shard shuffle buffer")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers reading shards")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="mixed precision on CUDA")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs now (continue with --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("online stream (with --stream; the same meaning as for gen)")
    g.add_argument("--fg", metavar="DIR")
    g.add_argument("--bg", metavar="DIR")
    g.add_argument("--k", type=int, default=20)
    g.add_argument("--gen-seed", type=int, default=0, help="gen's --seed")
    g.add_argument("--limit", type=int, default=None)
    g.add_argument("--scale", type=float, nargs=2, default=(0.3, 0.6), metavar=("LO", "HI"))
    g.add_argument("--compose-size", type=int, default=448)
    g.add_argument("--out-size", type=int, default=224)
    g.add_argument("--mask-threshold", type=float, default=0.5)
    g.add_argument("--composite-backend", default="auto", choices=("auto", "ext", "reference"))
    g.add_argument("--depth", default="densedepth", help="depth teacher, or none")
    g.add_argument("--depth-weights", default=None)
    g.add_argument("--depth-runner", default="auto")
    g.add_argument("--depth-precision", default="auto")
    return p


def check_args(a: argparse.Namespace) -> None:
    checks = [(a.epochs >= 1, "--epochs", "must be at least 1"), (a.batch_size >= 1, "--batch-size", "must be >= 1"),
              (a.max_lr > 0, "--max-lr", "must be > 0"), (a.width > 0, "--width", "must be > 0"),
              (a.size is None or (a.size >= SIZE_MULTIPLE and a.size % SIZE_MULTIPLE == 0), "--size",
               f"must be a multiple of {SIZE_MULTIPLE}"),
              (0 <= a.val_fraction < 1, "--val-fraction", "must be in [0, 1)"), (a.workers >= 0, "--workers", ">= 0"),
              (a.max_depth is None or a.max_depth > 0, "--max-depth", "must be > 0"),
              (a.stop_after is None or a.stop_after >= 1, "--stop-after", "must be at least 1"),
              (a.stream or (a.fg is None and a.bg is None), "--fg/--bg", "only with --stream"),
              (not (a.stream and a.split), "--split", "only with --shards")]
    for ok, flag, msg in checks:
        if not ok:
            raise UsageError(f"{flag}: {msg}")


def teacher_max_depth(desc) -> float | None:
    """The teacher's largest depth in metres, from its description (manifest or live teacher)."""
    if not isinstance(desc, dict):
        return None
    rng = desc.get("depth_range_m")
    if isinstance(rng, (list, tuple)) and len(rng) == 2:
        return float(rng[1])
    from .depth.conventions import CONVENTIONS
    if desc.get("convention") in CONVENTIONS:
        return CONVENTIONS[desc["convention"]].max_m
    return next((m for v in desc.values() if (m := teacher_max_depth(v)) is not None), None)


def shard_data(a: argparse.Namespace, pin: bool, log):
    from .data import Batches, ShardDataset, open_shards, split_shards
    shards = open_shards(a.shards)
    train_keys, val_keys, how = split_shards(shards, a.val_fraction, a.split_seed, a.split)
    log(f"data: {len(shards.paths)} shard(s) in {shards.root}, {shards.num_samples} samples; split {how}")
    train = ShardDataset(shards, train_keys, shuffle=a.shuffle_buffer, seed=a.seed)
    val = ShardDataset(shards, val_keys, shuffle=0) if val_keys else None
    ident = {"source": "shards", "root": str(shards.root), "shards": [p.name for p in shards.paths],
             "manifest": _digest(shards.manifest["identity"])}
    return (Batches(train, a.batch_size, a.workers, pin_memory=pin),
            Batches(val, a.batch_size, a.workers, pin_memory=pin) if val is not None else None,
            shards.out_size, shards.teacher, ident)


def stream_data(a: argparse.Namespace, device: torch.device, log):
    from . import config
    from .generator import build_generator
    from .stream import StreamDataset, split_positions
    ns = argparse.Namespace(shards="<stream>", folders=None, fg=a.fg, bg=a.bg, k=a.k, seed=a.gen_seed, limit=a.limit,
                            scale=a.scale, compose_size=a.compose_size, out_size=a.out_size,
                            mask_threshold=a.mask_threshold, shard_size=10_000, jpeg_quality=95, batch_size=a.batch_size,
                            workers=1, device=str(device), composite_backend=a.composite_backend, skip_bad=False,
                            overwrite=False, quiet=True, depth=a.depth, depth_weights=a.depth_weights,
                            depth_runner=a.depth_runner, depth_precision=a.depth_precision)
    cfg = config.from_args(ns)  # the same checks as gen
    gen = build_generator(cfg, str(device), log)
    train_pos, val_pos, how = split_positions(gen, a.val_fraction, a.split_seed)
    log(f"data: online stream of {gen.total} samples on {device} (composite={gen.backend}); split {how}")
    train = StreamDataset(gen, a.batch_size, train_pos, seed=a.seed)
    val = StreamDataset(gen, a.batch_size, val_pos, shuffle=False) if len(val_pos) else None
    teacher = gen.teacher.describe() if gen.teacher is not None else None
    ident = {"source": "stream", "config": cfg.output_config(), "inputs": _digest(gen.inputs.record()),
             "teacher": teacher}
    return train, val, cfg.out_size, teacher, ident


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_out(out: Path, resume: bool) -> None:
    """Before any work: OUT must be new (or hold a run to resume, with --resume)."""
    last = out / "last.pt"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if not resume and last.exists():
        raise UsageError(f"{out} already holds a run ({last.name}); pass --resume to continue it, or another --out")
    if resume and not last.exists():
        raise UsageError(f"--resume: {last}: no checkpoint to continue from")


def _resume_state(out: Path, identity: dict) -> dict:
    """The checkpoint to continue, if it was made with the same data, model and training settings."""
    last = out / "last.pt"
    state = checkpoint.load(last)
    old = state.get("identity") or {}
    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    if diff:
        raise UsageError(f"--resume: {last} was trained with different settings ({', '.join(diff)}); "
                         "use the same flags, or another --out")
    return state


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    check_args(a)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    device = resolve_device(a.device)
    out = Path(a.out)
    _check_out(out, a.resume)
    _seed_everything(a.seed)
    if a.stream:
        train, val, data_size, teacher, data_ident = stream_data(a, device, log)
    else:
        train, val, data_size, teacher, data_ident = shard_data(a, device.type == "cuda", log)
    if train.num_samples == 0:
        raise UsageError("the training split is empty (too few samples or backgrounds; lower --val-fraction)")
    if not train.has_depth:
        log("the data has no depth (shards without depth.png, or no teacher): training the mask decoder only")
    size = a.size or data_size
    if size % SIZE_MULTIPLE:
        raise UsageError(f"the data is {data_size}x{data_size}, not a multiple of {SIZE_MULTIPLE}: pass --size")
    max_depth = a.max_depth or teacher_max_depth(teacher) or DEFAULT_MAX_DEPTH
    mcfg = ModelConfig(widths=scaled_widths(a.width), size=size, max_depth=max_depth)
    tcfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, max_lr=a.max_lr, momentum=a.momentum,
                       weight_decay=a.weight_decay, seed=a.seed, amp=a.amp, augment=not a.no_augment)
    identity = {"data": data_ident, "model": mcfg.to_dict(), "train": asdict(tcfg),
                "split": [a.val_fraction, a.split_seed, a.split], "shuffle_buffer": a.shuffle_buffer}
    state = _resume_state(out, identity) if a.resume else None
    out.mkdir(parents=True, exist_ok=True)
    model = BaselineNet(mcfg)
    trainer = Trainer(model, train, val, device, tcfg, out, identity, log=log, quiet=a.quiet)
    log(f"model: {parameter_count(model):,} parameters (paper: {PAPER_PARAMETERS:,}), input {size}x{size}, "
        f"widths {list(mcfg.widths)}, depth 1.0 = {max_depth:g} m")
    if state is not None:
        trainer.load_state_dict(state)
        log(f"resuming {out / 'last.pt'} after epoch {trainer.epoch} (step {trainer.step})")
    log(f"training {a.epochs} epochs x {trainer.steps_per_epoch} steps of {a.batch_size} on {device}"
        f"{f' ({trainer.amp})' if trainer.amp else ''}; validation: {'none' if val is None else 'every epoch'}")
    trainer.fit(a.stop_after)
    made = [n for n in ("last.pt", "best.pt", "history.json", "curves.png", "samples.png") if (out / n).exists()]
    log(f"done: epoch {trainer.epoch}/{a.epochs}; {', '.join(made)} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="smalldepthmask train"))
