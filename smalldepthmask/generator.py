"""The generator core shared by the shard writer (gen) and the in-memory stream: inputs -> bank -> batches.

`Generator.batch(indices)` is a pure function of (config, inputs, seed, indices): plan -> composite ->
depth teacher, on the generator's device.
"""

from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import sources
from .bank import Bank, build_bank
from .composite import composite, resolve_backend
from .config import GenConfig
from .devices import resolve_device
from .errors import BadInputError, UsageError
from .pipeline import pad_rows
from .plan import SampleParams, permute, sample_params, total_samples
from .profile import NO_PROFILE, Profile


@dataclass
class InputFile:
    id: int
    file: str
    sha256: str
    size: tuple[int, int]  # (width, height) as decoded (foregrounds: of the alpha box)

    def record(self) -> dict:
        return {"id": self.id, "file": self.file, "sha256": self.sha256, "size": list(self.size)}


@dataclass
class Inputs:
    fg: list[InputFile]
    bg: list[InputFile]
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}
    demo: bool = False

    def record(self) -> dict:
        return {"fg": [f.record() for f in self.fg], "bg": [b.record() for b in self.bg],
                "skipped": self.skipped, "demo": self.demo}


def _read_one(path: Path, reader) -> tuple[Path, np.ndarray, str] | BadInputError:
    """(path, decoded array, sha256) or the file's BadInputError (run in a pool: Pillow's decoders and
    hashlib release the GIL)."""
    try:
        return path, reader(path), sources.file_sha256(path)
    except BadInputError as e:
        return e


def _read_all(paths: list[Path], reader) -> tuple[list[tuple[Path, np.ndarray, str]], list[BadInputError]]:
    """Decode and hash every file on all cores; results keep the (sorted) order of `paths`."""
    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1) or 1, thread_name_prefix="decode") as pool:
        results = list(pool.map(lambda p: _read_one(p, reader), paths))
    good = [r for r in results if not isinstance(r, BadInputError)]
    return good, [r for r in results if isinstance(r, BadInputError)]


def load_inputs(cfg: GenConfig, log=print) -> tuple[Inputs, list[np.ndarray], list[np.ndarray]]:
    """Discover, validate and decode every input before anything is written.

    Returns (inputs, backgrounds [H, W, 3] uint8, foregrounds [h, w, 4] uint8 straight alpha).
    Any bad file stops the run with one line per bad file, unless cfg.skip_bad.
    """
    demo = cfg.fg is None
    fg_dir, bg_dir = sources.demo_dirs() if demo else (Path(cfg.fg), Path(cfg.bg))
    if demo:
        log(f"no --fg/--bg given: using the bundled demo set ({fg_dir.parent})")
    fg_paths = sources.list_images(fg_dir, "fg")
    bg_paths = sources.list_images(bg_dir, "bg")
    fgs, bad_fg = _read_all(fg_paths, sources.read_foreground)
    bgs, bad_bg = _read_all(bg_paths, sources.read_background)
    bad = bad_fg + bad_bg
    if bad and not cfg.skip_bad:
        raise UsageError(f"{len(bad)} unusable input file(s); fix or remove them, or pass --skip-bad",
                         [f"{e.path}: {e.reason}" for e in bad])
    for e in bad:
        log(f"skipping {e.path}: {e.reason}")
    if not fgs:
        raise UsageError(f"--fg {fg_dir}: no usable foreground image")
    if not bgs:
        raise UsageError(f"--bg {bg_dir}: no usable background image")
    inputs = Inputs(
        fg=[InputFile(i, p.name, sha, (a.shape[1], a.shape[0])) for i, (p, a, sha) in enumerate(fgs)],
        bg=[InputFile(i, p.name, sha, (a.shape[1], a.shape[0])) for i, (p, a, sha) in enumerate(bgs)],
        skipped=[{"file": str(e.path), "reason": e.reason} for e in bad], demo=demo)
    return inputs, [a for _, a, _ in bgs], [a for _, a, _ in fgs]


@dataclass
class Batch:
    params: SampleParams  # of the n real samples
    image: torch.Tensor  # [B, O, O, 3] uint8
    mask: torch.Tensor  # [B, O, O] uint8 in {0, 1}
    depth: torch.Tensor | None  # [B, 1, O, O] float32 metres, or None without a teacher
    n: int = -1  # rows 0..n-1 are the samples asked for; rows n..B-1 pad the batch to its shape (-1: B)

    def __post_init__(self):
        if self.n < 0:
            self.n = self.image.shape[0]


