"""The compiled composite op (csrc/), as `torch.ops.smalldepthmask.composite`, and a thin wrapper.

Importing this module never fails and compiles nothing. The library is loaded on first use (`load()`, which
`available()` and every op wrapper call): an in-tree ahead-of-time build (`smalldepthmask/_C*.so`, from
`SMALLDEPTHMASK_BUILD_EXT=1 pip install ...`) wins; otherwise _build.py compiles the kernels once into the
user cache (CUDA + C++ where it can, else C++ only) and loads that. When nothing loads, `available()` says
why and the wrappers raise RuntimeError; with SMALLDEPTHMASK_REQUIRE_EXT=1 every fallback (no library, or a
CUDA build of torch without the CUDA kernels) raises instead. SMALLDEPTHMASK_NO_EXT=1 loads nothing.
The math is the one in composite.py's docstring.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading

import torch

from ._toolchain import flag
from .errors import UsageError

OP_NAME = "smalldepthmask::composite"
_C = None  # the loaded library's module (WITH_CUDA, BUILD_FLAGS), once load() ran
_STATUS: dict | None = None  # what load() found: {"source", "path", "variant", "error", "not_built", ...}
_LOCK = threading.Lock()


class ExtensionRequiredError(UsageError):
    """SMALLDEPTHMASK_REQUIRE_EXT=1 and the kernels did not (all) build (one line, exit 2 from the CLIs)."""


def _say(msg: str) -> None:
    print(f"smalldepthmask: {msg}", file=sys.stderr, flush=True)


def _import_library(path) -> object:
    """Import a built `_C` library file as a module (its import registers torch.ops.smalldepthmask.*)."""
    spec = importlib.util.spec_from_file_location("smalldepthmask._C", str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_in_tree() -> tuple[object | None, str | None]:
    """(module, None) for an in-tree ahead-of-time build, (None, None) when there is none, (None, why)."""
    try:
        from . import _C as mod  # noqa: F811
    except ImportError as e:
        if "cannot import name '_C'" in str(e):  # no smalldepthmask/_C*.so
            return None, None
        return None, f"the in-tree build smalldepthmask/_C does not load ({type(e).__name__}: {e})"
    except Exception as e:  # noqa: BLE001 - OSError and anything else a broken build may raise
        return None, f"the in-tree build smalldepthmask/_C does not load ({type(e).__name__}: {e})"
    return mod, None


def _find() -> dict:
    """Load the best library there is; returns the status dict. Never raises."""
    global _C
    if flag("SMALLDEPTHMASK_NO_EXT"):
        return {"source": None, "error": "SMALLDEPTHMASK_NO_EXT is set: the compiled kernels are not used",
                "not_built": []}
    mod, why = _load_in_tree()
    if mod is not None:
        _C = mod
        return {"source": "in-tree build", "path": getattr(mod, "__file__", None), "not_built": []}
    from . import _build

    status = {"cache_dir": str(_build.ext_cache_root()), "not_built": [why] if why else []}
    built = _build.ensure()
    status["not_built"] += built.not_built
    if built.path is None:
        status.update(source=None, error="the compiled kernels are not available: " + "; ".join(status["not_built"]))
        return status
    try:
        _C = _import_library(built.path)
    except Exception as e:  # noqa: BLE001
        status.update(source=None, error=f"the compiled kernels in {built.path} do not load ({type(e).__name__}: {e})")
        return status
    status.update(source="user cache" if built.how == "cache" else "compiled now (user cache)", path=str(built.path),
                  variant=built.variant)
    return status


def _warn(status: dict) -> None:
    """One line per fallback; an error instead under SMALLDEPTHMASK_REQUIRE_EXT=1."""
    if status.get("error") and "SMALLDEPTHMASK_NO_EXT" in status["error"]:
        return
    lines = []
    if status.get("error"):
        lines.append(f"warning: {status['error']}; using the plain-torch reference composite (slow)")
    elif status.get("not_built"):
        lines.append("warning: built without " + "; ".join(status["not_built"]))
    if not lines:
        return
    if flag("SMALLDEPTHMASK_REQUIRE_EXT"):
        raise ExtensionRequiredError("SMALLDEPTHMASK_REQUIRE_EXT=1: " + lines[0].removeprefix("warning: "))
    for line in lines:
        _say(line)


def load() -> dict:
    """Load (building it once if needed) the compiled library; returns what was found (see info).

    Raises ExtensionRequiredError only under SMALLDEPTHMASK_REQUIRE_EXT=1."""
    global _STATUS
    with _LOCK:
        if _STATUS is None:
            _STATUS = _find()
            if _C is not None:
                _register_fakes()
            _warn(_STATUS)
        elif flag("SMALLDEPTHMASK_REQUIRE_EXT"):
            _warn(_STATUS)
    return _STATUS


def load_status() -> dict:
    """What load() found, loading first if it has not run."""
    return dict(load())


DIAGNOSTIC_OPS = ("composite_device_body", "check_composite_values")  # CPU only; not user backends


def diagnostic_ops() -> list[str]:
    """The test and diagnostic ops the loaded library has (CPU kernels), e.g. ['composite_device_body', ...]:
    composite_device_body is the CUDA kernel's body walked on the host (for `info`); [] when not built."""
    load()
    if _C is None:
        return []
    return [n for n in DIAGNOSTIC_OPS if _has_kernel("CPU", f"smalldepthmask::{n}")]


