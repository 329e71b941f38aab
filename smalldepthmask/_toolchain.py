"""The compile facts shared by the first-use build (_build.py) and setup.py's ahead-of-time build.

Imports nothing heavy (no torch): setup.py loads this file by path, before torch may even be importable.
It finds the kernel sources, the CUDA toolkit (looking through an nvcc wrapper script), the C++ compiler and
the CUDA headers that torch's pip dependencies ship, and holds the compiler flags both builds use.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

DEFAULT_ARCH_LIST = "8.0;9.0+PTX"  # no GPU needed to build; a GPU at hand replaces it with its own arch
# -ffp-contract=off / --fmad=false: no fused multiply-add may change a rounding (the kernels match the
# reference bit for bit)
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math"]
NVCC_FLAGS = ["-O3", "--fmad=false", "-Xcompiler", "-ffp-contract=off"]
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def flag(name: str) -> bool:
    """An environment switch: unset, '', 0, false, no, off -> False."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def csrc_dir() -> Path | None:
    """The kernel sources: shipped inside the package (wheel, sdist) or the repository's csrc/ (editable)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "_csrc", here.parent / "csrc"):
        if (cand / "ops.cpp").is_file():
            return cand
    return None


def kernel_sources(root: Path, with_cuda: bool) -> list[Path]:
    """The translation units to compile: every .cpp, and every .cu for a CUDA build (sorted: stable hashes)."""
    suffixes = (".cpp", ".cu") if with_cuda else (".cpp",)
    return sorted(p for p in root.iterdir() if p.suffix in suffixes)


def source_files(root: Path) -> list[Path]:
    """Every file whose content goes into the build (headers included), sorted."""
    return sorted(p for p in root.iterdir() if p.suffix in SOURCE_SUFFIXES)


def _nvcc_in(home: str | None) -> str | None:
    if home:
        nvcc = os.path.join(home, "bin", "nvcc")
        if os.path.isfile(nvcc) and os.access(nvcc, os.X_OK):
            return nvcc
    return None


def _looked_through(wrapper: str) -> str | None:
    """The toolkit folder named inside an nvcc wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`)."""
    try:
        with open(wrapper, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if head.startswith(b"#!"):
        for m in re.finditer(rb"(/[^\s\"']+)/bin/nvcc\b", head):
            if _nvcc_in(m.group(1).decode()):
                return m.group(1).decode()
    return None


def resolve_cuda_home() -> str | None:
    """The CUDA toolkit folder: $CUDA_HOME / $CUDA_PATH if set, else the folder of the real nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        home = os.path.dirname(os.path.dirname(real))
        if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
            return home
        found = _looked_through(real)
        if found:
            return found
    return "/usr/local/cuda" if _nvcc_in("/usr/local/cuda") else None


def cuda_version(home: str) -> str | None:
    """The toolkit's CUDA version ("13.0.88"): from version.json (no subprocess), else `nvcc --version`."""
    try:
        with open(os.path.join(home, "version.json")) as fh:
            return str(json.load(fh)["cuda"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    nvcc = _nvcc_in(home)
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release ([0-9.]+)", out)
    return m.group(1) if m else None


def pip_cuda_includes() -> list[str]:
    """site-packages/nvidia/cu*/include: CUDA headers torch's headers include, shipped with torch's pip deps."""
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return []
    found = []
    for root in getattr(nvidia, "__path__", []):
        found += sorted(d for d in glob.glob(os.path.join(root, "cu*", "include")) if os.path.isdir(d))
    return found


def compiler() -> str | None:
    """The real path of the C++ compiler torch's build will call ($CXX, else c++), or None."""
    found = shutil.which(os.environ.get("CXX") or "c++")
    return os.path.realpath(found) if found else None


def compiler_version(path: str) -> str | None:
    """`CXX -dumpfullversion` ("12.2.0"), or None when it does not answer."""
    try:
        out = subprocess.run([path, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def build_info_header(info: dict) -> str:
    """The generated header ops.cpp compiles in (the facts `info` prints about the loaded build)."""
    text = json.dumps(info, sort_keys=True)
    literal = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"// generated\n#pragma once\n#define SMALLDEPTHMASK_BUILD_FLAGS {literal}\n"


def write_if_changed(path: Path, text: str) -> None:
    """Write `text` unless the file already holds it (keeps the timestamp: no needless rebuild)."""
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
