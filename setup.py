"""Build: the package metadata is in pyproject.toml; this file only adds the compiled op (csrc/).

    pip install -e . --no-build-isolation       # the documented install (uses the torch already installed)

What gets built (printed as "smalldepthmask: ..." during the build):
  - a CUDA extension (C++ CPU kernel + CUDA kernel) when torch is a CUDA build and nvcc is found,
  - a C++ extension (CPU kernel only) when torch is importable but there is no CUDA toolchain (or
    SMALLDEPTHMASK_CUDA=0),
  - no extension at all when SMALLDEPTHMASK_NO_EXT=1 or torch is not importable at build time (e.g. pip's
    build isolation); the package then uses the plain-torch reference composite.
TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0+PTX" (no GPU is needed to build); set it to build for other GPUs.
CUDA_HOME is resolved from the real nvcc (a wrapper script on the PATH is looked through), and torch's
pip-installed CUDA headers (site-packages/nvidia/cu*/include) are added when they exist.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _say(msg: str) -> None:
    print(f"smalldepthmask: {msg}", file=sys.stderr, flush=True)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _nvcc_in_cuda_home(home: str | None) -> str | None:
    if home:
        nvcc = os.path.join(home, "bin", "nvcc")
        if os.path.isfile(nvcc) and os.access(nvcc, os.X_OK):
            return nvcc
    return None


def _resolve_cuda_home() -> str | None:
    """The CUDA toolkit folder: $CUDA_HOME / $CUDA_PATH if set, else the folder of the real nvcc."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        home = os.path.dirname(os.path.dirname(real))
        if os.path.isdir(os.path.join(home, "include")) and os.path.isfile(os.path.join(home, "include",
                                                                                          "cuda_runtime.h")):
            return home
        # a wrapper script (e.g. /usr/local/bin/nvcc: `exec /usr/local/cuda-13.0/bin/nvcc "$@"`): look through it
        try:
            with open(real, "rb") as fh:
                head = fh.read(4096)
            if head.startswith(b"#!"):
                for m in re.finditer(rb"(/[^\s\"']+)/bin/nvcc\b", head):
                    cand = m.group(1).decode()
                    if _nvcc_in_cuda_home(cand):
                        return cand
        except OSError:
            pass
    if _nvcc_in_cuda_home("/usr/local/cuda"):
        return "/usr/local/cuda"
    return None


def _nvcc_version(home: str) -> str:
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
        m = re.search(r"release ([0-9.]+)", out)
        return m.group(1) if m else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _pip_cuda_includes() -> list[str]:
    """site-packages/nvidia/cu*/include (CUDA headers torch's headers include, shipped with torch's pip deps)."""
    try:
        import nvidia  # namespace package from the nvidia-* wheels
    except ImportError:
        return []
    found = []
    for root in getattr(nvidia, "__path__", []):
        found += sorted(d for d in glob.glob(os.path.join(root, "cu*", "include")) if os.path.isdir(d))
    return found


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _extensions():
    """(ext_modules, cmdclass) for this machine, or ([], {}) for a pure-Python install."""
    if _flag("SMALLDEPTHMASK_NO_EXT"):
        _say("SMALLDEPTHMASK_NO_EXT is set: building without the compiled extension (reference composite only)")
        return [], {}
    cuda_home = _resolve_cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # noqa: BLE001 - any failure to import torch means: no extension
        _say(f"torch is not importable at build time ({type(e).__name__}: {e}): building without the compiled "
             "extension; install torch first and use `pip install -e . --no-build-isolation` to build it")
        return [], {}

    want_cuda = torch.version.cuda is not None and cuda_home is not None and not (
        "SMALLDEPTHMASK_CUDA" in os.environ and not _flag("SMALLDEPTHMASK_CUDA"))
    if torch.version.cuda is None:
        _say(f"torch {torch.__version__} is not a CUDA build: building the C++ (CPU) extension")
    elif cuda_home is None:
        _say("nvcc not found (set CUDA_HOME to build the CUDA kernel): building the C++ (CPU) extension")
    elif not want_cuda:
        _say("SMALLDEPTHMASK_CUDA=0: building the C++ (CPU) extension")

    linux = sys.platform.startswith("linux")
    cxx = ["-O3", "-ffp-contract=off", "-fno-fast-math"]
    link = []
    if linux:  # at::parallel_for runs on OpenMP (torch's own libgomp at run time)
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    nvcc = ["-O3", "--fmad=false", "-Xcompiler", "-ffp-contract=off"]
    sources = ["csrc/composite.cpp", "csrc/ops.cpp"]
    define_macros = []
    info = {"cuda": want_cuda, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cxx_flags": cxx, "openmp": linux}
    if want_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        sources.append("csrc/composite_cuda.cu")
        define_macros.append(("SMALLDEPTHMASK_WITH_CUDA", "1"))
        info.update(cuda_home=cuda_home, nvcc=_nvcc_version(cuda_home), nvcc_flags=nvcc,
                    arch_list=os.environ["TORCH_CUDA_ARCH_LIST"])
        _say(f"building the CUDA extension (CUDA_HOME={cuda_home}, nvcc {info['nvcc']}, "
             f"TORCH_CUDA_ARCH_LIST={info['arch_list']})")
    else:
        _say("building the C++ extension (CPU kernel only)")

    gen_dir = os.path.join(HERE, "build", "smalldepthmask_generated")
    os.makedirs(gen_dir, exist_ok=True)
    header = (f"// generated by setup.py\n#pragma once\n"
              f"#define SMALLDEPTHMASK_BUILD_FLAGS {_c_string(json.dumps(info, sort_keys=True))}\n")
    path = os.path.join(gen_dir, "smalldepthmask_build_info.h")
    old = open(path).read() if os.path.exists(path) else None
    if old != header:  # keep the timestamp when nothing changed (no needless rebuild)
        with open(path, "w") as fh:
            fh.write(header)

    kind = cpp_extension.CUDAExtension if want_cuda else cpp_extension.CppExtension
    ext = kind(
        name="smalldepthmask._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc"), gen_dir],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if want_cuda else {"cxx": cxx},
        extra_link_args=link,
    )
    if want_cuda:
        # appended after torch's and CUDA_HOME's include folders, so the toolkit's own headers win
        ext.include_dirs.extend(_pip_cuda_includes())
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