def _has_kernel(key: str, op: str = OP_NAME) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, key))
    except Exception:  # noqa: BLE001 - private API; fall back to the build flag
        return key == "CPU" or (key == "CUDA" and bool(getattr(_C, "WITH_CUDA", 0)))


def built() -> bool:
    """Whether the compiled extension loaded."""
    load()
    return _C is not None


def kernels() -> list[str]:
    """The devices the op has kernels for, e.g. ['cpu', 'cuda']; [] when not built."""
    load()
    if _C is None:
        return []
    return [name for name, key in (("cpu", "CPU"), ("cuda", "CUDA")) if _has_kernel(key)]


def build_flags() -> dict:
    """The build facts compiled in (torch version, CUDA, arch list, compiler flags); {} when not built."""
    load()
    if _C is None:
        return {}
    try:
        return json.loads(getattr(_C, "BUILD_FLAGS", "{}"))
    except ValueError:
        return {"raw": getattr(_C, "BUILD_FLAGS", "")}


def available() -> tuple[bool, str]:
    """(True, "cpu+cuda kernels") / (True, "cpu kernels"), or (False, reason).

    Never raises, except ExtensionRequiredError under SMALLDEPTHMASK_REQUIRE_EXT=1."""
    try:
        status = load()
        if _C is None:
            return False, str(status.get("error"))
        ks = kernels()
        if not ks:
            return False, "the compiled extension loaded but registered no composite kernel"
        return True, "+".join(ks) + " kernels"
    except ExtensionRequiredError:
        raise
    except Exception as e:  # noqa: BLE001
        return False, f"the compiled extension is unusable ({type(e).__name__}: {e})"


def supports_device(device: torch.device | str) -> tuple[bool, str]:
    """Whether the op can run on `device`, e.g. a CPU-only build asked for cuda -> (False, "built without CUDA")."""
    ok, reason = available()
    if not ok:
        return False, reason
    dev = torch.device(device)
    if dev.type == "cpu":
        return (True, "cpu kernel") if "cpu" in kernels() else (False, "built without the CPU kernel")
    if dev.type == "cuda":
        if "cuda" not in kernels():
            return False, "built without CUDA"
        if not torch.cuda.is_available():
            return False, "CUDA kernel built but no CUDA device is available"
        return True, "cuda kernel"
    return False, f"no composite kernel for device type {dev.type!r}"


