"""The composite kernels compile themselves on first use, once, into the user cache.

`ensure()` returns the path of a loadable `_C` library for this machine, or None with the reasons. It tries
the CUDA + C++ build where torch is a CUDA build and a matching nvcc is found, else (or when that build fails)
the C++-only build. Each build lives in its own folder of the cache, named by a hash of everything that
changes the binary: package, torch and Python ABI versions, torch's CUDA, the nvcc and C++ compiler binaries,
the arch list, the flags and the kernel sources. A lock makes concurrent processes (workers, ranks, tests)
build it once; a failed build is remembered with its log until something in the key changes (or
SMALLDEPTHMASK_REBUILD=1), so it is not retried on every run.

Environment: SMALLDEPTHMASK_EXT_CACHE (the cache folder; default `<SMALLDEPTHMASK_CACHE or the user cache
dir>/ext`), SMALLDEPTHMASK_CUDA=0 (skip the CUDA part), SMALLDEPTHMASK_REBUILD=1 (retry a remembered failure),
TORCH_CUDA_ARCH_LIST, CUDA_HOME, CXX and MAX_JOBS as torch's own extension builder reads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, _toolchain
from .cache import cache_dir

EXT_CACHE_ENV = "SMALLDEPTHMASK_EXT_CACHE"
LOCK_WAIT_NOTE_S = 2.0


@dataclass
class Built:
    """The outcome of ensure(): a library to load (or None) and why anything was not built."""

    path: Path | None = None
    variant: str | None = None  # "cuda" (CUDA + C++) or "cpu" (C++ only)
    how: str | None = None  # "cache" or "compiled now"
    flags: dict = field(default_factory=dict)
    not_built: list[str] = field(default_factory=list)  # "the CUDA part: <reason>", ...


def ext_cache_root() -> Path:
    override = os.environ.get(EXT_CACHE_ENV)
    return Path(override).expanduser() if override else cache_dir() / "ext"


def _say(msg: str) -> None:
    print(f"smalldepthmask: {msg}", file=sys.stderr, flush=True)


def _identity(path: str | None) -> list | None:
    """A binary named by its real path, size and mtime (cheaper than running it at every start)."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return [path]
    return [path, st.st_size, st.st_mtime_ns]


def _arch_list(torch) -> str:
    """$TORCH_CUDA_ARCH_LIST, else the visible GPUs' archs, else a default that needs no GPU."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps)
    return _toolchain.DEFAULT_ARCH_LIST


def _cuda_blocker(torch, cuda_home: str | None) -> str | None:
    """Why the CUDA part cannot be built here (checked before any compile), or None."""
    if "SMALLDEPTHMASK_CUDA" in os.environ and not _toolchain.flag("SMALLDEPTHMASK_CUDA"):
        return "SMALLDEPTHMASK_CUDA=0"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if cuda_home is None or _toolchain._nvcc_in(cuda_home) is None:
        return "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
    return None


def _key(torch, variant: str, root: Path, cuda_home: str | None, arch: str | None) -> dict:
    digest = hashlib.sha256()
    for p in _toolchain.source_files(root):
        digest.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    key = {"package": __version__, "torch": torch.__version__, "torch_git": torch.version.git_version,
           "python": sys.implementation.cache_tag, "abi": sysconfig.get_config_var("EXT_SUFFIX"),
           "variant": variant, "cxx": _identity(_toolchain.compiler()), "cxx_flags": _toolchain.CXX_FLAGS,
           "sources": digest.hexdigest()}
    if variant == "cuda":
        key.update(torch_cuda=torch.version.cuda, nvcc=_identity(_toolchain._nvcc_in(cuda_home)), arch=arch,
                   nvcc_flags=_toolchain.NVCC_FLAGS)
    return key


def _folder(key: dict) -> Path:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return ext_cache_root() / f"{key['variant']}-{h}"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _precheck(torch, variant: str, cuda_home: str | None) -> str | None:
    """Reasons found without compiling: no compiler, a CUDA major mismatch."""
    cxx = _toolchain.compiler()
    if cxx is None:
        return f"no C++ compiler found ({os.environ.get('CXX') or 'c++'} is not on the PATH; install g++ or set CXX)"
    if variant == "cuda":
        have = _toolchain.cuda_version(cuda_home) or "?"
        if have.split(".")[0] != str(torch.version.cuda).split(".")[0]:
            return (f"nvcc {have} ({cuda_home}) and torch's CUDA {torch.version.cuda} differ in the major "
                    "version; install a matching toolkit or set CUDA_HOME to one")
    return None


def _compile(torch, variant: str, root: Path, folder: Path, cuda_home: str | None, arch: str | None) -> dict:
    """Compile into `folder` with torch.utils.cpp_extension; returns the build facts. Raises on failure."""
    if cuda_home:
        os.environ.setdefault("CUDA_HOME", cuda_home)  # before cpp_extension reads it
    # its import warns "No CUDA runtime is found" on every machine without a GPU: not news here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    if variant == "cuda" and cpp_extension.CUDA_HOME != cuda_home:
        cpp_extension.CUDA_HOME = cuda_home  # imported earlier, from another toolkit guess
    linux = sys.platform.startswith("linux")
    cxx = list(_toolchain.CXX_FLAGS) + (["-fopenmp"] if linux else [])  # at::parallel_for on OpenMP
    info = {"cuda": variant == "cuda", "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cxx_flags": cxx, "openmp": linux, "cxx": _toolchain.compiler(),
            "cxx_version": _toolchain.compiler_version(_toolchain.compiler() or "")}
    defines = []
    if variant == "cuda":
        defines = ["-DSMALLDEPTHMASK_WITH_CUDA=1"]
        info.update(cuda_home=cuda_home, nvcc=_toolchain.cuda_version(cuda_home), nvcc_flags=_toolchain.NVCC_FLAGS,
                    arch_list=arch)
    _toolchain.write_if_changed(folder / "generated" / "smalldepthmask_build_info.h",
                                _toolchain.build_info_header(info))
    env_before = {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", "PATH")}
    try:
        if arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        try:  # the ninja wheel's binary, also when the venv's bin/ is not on the PATH
            import ninja
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
        cpp_extension.load(
            name="_C", sources=[str(p) for p in _toolchain.kernel_sources(root, variant == "cuda")],
            extra_cflags=cxx + defines, extra_cuda_cflags=_toolchain.NVCC_FLAGS + defines,
            extra_ldflags=["-fopenmp"] if linux else [],
            extra_include_paths=[str(root), str(folder / "generated")]
            + (_toolchain.pip_cuda_includes() if variant == "cuda" else []),
            build_directory=str(folder), with_cuda=variant == "cuda", is_python_module=False, verbose=False)
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # torch names a second build in one process _C_v1 (a fallback after a failed CUDA build): take the newest
    libs = sorted(folder.glob("_C*.so"), key=lambda p: p.stat().st_mtime_ns)
    if not libs:
        raise RuntimeError(f"the build left no library in {folder}")
    info["library"] = libs[-1].name
    return info


def _cached(folder: Path) -> tuple[Path, dict] | None:
    """(library, facts) of a finished build in `folder`, or None."""
    try:
        info = json.loads((folder / "build.json").read_text())
    except (OSError, ValueError):
        return None
    lib = folder / str(info.get("library", "_C.so"))
    return (lib, info) if lib.is_file() else None


def _first_error(text: str) -> str:
    """The compiler's own first error line in a build failure (not torch's wrapper or ninja's command lines)."""
    for line in text.splitlines():
        s = line.strip()
        low = s.lower()
        if s and not s.startswith("[") and "error building extension" not in low and (
                "error" in low or "fatal" in low):
            return s[:200]
    return text.strip().splitlines()[0][:200] if text.strip() else "no output"


