"""`python -m smalldepthmask.gen --shards OUT`: the generator's command line and its overlapping pipeline.

The main thread plans, composites and runs the teacher batch by batch (on CUDA: on a compute stream, with the
copy back on a copy stream into a pinned ring, see pipeline.py); a thread pool encodes; one writer thread
appends encoded batches to the current unit (shard) in order and commits it when full. Queues are bounded, so
memory stays flat however large the run. With a teacher or on CUDA the last batch of a shard is padded to the
batch size, so the teacher (cuDNN autotuning, torch.compile, a TensorRT profile) only ever sees one shape.
"""

from __future__ import annotations

import argparse
import math
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import __version__, codec, config, sink
from . import profile as profiling
from .encode import encode_samples, sample_key
from .errors import run_cli
from .generator import Generator, build_generator
from .pipeline import DeviceToHost, HostBatch, compute_stream, on_stream, quantize_depth_mm


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m smalldepthmask.gen",
                                description="Composite every foreground (and its mirror) over every background, "
                                            "k placements each, into (image, mask, depth) triplets.")
    config.add_arguments(p)
    from .depth import add_gen_arguments
    add_gen_arguments(p)
    return p


def log(msg: str) -> None:
    """Messages for the user go to stderr (stdout stays free for pipes)."""
    print(msg, file=sys.stderr)


class _Writer(threading.Thread):
    """Consumes (unit, future of encoded samples, is_last) in order; commits units; updates the manifest."""

    def __init__(self, cfg, out: Path, manifest: dict, q: queue.Queue, progress, prof=profiling.NO_PROFILE):
        super().__init__(daemon=True)
        self.cfg, self.out, self.manifest, self.q, self.progress = cfg, out, manifest, q, progress
        self.prof = prof
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.current = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                item = self.q.get()
                if item is None:
                    break
                unit, fut, last = item
                samples = fut.result()
                with self.prof.host("write"):
                    if self.current is None:
                        self.current = sink.open_unit(self.cfg.layout, self.out, unit)
                    for s in samples:
                        self.current.add(s)
                    if last:
                        self._commit(unit)
                self.progress.update(len(samples))
        except BaseException as e:  # reported by the main thread
            self.error = e
        finally:
            if self.current is not None:
                self.current.abort()
                self.current = None

    def _commit(self, unit: int) -> None:
        info = self.current.commit()
        self.current = None
        name = sink.unit_name(self.cfg.layout, unit)
        if self.cfg.layout == "shards":
            info["bytes"] = (self.out / name).stat().st_size
        self.manifest["units"][name] = info
        sink.write_json_atomic(self.out / sink.MANIFEST, self.manifest)


def _encode_batch(gen: Generator, idx, params, host: HostBatch, prof=profiling.NO_PROFILE) -> list[dict]:
    """Encode one batch that is on its way to the host (waits for its copies only) into WebDataset dicts."""
    try:
        host.wait()
        with prof.host("encode"):
            pngs = [codec.encode_depth_png_mm(d) for d in host.depth] if host.depth is not None else None
            return encode_samples([sample_key(int(i)) for i in idx], host.image, host.mask, gen.records(params),
                                  gen.cfg.jpeg_quality, pngs)
    finally:
        host.release()


def make_batch(gen: Generator, idx, to_host: DeviceToHost, pad: bool, prof=profiling.NO_PROFILE):
    """(params, HostBatch) of one batch: made on the current stream, depth quantized on the device."""
    batch = gen.batch(idx, prof, gen.cfg.batch_size if pad else None)
    depth = None
    if batch.depth is not None:
        with prof.device("teacher", gen.device):
            depth = quantize_depth_mm(batch.depth)  # [B, O, O] uint16 mm: crosses to the host as 2 bytes
    return batch.params, to_host(batch.image, batch.mask, depth, batch.n)


def _make_and_encode(gen: Generator, idx, to_host: DeviceToHost, prof) -> list[dict]:
    params, host = make_batch(gen, idx, to_host, False, prof)
    return _encode_batch(gen, idx, params, host, prof)


def composite_in_workers(gen: Generator) -> bool:
    """On the CPU without a teacher, each encoder thread also composites its batch (the kernel releases the
    GIL), so both heavy stages spread over the cores; otherwise the main thread feeds the device in order."""
    return gen.device.type == "cpu" and gen.teacher is None


def pads_batches(gen: Generator) -> bool:
    """Whether the last batch of a shard is padded to the batch size: wherever an engine sees the shape."""
    return gen.teacher is not None or gen.device.type == "cuda"


def produce(gen: Generator, units: list[int], q: queue.Queue, pool: ThreadPoolExecutor, writer: _Writer,
            prof=profiling.NO_PROFILE) -> None:
    """Make every pending unit batch by batch and hand the encode futures to the writer, in order."""
    cfg = gen.cfg
    in_workers, pad = composite_in_workers(gen), pads_batches(gen)
    to_host, stream = DeviceToHost(gen.device, prof=prof), compute_stream(gen.device)
    for unit in units:
        start, stop = unit * cfg.shard_size, min((unit + 1) * cfg.shard_size, gen.total)
        for b0 in range(start, stop, cfg.batch_size):
            b1 = min(b0 + cfg.batch_size, stop)
            idx = gen.indices(b0, b1)
            if in_workers:
                fut = pool.submit(_make_and_encode, gen, idx, to_host, prof)
            else:
                with on_stream(stream):
                    params, host = make_batch(gen, idx, to_host, pad, prof)
                fut = pool.submit(_encode_batch, gen, idx, params, host, prof)
            with prof.host("idle"):
                while True:  # bounded queue; wake up now and then to notice a failed writer
                    if writer.error is not None or not writer.is_alive():
                        return
                    try:
                        q.put((unit, fut, b1 == stop), timeout=0.5)
                        break
                    except queue.Full:
                        continue