def composite(bg_flat: torch.Tensor, bg_table: torch.Tensor, fg_flat: torch.Tensor, fg_table: torch.Tensor,
              iparams: torch.Tensor, fparams: torch.Tensor, compose: int, out: int, mask_count: int,
              want_compose: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused composite pass over a batch. Returns (image [B, O, O, 3] uint8, mask [B, O, O] uint8 in {0, 1},
    compose [B, 3, S, S] float32 in [0, 1], or an empty [0, 3, S, S] when want_compose is False)."""
    if _C is None and not available()[0]:
        raise RuntimeError(available()[1])
    return torch.ops.smalldepthmask.composite(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams,
                                              int(compose), int(out), int(mask_count), bool(want_compose))


def composite_device_body(bg_flat: torch.Tensor, bg_table: torch.Tensor, fg_flat: torch.Tensor,
                          fg_table: torch.Tensor, iparams: torch.Tensor, fparams: torch.Tensor, compose: int, out: int,
                          mask_count: int, want_compose: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CUDA kernel's body (csrc/composite_pixel.h) run on the host, walking the GPU grid (CPU tensors only).

    A test and diagnostic entry point, not a user backend: same arguments and results as composite()."""
    if _C is None and not available()[0]:
        raise RuntimeError(available()[1])
    return torch.ops.smalldepthmask.composite_device_body(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams,
                                                          int(compose), int(out), int(mask_count),
                                                          bool(want_compose))


def check_composite_values(bg_table: torch.Tensor, fg_table: torch.Tensor, iparams: torch.Tensor,
                           fparams: torch.Tensor, bg_numel: int, fg_numel: int, compose: int,
                           check_tables: bool = True) -> None:
    """The composite op's value checks on CPU tensors (RuntimeError naming the argument and value): table extents
    against the flat sizes (when check_tables), ids, crop windows, parameters. bg_table [m, 3], fg_table [E, 3],
    iparams [B, 5] int64; fparams [B, 4] float64. The CUDA op checks shapes only: run this before the upload."""
    if _C is None and not available()[0]:
        raise RuntimeError(available()[1])
    torch.ops.smalldepthmask.check_composite_values(bg_table, fg_table, iparams, fparams, int(bg_numel),
                                                    int(fg_numel), int(compose), bool(check_tables))


def axis_taps(pos0: torch.Tensor, ratio: torch.Tensor, size: torch.Tensor, flip: torch.Tensor,
              n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled tap math (test hook): same arguments and results as composite.axis_taps."""
    if _C is None and not available()[0]:
        raise RuntimeError(available()[1])
    return torch.ops.smalldepthmask.axis_taps(pos0, ratio, size, flip, int(n))


def _register_fakes() -> None:
    """Fake (meta) kernels for torch.compile / opcheck, registered once the library is loaded."""
    @torch.library.register_fake("smalldepthmask::axis_taps")
    def _axis_taps_fake(pos0, ratio, size, flip, n):
        B = pos0.shape[0]
        return pos0.new_empty((B, n, 4), dtype=torch.int64), pos0.new_empty((B, n, 4), dtype=torch.int64)

    @torch.library.register_fake("smalldepthmask::check_composite_values")
    def _check_values_fake(bg_table, fg_table, iparams, fparams, bg_numel, fg_numel, compose, check_tables):
        return None

    @torch.library.register_fake("smalldepthmask::composite_device_body")
    @torch.library.register_fake(OP_NAME)
    def _composite_fake(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out, mask_count,
                        want_compose):
        torch._check(compose % out == 0, lambda: f"composite: compose = {compose} must be a multiple of out = {out}")
        B = iparams.shape[0]
        image = iparams.new_empty((B, out, out, 3), dtype=torch.uint8)
        mask = iparams.new_empty((B, out, out), dtype=torch.uint8)
        comp = iparams.new_empty((B if want_compose else 0, 3, compose, compose), dtype=torch.float32)
        return image, mask, comp
