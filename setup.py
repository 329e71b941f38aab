"""Build: the metadata is in pyproject.toml; this file ships the kernel sources and, on request, builds them.

    pip install .            # or -e .: pure Python, no compile step; the kernels compile on first use
                             # (smalldepthmask/_build.py), cached in the user cache dir

The kernel sources (csrc/) are copied into the package as smalldepthmask/_csrc, so a wheel or an sdist can
compile them on first use too (an editable install reads csrc/ in place).

Ahead-of-time build for wheel builders: `SMALLDEPTHMASK_BUILD_EXT=1 pip install --no-build-isolation .`
(torch must be importable at build time) compiles smalldepthmask/_C into the package; a loaded in-tree build
wins over the cache. It builds CUDA + C++ where torch is a CUDA build and nvcc is found (SMALLDEPTHMASK_CUDA=0
skips CUDA), with TORCH_CUDA_ARCH_LIST defaulting to "8.0;9.0+PTX" (no GPU needed).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _toolchain():
    """smalldepthmask/_toolchain.py, loaded by path (importing the package would need torch)."""
    spec = importlib.util.spec_from_file_location("_sdm_toolchain", os.path.join(HERE, "smalldepthmask",
                                                                                 "_toolchain.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tc = _toolchain()


def _say(msg: str) -> None:
    print(f"smalldepthmask: {msg}", file=sys.stderr, flush=True)


class BuildPyWithSources(build_py):
    """Also copies csrc/ into the built package as smalldepthmask/_csrc (not for editable installs)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        src = os.path.join(HERE, "csrc")
        dst = os.path.join(self.build_lib, "smalldepthmask", "_csrc")
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
            if name.endswith(tc.SOURCE_SUFFIXES):
                shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def _ahead_of_time():
    """(ext_modules, cmdclass) of the ahead-of-time build, when SMALLDEPTHMASK_BUILD_EXT=1."""
    if not tc.flag("SMALLDEPTHMASK_BUILD_EXT"):
        return [], {}
    cuda_home = tc.resolve_cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"smalldepthmask: SMALLDEPTHMASK_BUILD_EXT=1 needs torch at build time ({e}); "
                         "use `pip install --no-build-isolation .`")
    want_cuda = torch.version.cuda is not None and cuda_home is not None and not (
        "SMALLDEPTHMASK_CUDA" in os.environ and not tc.flag("SMALLDEPTHMASK_CUDA"))
    linux = sys.platform.startswith("linux")
    cxx = list(tc.CXX_FLAGS) + (["-fopenmp"] if linux else [])
    info = {"cuda": want_cuda, "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cxx_flags": cxx,
            "openmp": linux, "how": "ahead of time"}
    macros = []
    if want_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", tc.DEFAULT_ARCH_LIST)
        macros.append(("SMALLDEPTHMASK_WITH_CUDA", "1"))
        info.update(cuda_home=cuda_home, nvcc=tc.cuda_version(cuda_home), nvcc_flags=tc.NVCC_FLAGS,
                    arch_list=os.environ["TORCH_CUDA_ARCH_LIST"])
    _say(f"ahead-of-time build of the {'CUDA + C++' if want_cuda else 'C++'} kernels")
    gen_dir = os.path.join(HERE, "build", "smalldepthmask_generated")
    tc.write_if_changed(tc.Path(gen_dir) / "smalldepthmask_build_info.h", tc.build_info_header(info))
    root = tc.Path(HERE) / "csrc"
    kind = cpp_extension.CUDAExtension if want_cuda else cpp_extension.CppExtension
    ext = kind(name="smalldepthmask._C",
               sources=[os.path.relpath(p, HERE) for p in tc.kernel_sources(root, want_cuda)],
               include_dirs=[str(root), gen_dir], define_macros=macros,
               extra_compile_args={"cxx": cxx, "nvcc": tc.NVCC_FLAGS} if want_cuda else {"cxx": cxx},
               extra_link_args=["-fopenmp"] if linux else [])
    if want_cuda:
        ext.include_dirs.extend(tc.pip_cuda_includes())  # after torch's and CUDA_HOME's: the toolkit's win
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _ahead_of_time()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})
