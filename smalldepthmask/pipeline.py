"""The per-process pipeline's device plumbing: one batch shape, depth quantized on the device,
and the copy back to the host on a copy stream into a pinned ring, with one CUDA event per batch.

On CUDA the generator's work runs on a compute stream (`compute_stream`; composite() uploads the params from
pinned memory, non_blocking); `DeviceToHost` makes its copy stream
wait for that work, copies image (uint8), mask (uint8) and depth (uint16 millimetres) into a pinned ring slot
with non_blocking copies and records an event. An encoder thread waits on that event alone (never a
device-wide sync), encodes, and releases the slot; the producer blocks on a free slot (back-pressure, counted as
idle). On the CPU the same calls hand out numpy views of the batch with no-op waits.
"""

from __future__ import annotations

import queue
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .depth.png import MM_PER_METRE, PNG16_MAX
from .profile import NO_PROFILE, Profile

RING_DEPTH = 4


def quantize_depth_mm(
    depth: torch.Tensor,  # [B, 1, O, O] float metres, any device
) -> torch.Tensor:  # [B, O, O] uint16 millimetres, 0 where not finite: exactly depth/png.py's depth_to_png16
    mm = torch.round(depth[:, 0].to(torch.float32) * MM_PER_METRE)  # float32 product, half to even, as np.rint
    mm = torch.where(torch.isfinite(mm), mm, torch.zeros_like(mm))
    return mm.clamp_(0, PNG16_MAX).to(torch.uint16)


def pad_rows(
    iparams: np.ndarray,  # [n, 5] int64
    fparams: np.ndarray,  # [n, 4] float64
    rows: int | None,
) -> tuple[np.ndarray, np.ndarray]:  # [max(n, rows), 5], [max(n, rows), 4]
    """Repeat the last sample up to `rows` rows, so every batch has one shape (pad rows are dropped later)."""
    n = len(iparams)
    if rows is None or n >= rows:
        return iparams, fparams
    return (np.concatenate([iparams, np.repeat(iparams[-1:], rows - n, 0)]),
            np.concatenate([fparams, np.repeat(fparams[-1:], rows - n, 0)]))


def compute_stream(device: torch.device):
    """The stream the generator's device work runs on (after the work that made the bank and the teacher)."""
    if device.type != "cuda":
        return None
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    return s


@contextmanager
def on_stream(stream):
    with torch.cuda.stream(stream) if stream is not None else nullcontext():
        yield


def _noop() -> None:
    return None


@dataclass
class HostBatch:
    image: np.ndarray  # [n, O, O, 3] uint8
    mask: np.ndarray  # [n, O, O] uint8
    depth: np.ndarray | None  # [n, O, O] uint16 millimetres
    wait: Callable[[], None] = _noop  # blocks until this batch's copies landed (its event only)
    release: Callable[[], None] = _noop  # hands the ring slot back (after the encoder is done with it)


class DeviceToHost:
    """Brings batches to the host: uint8/uint16 only; on CUDA through a copy stream and a pinned ring."""

    def __init__(self, device: torch.device, ring_depth: int = RING_DEPTH, prof: Profile = NO_PROFILE):
        self.device, self.prof = device, prof
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.free: queue.Queue = queue.Queue()
        for slot in range(ring_depth):
            self.free.put(slot)
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}

    def _slot_buffers(self, slot: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bufs = self.buffers.get(slot)
        if bufs is None or any(bufs[k].shape != t.shape for k, t in tensors.items()):
            bufs = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for k, t in tensors.items()}
            self.buffers[slot] = bufs
        return bufs

    def __call__(
        self,
        image: torch.Tensor,  # [B, O, O, 3] uint8
        mask: torch.Tensor,  # [B, O, O] uint8
        depth: torch.Tensor | None,  # [B, O, O] uint16 millimetres
        n: int,  # rows that are real samples (the rest is padding)
    ) -> HostBatch:
        tensors = {"image": image, "mask": mask} | ({"depth": depth} if depth is not None else {})
        if not self.cuda:
            host = {k: t[:n].numpy() for k, t in tensors.items()}
            return HostBatch(host["image"], host["mask"], host.get("depth"))
        with self.prof.host("idle"):
            slot = self.free.get()  # waits until an encoder released it
        bufs = self._slot_buffers(slot, tensors)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream), self.prof.device("device-to-host", self.device):
            for k, t in tensors.items():
                bufs[k].copy_(t, non_blocking=True)
                t.record_stream(self.stream)  # made on the compute stream, read here: keep its memory
            done = torch.cuda.Event()
            done.record(self.stream)
        host = {k: b[:n].numpy() for k, b in bufs.items()}
        return HostBatch(host["image"], host["mask"], host.get("depth"), wait=done.synchronize,
                         release=lambda: self.free.put(slot))
