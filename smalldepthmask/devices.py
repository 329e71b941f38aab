"""The one device resolver: --device flags (gen, depth, train, predict) -> a usable torch.device, or a
one-line UsageError."""

from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(name: str | torch.device, flag: str = "--device", allow_auto: bool = True) -> torch.device:
    """A torch.device for `name` ("auto" -> cuda when available, else cpu, where `allow_auto`),
    refusing unknown devices, CUDA that torch cannot use, and anything but cpu and cuda.
    `flag` names the option (or argument) in the messages."""
    if allow_auto and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        choices = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
        raise UsageError(f"{flag}: unknown device {name!r} (use {choices})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag} {name}: no usable CUDA device is available here (torch {torch.__version__})")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"{flag} {name}: only cpu and cuda are supported")
    return dev