def index_rows(gen: Generator) -> list[dict]:
    """The folder layout's index.csv rows, in output order (from the plan: no compositing)."""
    rows, has_depth = [], gen.teacher is not None
    for b0 in range(0, gen.total, 65536):
        idx = gen.indices(b0, min(b0 + 65536, gen.total))
        p = gen.params(idx)
        for i, g in enumerate(idx):
            key = sample_key(int(g))
            rows.append({"key": key, "image": f"images/{key}.jpg", "mask": f"masks/{key}.png",
                         "depth": f"depth/{key}.png" if has_depth else "", "meta": f"meta/{key}.json",
                         "bg": gen.inputs.bg[int(p.bg[i])].file, "fg": gen.inputs.fg[int(p.fg[i])].file,
                         "flip": int(p.flip[i]), "scale": float(p.scale[i]),
                         "cx": float(p.cx[i]), "cy": float(p.cy[i])})
    return rows


def deterministic_gpu(device: torch.device) -> dict:
    """The GPU determinism policy: cuDNN picks deterministic algorithms without autotuning, so a resume on the
    same GPU type, driver stack and versions makes the same depth bytes; what those bytes depend on is recorded
    in the run's identity, so a resume elsewhere is refused as a different run instead of mixing shards."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return {"name": torch.cuda.get_device_name(device), "capability": list(torch.cuda.get_device_capability(device)),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def run(cfg: config.GenConfig) -> int:
    gen = build_generator(cfg, cfg.device, log)  # every input is checked before anything is written
    inputs, teacher, device = gen.inputs, gen.teacher, gen.device
    if composite_in_workers(gen):  # the encoder threads composite: one kernel thread each
        torch.set_num_threads(1)
    identity = {"version": __version__, "config": cfg.output_config(), "composite": gen.backend,
                "inputs": {"fg": [f.record() for f in inputs.fg], "bg": [b.record() for b in inputs.bg]},
                "teacher": teacher.describe() if teacher is not None else None,
                "png_encoder": codec.encoder_version()}  # the PNG bytes depend on OpenCV's libpng and zlib
    if teacher is not None:  # a network's last bits may depend on its batch shape: one shape per run
        identity["teacher_batch"] = cfg.batch_size
        if device.type == "cuda":
            identity["gpu"] = deterministic_gpu(device)
    out = Path(cfg.out)
    manifest = sink.prepare_out(out, cfg.layout, identity, cfg.overwrite)
    n_units = math.ceil(gen.total / cfg.shard_size)
    components = ["jpg", "mask.png", "json"] + (["depth.png"] if teacher is not None else [])
    manifest.update({"seed": cfg.seed, "layout": cfg.layout, "population": gen.population, "total": gen.total,
                     "num_units": n_units, "components": components, "skipped": inputs.skipped,
                     "demo": inputs.demo, "depth_units": "millimetres (uint16 PNG)" if teacher else None})
    sink.write_json_atomic(out / sink.MANIFEST, manifest)
    done = sink.done_units(out, manifest)
    pending = [u for u in range(n_units) if sink.unit_name(cfg.layout, u) not in done]
    already = sum(manifest["units"][n]["count"] for n in done)
    if done and pending:
        log(f"resuming: {len(done)} of {n_units} units already complete in {out}")
    t0 = time.perf_counter()
    prof = profiling.Profile(enabled=cfg.profile)
    made = _run_pipeline(gen, out, manifest, pending, already, prof)
    secs = time.perf_counter() - t0
    if cfg.layout == "folders":
        sink.write_index_csv(out, index_rows(gen))
    manifest["complete"] = True
    sink.write_json_atomic(out / sink.MANIFEST, manifest)
    rate = made / secs if secs > 0 else 0.0
    if cfg.profile:
        summary = prof.summary()
        log(profiling.render(summary, made))
        profiling.write(summary, made, out / "profile.json")
    log(f"done: {gen.total} samples in {n_units} {'shards' if cfg.layout == 'shards' else 'chunks'} at {out} "
        f"({made} made now in {secs:.1f} s, {rate:.0f} samples/s, composite={gen.backend}, device={device})")
    return 0


def _run_pipeline(gen: Generator, out: Path, manifest: dict, pending: list[int], already: int,
                  prof=profiling.NO_PROFILE) -> int:
    from tqdm import tqdm
    cfg = gen.cfg
    todo = gen.total - already
    progress = tqdm(total=gen.total, initial=already, unit="sample", disable=cfg.quiet or not pending,
                    dynamic_ncols=True, smoothing=0.1)
    q: queue.Queue = queue.Queue(maxsize=2 * cfg.workers + 2)
    writer = _Writer(cfg, out, manifest, q, progress, prof)
    pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="encode")
    writer.start()
    try:
        produce(gen, pending, q, pool, writer, prof)
        while writer.is_alive() and writer.error is None:
            try:
                q.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        writer.join()
    except BaseException:
        writer.stop.set()
        _drain(q)
        q.put(None)
        writer.join()
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        raise
    pool.shutdown(wait=True)
    progress.close()
    if writer.error is not None:
        raise writer.error
    return todo


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config.from_args(args)
    try:
        return run(cfg)
    except KeyboardInterrupt:
        print(f"interrupted: complete units are kept in {cfg.out}; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="smalldepthmask.gen"))
