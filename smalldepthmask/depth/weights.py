"""DenseDepth weights: registry of published checkpoints, user cache, and loading with a converted cache.

A `.h5` is converted once (h5py only) and the torch tensors are cached as safetensors keyed by
the source file's sha256, so later runs skip the conversion. The depth convention of each
checkpoint (NYU or KITTI) travels with it: in the registry entry, in the sidecar written by
`weights fetch`, in the converted file's metadata, or, for a bare local file, from its name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cache import cache_dir  # noqa: F401 - re-exported: onnx/tensorrt runners import it from here
from ..errors import UsageError
from .conventions import CONVENTIONS
from .keras_h5 import WeightsFileError, read_keras_h5

CONVERTED_FORMAT = "smalldepthmask-densedepth-v1"


@dataclass(frozen=True)
class WeightsEntry:
    """A published checkpoint: where it was published and what we know about it."""

    name: str
    url: str
    filename: str
    convention: str
    approx_size: str
    size: int | None = None  # exact byte count, when known
    sha256: str | None = None  # when known
    note: str = ""


REGISTRY: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            "densedepth-nyu",
            "https://s3-eu-west-1.amazonaws.com/densedepth/nyu.h5",
            "nyu.h5",
            "nyu",
            "~165 MB",
            note="indoor scenes (NYU Depth v2); published link reported dead, no sha256 published",
        ),
        WeightsEntry(
            "densedepth-kitti",
            "https://s3-eu-west-1.amazonaws.com/densedepth/kitti.h5",
            "kitti.h5",
            "kitti",
            "~165 MB",
            note="roads (KITTI); published link reported dead, no sha256 published",
        ),
    )
}
DEFAULT_WEIGHTS = "densedepth-nyu"


@dataclass(frozen=True)
class WeightsInfo:
    """Where a state dict came from."""

    path: Path
    sha256: str  # of the source file (the .h5 for a converted file)
    convention: str  # key of CONVENTIONS
    convention_source: str  # "registry", "sidecar", "metadata", "file name" or "default"
    from_cache: bool = False


def weights_dir() -> Path:
    return cache_dir() / "weights"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a weights file (the package's one file hash, sink.sha256_file)."""
    from ..sink import sha256_file

    return sha256_file(path)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_sidecar(path: Path) -> dict:
    try:
        return json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return {}


def find_cached(name: str = DEFAULT_WEIGHTS) -> Path | None:
    """The fetched `.h5` of registry entry `name` in the cache, if present."""
    entry = REGISTRY[name]
    path = weights_dir() / entry.filename
    return path if path.is_file() else None


def guess_convention(path: Path, metadata: dict[str, str] | None = None) -> tuple[str, str]:
    """(convention, how it was decided) for a weights file."""
    if metadata and metadata.get("convention") in CONVENTIONS:
        return metadata["convention"], "metadata"
    side = read_sidecar(path)
    if side.get("convention") in CONVENTIONS:
        return side["convention"], "sidecar"
    for entry in REGISTRY.values():
        if path.name == entry.filename:
            return entry.convention, "file name"
    if "kitti" in path.name.lower():
        return "kitti", "file name"
    return "nyu", "default"


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    from .densedepth import DenseDepth

    with torch.device("meta"):
        model = DenseDepth()
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def converted_path(sha256: str) -> Path:
    return cache_dir() / "converted" / f"densedepth-{sha256}.safetensors"


def read_h5_state(path: Path) -> dict[str, torch.Tensor]:
    """State dict read from a Keras `.h5` (checked against the released architecture)."""
    return {k: torch.from_numpy(v) for k, v in read_keras_h5(path, _expected_shapes()).items()}


def save_converted(state: dict[str, torch.Tensor], source: Path, sha256: str, out: Path) -> None:
    """Write `state` as safetensors at `out` (atomically) with the source's name, hash and convention."""
    from safetensors.torch import save_file

    metadata = {
        "format": CONVERTED_FORMAT,
        "source_name": source.name,
        "source_sha256": sha256,
        "convention": guess_convention(source)[0],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, out)


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys() only
    except (SafetensorError, OSError) as e:
        raise WeightsFileError(path, f"not a readable safetensors file ({e})") from None
    if metadata.get("format") != CONVERTED_FORMAT:
        raise WeightsFileError(path, "not a DenseDepth file converted by `smalldepthmask weights convert`")
    return state, metadata


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """DenseDepth state dict from a released `.h5` (converted once, then cached) or a converted file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsFileError(path, "no such file")
    if path.suffix == ".safetensors":
        state, metadata = _load_safetensors(path)
        convention, source = guess_convention(path, metadata)
        return state, WeightsInfo(path, metadata.get("source_sha256", ""), convention, source, True)
    sha = sha256_of(path)
    convention, source = guess_convention(path)
    cached = converted_path(sha)
    if cached.is_file():
        try:
            state, _ = _load_safetensors(cached)
            return state, WeightsInfo(path, sha, convention, source, True)
        except WeightsFileError:
            cached.unlink(missing_ok=True)  # a damaged cache entry: convert again
    state = read_h5_state(path)
    try:
        save_converted(state, path, sha, cached)
    except OSError:
        pass  # cache not writable: the conversion is simply redone next time
    return state, WeightsInfo(path, sha, convention, source, False)


def resolve_weights_path(weights: str | Path | None, name: str = DEFAULT_WEIGHTS) -> Path | None:
    """An explicit file (must exist), else the fetched file of `name` in the cache, else None."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"--depth-weights {weights}: no such file")
        return path
    return find_cached(name)
