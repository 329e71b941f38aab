"""`python -m smalldepthmask.info` (also `smalldepthmask info`): which backends this machine has.

Prints the torch version, whether CUDA is available, which compiled composite library is loaded (an in-tree
ahead-of-time build or the user cache, with its CPU / CUDA kernels and build flags), the cache folder, why any
part was not built, which composite backend `auto` picks per device, and whether the optional packages import
(with versions). Never fails for a missing package. Asking may compile the kernels (once, ~1-2 min) when the
cache has no build for this machine yet.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys

OPTIONAL = ("webdataset", "simplejpeg", "kornia", "onnxruntime", "tensorrt", "nvidia.dali", "onnx", "h5py", "safetensors",
            "torchvision")


def _package(name: str) -> dict:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising anything else
        return {"available": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    return {"available": True, "version": str(getattr(mod, "__version__", "?"))}


def collect() -> dict:
    """Everything `info` prints, as a dict (also used by the benchmarks)."""
    info: dict = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        info["torch"] = {"available": False, "reason": str(e)}
        return info
    cuda = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        cuda["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads()}
    info["cuda"] = cuda
    try:
        from . import _ops
        ok, reason = _ops.available()
        ext = {"built": _ops.built(), "usable": ok, "status": reason, "kernels": _ops.kernels(),
               "build_flags": _ops.build_flags(), "load": _ops.load_status(),
               "diagnostic_ops": _ops.diagnostic_ops() if _ops.built() else []}
        ext["supports"] = {d: list(_ops.supports_device(torch.device(d))) for d in ("cpu", "cuda")}
    except Exception as e:  # noqa: BLE001
        ext = {"built": False, "usable": False, "status": f"{type(e).__name__}: {e}"}
    info["extension"] = ext
    try:
        from .composite import resolve_backend
        info["composite_auto"] = {d: resolve_backend("auto", d) for d in ["cpu"] + (["cuda"] if cuda["available"]
                                                                                  else [])}
    except Exception as e:  # noqa: BLE001
        info["composite_auto"] = {"error": str(e)}
    info["packages"] = {name: _package(name) for name in OPTIONAL}
    return info


def render(info: dict) -> str:
    lines = [f"python        {info['python']} ({info['platform']})"]
    t = info.get("torch", {})
    if "version" not in t:
        lines.append(f"torch         not importable ({t.get('reason')})")
        return "\n".join(lines)
    lines.append(f"torch         {t['version']} ({t['threads']} CPU threads)")
    c = info["cuda"]
    dev = ", ".join(c.get("devices", [])) or "no device"
    lines.append(f"CUDA          {'available' if c['available'] else 'not available'} "
                 f"(torch built with CUDA {c['torch_cuda'] or 'none'}; {dev})")
    e = info["extension"]
    load = e.get("load", {})
    if e.get("built"):
        ks = "+".join(e.get("kernels", [])) or "none"
        lines.append(f"extension     loaded: {ks} kernels; {load.get('source')}: {load.get('path')}")
        flags = e.get("build_flags", {})
        if flags:
            parts = [f"torch {flags.get('torch')}", f"CUDA build {'yes' if flags.get('cuda') else 'no'}"]
            if flags.get("cuda"):
                parts += [f"nvcc {flags.get('nvcc')}", f"arch {flags.get('arch_list')}",
                          f"nvcc flags {' '.join(flags.get('nvcc_flags', []))}"]
            parts.append(f"cxx flags {' '.join(flags.get('cxx_flags', []))}")
            lines.append("  build       " + "; ".join(parts))
        for d, (ok, why) in e.get("supports", {}).items():
            lines.append(f"  on {d:<8} {'yes' if ok else 'no'} ({why})")
        if e.get("diagnostic_ops"):
            lines.append("  diagnostic  " + ", ".join(e["diagnostic_ops"])
                         + " (test entry points: the CUDA kernel's body run on the host, host value checks)")
    else:
        lines.append(f"extension     not loaded ({e.get('status')})")
    for why in load.get("not_built", []):
        lines.append(f"  not built   {why}")
    if load.get("cache_dir"):
        lines.append(f"  cache       {load['cache_dir']} (SMALLDEPTHMASK_EXT_CACHE moves it)")
    auto = info.get("composite_auto", {})
    lines.append("composite     auto -> " + ", ".join(f"{d}: {b}" for d, b in auto.items()))
    lines.append("packages")
    for name, p in info["packages"].items():
        state = p["version"] if p["available"] else f"no ({p['reason']})"
        lines.append(f"  {name:<12}{state}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="smalldepthmask info", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the same facts as JSON")
    args = ap.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