class Generator:
    def __init__(self, cfg: GenConfig, inputs: Inputs, backgrounds: list[np.ndarray],
                 foregrounds: list[np.ndarray], device: torch.device, teacher=None):
        self.cfg, self.inputs, self.device, self.teacher = cfg, inputs, device, teacher
        self.backend = resolve_backend(cfg.composite_backend, device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bank = build_bank(backgrounds, foregrounds, cfg.compose_size, cfg.scale,
                              [b.file for b in inputs.bg])
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        self.bank: Bank = bank.to(device)
        self.population = total_samples(len(inputs.bg), len(inputs.fg), cfg.k)
        self.total = min(self.population, cfg.limit) if cfg.limit else self.population

    def indices(self, start: int, stop: int) -> np.ndarray:
        """Global sample indices at output positions [start, stop): [stop - start] int64."""
        return permute(np.arange(start, stop, dtype=np.int64), self.population, self.cfg.seed)

    def params(self, index: np.ndarray) -> SampleParams:
        return sample_params(index, self.bank.layout, self.cfg.k, self.cfg.seed, self.cfg.compose_size,
                             self.cfg.scale)

    @torch.inference_mode()
    def batch(self, index: np.ndarray, prof: Profile = NO_PROFILE, pad_to: int | None = None) -> Batch:
        """Make the samples with global indices `index` ([n] int64) on the generator's device, on the current
        stream; with `pad_to`, the batch is padded to that many rows (copies of the last sample)."""
        cfg = self.cfg
        with prof.host("plan"):
            p = self.params(index)
            ip, fp = pad_rows(*p.kernel_args(self.bank.layout), pad_to)
        with prof.host("upload"):  # host tensors: composite() checks them on the host, then uploads them
            ipt, fpt = torch.from_numpy(ip), torch.from_numpy(fp)  # non_blocking from pinned memory
        with prof.device("composite", self.device):
            out = composite(self.bank, ipt, fpt, cfg.compose_size, cfg.out_size, cfg.mask_threshold,
                            self.teacher is not None, self.backend)
        depth = None
        if self.teacher is not None:
            with prof.device("teacher", self.device):
                depth = self.teacher(out.compose)  # [B, 1, S/2, S/2] metres
                if depth.shape[-1] != cfg.out_size:
                    mode = "area" if depth.shape[-1] > cfg.out_size else "bilinear"
                    depth = F.interpolate(depth, size=(cfg.out_size, cfg.out_size), mode=mode)
        return Batch(p, out.image, out.mask, depth, len(index))

    def records(self, p: SampleParams) -> list[dict]:
        """The JSON record of each sample: how it was made."""
        cfg, S = self.cfg, self.cfg.compose_size
        teacher = self.teacher.describe()["teacher"] if self.teacher is not None else "none"
        recs = []
        for i in range(len(p)):
            bg, fg = self.inputs.bg[int(p.bg[i])], self.inputs.fg[int(p.fg[i])]
            bh, bw = self.bank.layout.bg_sizes[int(p.bg[i])]
            f = bg.size[0] / bw  # original pixels per resized pixel
            recs.append({
                "index": int(p.index[i]),
                "bg": {"id": bg.id, "file": bg.file},
                "fg": {"id": fg.id, "file": fg.file},
                "flip": bool(p.flip[i]),
                "crop": [round(float(p.crop_x[i]) * f, 3), round(float(p.crop_y[i]) * f, 3), round(S * f, 3)],
                "center": [float(p.cx[i]), float(p.cy[i])],
                "scale": float(p.scale[i]),
                "box": [float(p.cx[i] + 0.5 - p.box_w[i] / 2), float(p.cy[i] + 0.5 - p.box_h[i] / 2),
                        float(p.box_w[i]), float(p.box_h[i])],
                "compose_size": S,
                "out_size": cfg.out_size,
                "teacher": teacher,
            })
        return recs


def build_generator(cfg: GenConfig, device: str = "auto", log=None) -> Generator:
    """Inputs (all checked), the teacher on the same device, and the generator for `cfg`."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    dev = resolve_device(device)
    inputs, bgs, fgs = load_inputs(cfg, log)
    from .depth import resolve_for_gen
    teacher = resolve_for_gen(cfg.depth, cfg.depth_weights, cfg.depth_runner, cfg.depth_precision, str(dev),
                              inputs.demo)
    if teacher is not None and cfg.compose_size % teacher.size_multiple:
        raise UsageError(f"--compose-size {cfg.compose_size}: the depth teacher needs a multiple of "
                         f"{teacher.size_multiple} (or use --depth none)")
    if teacher is not None and hasattr(teacher, "prepare"):  # engines built / graphs chosen before batch one
        teacher.prepare(cfg.batch_size, cfg.compose_size, cfg.compose_size, log)
    return Generator(cfg, inputs, bgs, fgs, dev, teacher)
