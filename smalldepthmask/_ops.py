"""The compiled composite op (csrc/), as `torch.ops.smalldepthmask.composite`, and a thin wrapper.

Importing this module never fails: when the extension is not built (or does not load), `available()` says
why and `composite()` raises RuntimeError. The math is the one in composite.py's docstring.
"""

from __future__ import annotations

import json

import torch

_C = None
_LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F811 - loading the library registers torch.ops.smalldepthmask.*
except ImportError as e:
    _C = None
    if "cannot import name '_C'" in str(e):  # no smalldepthmask/_C*.so
        _LOAD_ERROR = "the compiled extension smalldepthmask._C is not built"
    else:  # e.g. undefined symbols: built against another torch
        _LOAD_ERROR = f"the compiled extension smalldepthmask._C does not load ({type(e).__name__}: {e})"
except Exception as e:  # noqa: BLE001 - OSError and anything else a broken build may raise
    _C = None
    _LOAD_ERROR = f"the compiled extension smalldepthmask._C does not load ({type(e).__name__}: {e})"

OP_NAME = "smalldepthmask::composite"


def _has_kernel(key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, key))
    except Exception:  # noqa: BLE001 - private API; fall back to the build flag
        return key == "CPU" or (key == "CUDA" and bool(getattr(_C, "WITH_CUDA", 0)))


def built() -> bool:
    """Whether the compiled extension loaded."""
    return _C is not None


def kernels() -> list[str]:
    """The devices the op has kernels for, e.g. ['cpu', 'cuda']; [] when not built."""
    if _C is None:
        return []
    return [name for name, key in (("cpu", "CPU"), ("cuda", "CUDA")) if _has_kernel(key)]


def build_flags() -> dict:
    """The build facts setup.py compiled in (torch version, CUDA, arch list, compiler flags); {} when not built."""
    if _C is None:
        return {}
    try:
        return json.loads(getattr(_C, "BUILD_FLAGS", "{}"))
    except ValueError:
        return {"raw": getattr(_C, "BUILD_FLAGS", "")}


def available() -> tuple[bool, str]:
    """(True, "cpu+cuda kernels") / (True, "cpu kernels"), or (False, reason). Never raises."""
    try:
        if _C is None:
            return False, str(_LOAD_ERROR)
        ks = kernels()
        if not ks:
            return False, "the compiled extension loaded but registered no composite kernel"
        return True, "+".join(ks) + " kernels"
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
    if _C is None:
        raise RuntimeError(available()[1])
    return torch.ops.smalldepthmask.composite(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams,
                                              int(compose), int(out), int(mask_count), bool(want_compose))


def axis_taps(pos0: torch.Tensor, ratio: torch.Tensor, size: torch.Tensor, flip: torch.Tensor,
              n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled tap math (test hook): same arguments and results as composite.axis_taps."""
    if _C is None:
        raise RuntimeError(available()[1])
    return torch.ops.smalldepthmask.axis_taps(pos0, ratio, size, flip, int(n))


if _C is not None:
    @torch.library.register_fake("smalldepthmask::axis_taps")
    def _axis_taps_fake(pos0, ratio, size, flip, n):
        B = pos0.shape[0]
        return pos0.new_empty((B, n, 4), dtype=torch.int64), pos0.new_empty((B, n, 4), dtype=torch.int64)

    @torch.library.register_fake(OP_NAME)
    def _composite_fake(bg_flat, bg_table, fg_flat, fg_table, iparams, fparams, compose, out, mask_count,
                        want_compose):
        torch._check(compose % out == 0, lambda: f"composite: compose = {compose} must be a multiple of out = {out}")
        B = iparams.shape[0]
        image = iparams.new_empty((B, out, out, 3), dtype=torch.uint8)
        mask = iparams.new_empty((B, out, out), dtype=torch.uint8)
        comp = iparams.new_empty((B if want_compose else 0, 3, compose, compose), dtype=torch.float32)
        return image, mask, comp