def _build_once(torch, variant: str, root: Path, cuda_home: str | None) -> tuple[Path | None, str, dict | str]:
    """(library, how, facts) when this variant is (or now gets) built, else (None, "", reason)."""
    from filelock import FileLock, Timeout

    arch = _arch_list(torch) if variant == "cuda" else None
    folder = _folder(_key(torch, variant, root, cuda_home, arch))
    ok, failed = folder / "build.json", folder / "failed.json"
    if (hit := _cached(folder)) is not None:
        return hit[0], "cache", hit[1]
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / ".lock"))
    try:
        lock.acquire(timeout=LOCK_WAIT_NOTE_S)
    except Timeout:
        _say(f"waiting for another process that is compiling the kernels ({folder})")
        lock.acquire()
    try:
        if (hit := _cached(folder)) is not None:
            return hit[0], "cache", hit[1]
        if failed.is_file() and not _toolchain.flag("SMALLDEPTHMASK_REBUILD"):
            return None, "", json.loads(failed.read_text())["reason"] + " (remembered; SMALLDEPTHMASK_REBUILD=1 retries)"
        reason = _precheck(torch, variant, cuda_home)
        if reason is None:
            what = "CUDA + C++" if variant == "cuda" else "C++"
            _say(f"compiling the composite kernels once ({what}), ~1-2 min; cached in {folder}")
            t0 = time.perf_counter()
            try:
                info = _compile(torch, variant, root, folder, cuda_home, arch)
            except Exception as e:  # noqa: BLE001 - compiler errors, missing ninja, ...: remembered below
                log = folder / "build.log"
                log.write_text(f"{type(e).__name__}: {e}\n")
                reason = f"the build failed ({_first_error(str(e))}); log: {log}"
            else:
                info["seconds"] = round(time.perf_counter() - t0, 1)
                _write_json(ok, info)
                failed.unlink(missing_ok=True)
                return folder / info["library"], "compiled now", info
        _write_json(failed, {"reason": reason})
        return None, "", reason
    finally:
        lock.release()


def ensure() -> Built:
    """Build (or find in the cache) the best library this machine can compile. Never raises."""
    import torch

    out = Built()
    root = _toolchain.csrc_dir()
    if root is None:
        out.not_built.append("the kernel sources (csrc/) are not in this install")
        return out
    cuda_home = _toolchain.resolve_cuda_home()
    variants = ["cpu"]
    blocker = _cuda_blocker(torch, cuda_home)
    if blocker is None:
        variants.insert(0, "cuda")
    elif torch.version.cuda is not None:
        out.not_built.append(f"the CUDA part: {blocker}")
    for variant in variants:
        try:
            lib, how, facts = _build_once(torch, variant, root, cuda_home)
        except Exception as e:  # noqa: BLE001 - an unwritable cache, a broken lock: say so, fall back
            lib, how, facts = None, "", f"the build could not run ({type(e).__name__}: {e})"
        if lib is not None:
            out.path, out.variant, out.how, out.flags = lib, variant, how, facts
            return out
        out.not_built.append(f"the {'CUDA part' if variant == 'cuda' else 'C++ kernels'}: {facts}")
    return out
