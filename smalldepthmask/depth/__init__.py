"""Depth teachers. DenseDepth (Alhashim & Wonka 2018), an exact PyTorch port of the released weights.

    teacher = load_teacher("densedepth", weights="nyu.h5", device="cpu")
    depth_m = teacher(x)   # x: [B, 3, H, W] float32 in [0, 1] -> [B, 1, H/2, W/2] metres
    teacher.model          # the torch DenseDepth (raw network output)

`depth.png` files are uint16 millimetres (see `png`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError
from .png import decode_depth_png, depth_to_png16, encode_depth_png, png16_to_depth, preview_image
from .runners import PRECISIONS, RUNNERS, check_runner
from .teacher import Teacher, load_teacher, missing_weights_error, teacher_from_model
from .weights import DEFAULT_WEIGHTS, cache_dir, resolve_weights_path

__all__ = [
    "Teacher",
    "add_gen_arguments",
    "cache_dir",
    "check_runner",
    "decode_depth_png",
    "depth_main",
    "depth_to_png16",
    "encode_depth_png",
    "load_teacher",
    "png16_to_depth",
    "preview_image",
    "resolve_for_gen",
    "teacher_from_model",
    "weights_main",
]

DEPTH_CHOICES = ("densedepth", "none")
DEMO_NOTICE = (
    "smalldepthmask: note: no DenseDepth weights found, so this demo run writes no depth maps. "
    f"To add depth: `smalldepthmask weights fetch {DEFAULT_WEIGHTS}` (or with --url URL / --file FILE), "
    "or pass --depth-weights nyu.h5."
)


def add_gen_arguments(parser: argparse.ArgumentParser) -> None:
    """--depth, --depth-weights, --depth-runner, --depth-precision."""
    group = parser.add_argument_group("depth teacher")
    group.add_argument(
        "--depth", choices=DEPTH_CHOICES, default="densedepth", help="depth teacher (default: densedepth)"
    )
    group.add_argument(
        "--depth-weights",
        metavar="FILE",
        default=None,
        help="DenseDepth weights: a released .h5 (nyu.h5, kitti.h5) or a converted .safetensors "
        f"(default: {DEFAULT_WEIGHTS} from the cache, see `smalldepthmask weights fetch`)",
    )
    group.add_argument("--depth-runner", choices=RUNNERS, default="auto", help="how to run the teacher (default: auto)")
    group.add_argument(
        "--depth-precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: fp16 on CUDA (fp32 with onnxruntime), bf16 on CPUs with native bf16, else fp32; "
        "bf16 runs with torch and tensorrt, not onnxruntime",
    )


def resolve_for_gen(
    depth: str,
    weights: str | None,
    runner: str,
    precision: str,
    device: str,
    demo_inputs: bool,
    variant: str = "auto",
) -> Teacher | None:
    """The teacher for a gen run, or None when depth is off or (demo inputs only) no weights exist.

    The caller then calls `teacher.prepare(batch_size, compose_size, compose_size)` before the first
    batch (it builds or loads a TensorRT engine, times the graph variants on CUDA, ...). `variant` pins the
    graph (e.g. the one a manifest recorded, so a resume on another machine makes the same bytes)."""
    if depth == "none":
        return None
    if depth not in DEPTH_CHOICES:
        raise UsageError(f"unknown --depth {depth!r}; choose from {', '.join(DEPTH_CHOICES)}")
    check_runner(runner, device, precision)  # a runner/precision/device that cannot run stops here, first
    path: Path | None = resolve_weights_path(weights)
    if path is None:
        if demo_inputs:
            print(DEMO_NOTICE, file=sys.stderr)
            return None
        raise missing_weights_error(DEFAULT_WEIGHTS)
    return load_teacher("densedepth", path, device=device, runner=runner, precision=precision, variant=variant)


def weights_main(argv: list[str] | None = None) -> int:
    """`smalldepthmask weights {fetch,list,convert}`."""
    from .cli import weights_main as main

    return main(argv)


def depth_main(argv: list[str] | None = None) -> int:
    """`smalldepthmask depth IMAGES... --out DIR`."""
    from .cli import depth_main as main

    return main(argv)
