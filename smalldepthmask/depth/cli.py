"""Command lines: `smalldepthmask weights ...` and `smalldepthmask depth IMAGES... --out DIR`.

Also runnable as `python -m smalldepthmask.depth.cli {weights,depth} ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError, UsageError, run_cli
from .densedepth import SIZE_MULTIPLE
from .png import encode_depth_png, preview_image
from .runners import PRECISIONS, RUNNERS
from .teacher import TEACHER_NAMES, Teacher, load_teacher
from .weights import DEFAULT_WEIGHTS, REGISTRY, find_cached, load_state_dict, read_sidecar, weights_dir

# ---------------------------------------------------------------------------- weights


def _weights_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smalldepthmask weights", description="Manage depth-teacher weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download (resumable) and verify a checkpoint into the cache")
    fetch.add_argument("name", help=f"one of: {', '.join(REGISTRY)}")
    source = fetch.add_mutually_exclusive_group()
    source.add_argument("--url", help="download from this address instead of the published one")
    source.add_argument("--file", type=Path, help="install this local copy instead of downloading")
    fetch.add_argument("--dest", type=Path, help=f"folder to store it in (default: {weights_dir()})")
    fetch.add_argument("--sha256", help="refuse the file unless it has this sha256")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.add_argument("--force", action="store_true", help="fetch again even if already installed")
    sub.add_parser("list", help="known checkpoints and what is in the cache")
    convert = sub.add_parser("convert", help="convert a released .h5 to .safetensors (no TensorFlow needed)")
    convert.add_argument("file", type=Path)
    convert.add_argument("--out", type=Path, help="output file (default: FILE with suffix .safetensors)")
    return parser


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import install_weights

    path = install_weights(
        args.name, args.url, args.file, args.dest, args.sha256, progress=not args.quiet, force=args.force
    )
    record = read_sidecar(path)
    print(f"{args.name}: {path} ({record.get('size')} bytes, sha256 {record.get('sha256')})")
    return 0


def _cmd_list(_: argparse.Namespace) -> int:
    for entry in REGISTRY.values():
        path = find_cached(entry.name)
        status = f"cached: {path}" if path else "not fetched"
        print(f"{entry.name:18s} {entry.approx_size:8s} {status}")
        print(f"{'':18s} {entry.url}  ({entry.note})")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .weights import save_converted

    if args.file.suffix != ".h5":
        raise UsageError(f"{args.file}: expected a Keras .h5 file")
    state, info = load_state_dict(args.file)
    out = args.out or args.file.with_suffix(".safetensors")
    save_converted(state, args.file, info.sha256, out)
    print(f"{args.file} -> {out} (convention {info.convention}, source sha256 {info.sha256})")
    return 0


def weights_main(argv: list[str] | None = None) -> int:
    args = _weights_parser().parse_args(argv)
    return {"fetch": _cmd_fetch, "list": _cmd_list, "convert": _cmd_convert}[args.command](args)


# ---------------------------------------------------------------------------- depth


def _depth_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smalldepthmask depth",
        description="Run the depth teacher on images: writes <stem>_depth.png (uint16 millimetres, "
        "at the image's size) and <stem>_depth_preview.png (colour map with a scale bar).",
    )
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--weights", help=f"a .h5 or converted .safetensors (default: {DEFAULT_WEIGHTS} from the cache)"
    )
    parser.add_argument(
        "--teacher", choices=TEACHER_NAMES, default="densedepth", help="fixes the convention (NYU/KITTI)"
    )
    parser.add_argument("--runner", choices=RUNNERS, default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=448, help="longer side of the network input (rounded to 32)")
    return parser


def network_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the longer side near `size`, both multiples of 32, aspect kept."""
    scale = size / max(width, height)

    def snap(v: float) -> int:
        return max(SIZE_MULTIPLE, int(v * scale / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)

    return snap(width), snap(height)


def _read_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise BadInputError(path, "no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise BadInputError(path, f"not a readable image ({e})") from None


def predict_image(
    teacher: Teacher, image: Image.Image, size: int
) -> np.ndarray:  # [H, W] float32 metres at the image's own size
    width, height = network_size(image.width, image.height, size)
    pixels = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(teacher.device)  # [1, 3, h, w]
    depth = teacher(x)  # [1, 1, h/2, w/2]
    full = F.interpolate(depth, size=(image.height, image.width), mode="bilinear", align_corners=False)
    return full[0, 0].float().cpu().numpy()


def depth_main(argv: list[str] | None = None) -> int:
    args = _depth_parser().parse_args(argv)
    if args.size < SIZE_MULTIPLE:
        raise UsageError(f"--size must be at least {SIZE_MULTIPLE}")
    stems = [p.stem for p in args.images]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise UsageError(f"several inputs share the name {duplicates[0]!r}; their outputs would overwrite each other")
    images = [(path, _read_rgb(path)) for path in args.images]
    teacher = load_teacher(args.teacher, args.weights, args.device, args.runner, args.precision)
    args.out.mkdir(parents=True, exist_ok=True)
    for path, image in images:
        depth = predict_image(teacher, image, args.size)
        target = args.out / f"{path.stem}_depth.png"
        target.write_bytes(encode_depth_png(depth))
        preview_image(depth).save(args.out / f"{path.stem}_depth_preview.png")
        print(f"{path} -> {target} ({depth.min():.2f}..{depth.max():.2f} m)")
    (args.out / "depth_teacher.json").write_text(json.dumps(teacher.describe(), indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------- python -m


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"weights": weights_main, "depth": depth_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m smalldepthmask.depth.cli {weights,depth} ...", file=sys.stderr)
        return 2
    return run_cli(commands[argv[0]], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
