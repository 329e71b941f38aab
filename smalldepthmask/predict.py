"""`smalldepthmask predict --checkpoint CKPT IMAGES... --out DIR`: mask and depth for your own photos.

Each photo (files, or directories of JPEG/PNG/WebP) is resized to the model's input side (the whole
photo, aspect not kept, as the training composites are square), run through the network, and the
predictions are resized back to the photo's size. For each photo NAME this writes:

    DIR/NAME.mask.png     1-bit PNG (0/255 in L), probability >= 0.5
    DIR/NAME.depth.png    uint16 PNG, millimetres (0 = none); not written for a mask-only model
    DIR/NAME.preview.png  photo | mask over the photo | depth (colour map over the photo's own range,
                          near = bright), side by side
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .codec import write_depth_png_mm, write_mask_png
from .errors import BadInputError, UsageError, run_cli
from .devices import resolve_device
from .model import BaselineNet, ModelConfig
from .model import checkpoint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
PREVIEW_HEIGHT = 256


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smalldepthmask predict", description="Predict mask and depth for photos.")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or directories of images")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="last.pt or best.pt from train")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def list_images(specs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                raise UsageError(f"{p}: no images in this directory")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise UsageError(f"{p}: no such file or directory")
    return list(dict.fromkeys(paths))


def check_image(path: Path) -> None:
    """Read the header only: a file that is not an image fails here, before anything is written."""
    try:
        with Image.open(path) as im:
            im.size
    except Exception as e:  # Pillow raises several kinds for a bad file
        raise BadInputError(path, f"cannot read as an image ({type(e).__name__}: {e})") from None


def read_image(path: Path) -> np.ndarray:  # -> [H, W, 3] uint8
    try:
        with Image.open(path) as im:
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception as e:  # Pillow raises several kinds for a bad file
        raise BadInputError(path, f"cannot read as an image ({type(e).__name__}: {e})") from None


def load_model(path: str, device: torch.device) -> BaselineNet:
    state = checkpoint.load(path, device)
    try:
        model = BaselineNet(ModelConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{path}: the checkpoint's model does not load ({str(e).splitlines()[0][:200]})") from None
    model.has_depth = bool(state.get("has_depth", True))
    return model.to(device).eval()


@torch.no_grad()
def predict(model: BaselineNet, image: np.ndarray,  # [H, W, 3] uint8
            device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """(mask probability [H, W] float32, depth metres [H, W] float32 or None) at the photo's size."""
    h, w = image.shape[:2]
    s = model.cfg.size
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float().div_(255)  # [1, 3, H, W]
    x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)  # [1, 3, s, s]
    mask, depth = model(x, with_depth=model.has_depth)
    mask = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if depth is not None:
        depth = F.interpolate(model.depth_metres(depth), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        depth = depth.cpu().numpy()
    return mask.cpu().numpy(), depth


def preview(image: np.ndarray, mask: np.ndarray, depth: np.ndarray | None, max_depth: float) -> Image.Image:
    """image [H, W, 3] uint8, mask [H, W] bool, depth [H, W] metres -> panels side by side."""
    overlay = image.astype(np.float32)
    overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.array([255, 40, 40], np.float32)
    panels = [image, overlay.astype(np.uint8)]
    if depth is not None:
        lo, hi = np.percentile(depth, [2, 98])  # stretched to this photo's range; near = bright
        hi = hi if hi > lo else lo + max_depth * 1e-3
        cmap = matplotlib.colormaps["magma_r"]
        panels.append((cmap(np.clip((depth - lo) / (hi - lo), 0, 1))[..., :3] * 255).astype(np.uint8))
    h, w = image.shape[:2]
    size = (max(1, round(w * PREVIEW_HEIGHT / h)), PREVIEW_HEIGHT)
    resized = [Image.fromarray(p).resize(size, Image.Resampling.BILINEAR) for p in panels]
    sheet = Image.new("RGB", (size[0] * len(resized), size[1]))
    for i, p in enumerate(resized):
        sheet.paste(p, (i * size[0], 0))
    return sheet


def output_stems(paths: list[Path]) -> list[str]:
    """Unique output names: the file stem, with a counter where two photos share one."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}-{n}")
    return stems


def write_outputs(out: Path, stem: str, image: np.ndarray, mask: np.ndarray, depth: np.ndarray | None,
                  max_depth: float) -> list[Path]:
    hard = mask >= 0.5
    written = [out / f"{stem}.mask.png"]
    write_mask_png(written[0], hard)
    if depth is not None:
        written.append(out / f"{stem}.depth.png")
        mm = np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16)
        write_depth_png_mm(written[-1], mm)
    written.append(out / f"{stem}.preview.png")
    preview(image, hard, depth, max_depth).save(written[-1])
    return written


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    device = resolve_device(a.device)
    paths = list_images(a.images)
    model = load_model(a.checkpoint, device)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    for p in paths:  # every input is checked before anything is written
        check_image(p)
    out.mkdir(parents=True, exist_ok=True)
    if not model.has_depth:
        print("the checkpoint was trained without depth: writing masks only", file=sys.stderr)
    for path, stem in zip(paths, output_stems(paths)):
        image = read_image(path)
        mask, depth = predict(model, image, device)
        written = write_outputs(out, stem, image, mask, depth, model.cfg.max_depth)
        print(f"{path}: " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="smalldepthmask predict"))
