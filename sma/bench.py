"""Dense vs pruned speed and memory, measured in one process (``sma bench`` and :func:`benchmark`).

Both models (or the dense model and several pruned ones) see the same random token batch (fixed ``seq_len``
and ``batch_size``, no padding). Timed forwards alternate dense/pruned (the order flips every repeat) after
warm-up; medians are reported.
Peak memory is measured apart from timing, per model:

- CPU: the increase of the process RSS over its value just before one forward pass, sampled every
  0.25 ms by a background thread, after ``gc.collect()`` and glibc ``malloc_trim(0)`` so freed heap pages
  do not hide the new peak. It covers activations and allocator overhead, not the (already resident)
  weights; ``tracemalloc`` would miss torch's allocations entirely.
- CUDA: ``torch.cuda.max_memory_allocated()`` during the forward minus the allocation before it.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import statistics
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import torch
from torch import nn

from sma.config.choices import CPU_RUNTIMES, CpuRuntime
from sma.prune import (
    encoder_sparsity,
    unwrap,
)
from sma.prune.units import encoder_stack
from sma.quantize import state_bytes


@dataclass(frozen=True)
class ModelRun:
    """One model's measurements in one benchmark."""

    params: int
    encoder_params: int
    weight_bytes: int
    encoder_weight_bytes: int
    encoder_sparsity: float
    latencies_s: tuple[float, ...]
    cpu_times_s: tuple[float, ...]
    """CPU seconds the process used per timed forward (all threads): less sensitive than wall time to
    other processes competing for the cores, but inflated by OpenMP spin-waiting."""
    peak_memory_bytes: int
    batch_size: int

    @property
    def latency_s(self) -> float:
        return statistics.median(self.latencies_s)

    @property
    def latency_min_s(self) -> float:
        """Fastest repeat: less sensitive than the median to other processes on a shared machine."""
        return min(self.latencies_s)

    @property
    def docs_per_s(self) -> float:
        return self.batch_size / self.latency_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency_s": self.latency_s, "latency_min_s": self.latency_min_s,
                "docs_per_s": self.docs_per_s}


@dataclass(frozen=True)
class BenchResult:
    device: str
    dtype: str
    seq_len: int
    batch_size: int
    threads: int
    repeats: int
    warmup: int
    peak_memory_kind: str
    dense: ModelRun
    pruned: ModelRun

    @property
    def speedup(self) -> float:
        return self.dense.latency_s / self.pruned.latency_s

    @property
    def speedup_min(self) -> float:
        return self.dense.latency_min_s / self.pruned.latency_min_s

    @property
    def speedup_cpu(self) -> float:
        """Ratio of median CPU seconds per batch (see :attr:`ModelRun.cpu_times_s`)."""
        return statistics.median(self.dense.cpu_times_s) / statistics.median(self.pruned.cpu_times_s)

    @property
    def speedup_paired(self) -> float:
        """Median of per-repeat ratios; the two runs of a repeat are adjacent in time, so slow drifts in the
        machine's load cancel out."""
        return statistics.median(d / p for d, p in zip(self.dense.latencies_s, self.pruned.latencies_s,
                                                       strict=True))

    @property
    def encoder_weight_ratio(self) -> float:
        return self.pruned.encoder_weight_bytes / self.dense.encoder_weight_bytes

    @property
    def weight_ratio(self) -> float:
        return self.pruned.weight_bytes / self.dense.weight_bytes

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("dense", "pruned")}
        return {**out, "dense": self.dense.to_dict(), "pruned": self.pruned.to_dict(), "speedup": self.speedup,
                "speedup_min": self.speedup_min, "speedup_paired": self.speedup_paired,
                "speedup_cpu": self.speedup_cpu,
                "encoder_weight_ratio": self.encoder_weight_ratio,
                "weight_ratio": self.weight_ratio}


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_rss_delta(fn: Callable[[], object], interval_s: float = 0.00025) -> int:
    proc = psutil.Process()
    gc.collect()
    _malloc_trim()
    base = peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak, proc.memory_info().rss) - base


def _peak_cuda(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _bytes(params: Sequence[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _time_interleaved(forwards: list[Callable[[], object]], *, repeats: int, device: torch.device | None,
                      ) -> tuple[list[list[float]], list[list[float]]]:
    """Wall and CPU seconds of each forward per repeat; the order flips every repeat (``device``: CUDA to sync)."""
    times: list[list[float]] = [[] for _ in forwards]
    cpu: list[list[float]] = [[] for _ in forwards]
    for r in range(repeats):
        for i in (range(len(forwards)) if r % 2 == 0 else reversed(range(len(forwards)))):
            if device is not None:
                torch.cuda.synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            forwards[i]()
            if device is not None:
                torch.cuda.synchronize(device)
            times[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    return times, cpu


def _runtimes(models: list[nn.Module], *, runtime: CpuRuntime, device: torch.device, dtype: torch.dtype,
              threads: int, int8_keep_float: Sequence[Collection[str]], int8_activations: str,
              int8_engine: str, onnx_sessions: Sequence[Any] | None = None) -> tuple[list[nn.Module], list[Any]]:
    """What is timed: the dense model (``models[0]``) as it is, each pruned one in the CPU ``runtime``: as an
    int8 copy with ``int8`` (its ``int8_keep_float`` names left in float32, inputs in the ``int8_activations``
    range, weights packed by PyTorch's ``int8_engine``); with ``onnx`` as its ONNX Runtime session (timed in its place; ``None`` for the dense model),
    int8-quantized by ONNX Runtime with ``int8`` too, or its entry of ``onnx_sessions`` where the caller has
    built it already; with ``bfloat16`` as a bfloat16 copy."""
    if runtime.bfloat16 and (runtime.int8 or runtime.onnx):
        raise ValueError("bfloat16 is a runtime of its own, not one of int8 or onnx")
    if any(runtime) and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError(f"{_label(runtime)} is timed on the CPU against float32, not {device.type} {dtype}")
    if onnx_sessions is not None and (not runtime.onnx or len(onnx_sessions) != len(models) - 1):
        raise ValueError(f"onnx_sessions: one ONNX Runtime session per pruned model with onnx, got "
                         f"{len(onnx_sessions)} for {len(models) - 1} (onnx={runtime.onnx})")
    timed = list(models)
    sessions: list[Any] = [None] * len(models)
    for i, keep in enumerate(int8_keep_float, start=1):
        if runtime.onnx and onnx_sessions is not None:
            sessions[i] = onnx_sessions[i - 1]
        elif runtime.onnx:
            from sma.export import onnx_session

            sessions[i] = onnx_session(models[i], threads=threads, int8=runtime.int8, keep_float=keep)
        elif runtime.int8:
            from sma.quantize import quantize_int8

            timed[i] = quantize_int8(models[i], keep_float=keep, activations=int8_activations, engine=int8_engine)
        elif runtime.bfloat16:
            timed[i] = copy.deepcopy(models[i]).to(torch.bfloat16)
    return timed, sessions


def _label(runtime: CpuRuntime) -> str:
    """The ``bench.dtypes`` name of a CPU runtime (:data:`sma.config.choices.CPU_RUNTIMES`)."""
    return next(name for name, flags in CPU_RUNTIMES.items() if flags == runtime)


def _model_run(model: nn.Module, timed: nn.Module, *, latencies: list[float], cpu: list[float], peaks: list[int],
               batch_size: int) -> ModelRun:
    """One model's row: counts and sparsity of ``model``; weight bytes of ``timed`` as stored when it is a
    converted copy (int8)."""
    if timed is not model:
        weights = (state_bytes(timed), state_bytes(encoder_stack(timed)))
    else:
        weights = (_bytes(list(model.parameters())), _bytes(list(encoder_stack(model).parameters())))
    return ModelRun(
        params=sum(p.numel() for p in model.parameters()),
        encoder_params=sum(p.numel() for p in encoder_stack(model).parameters()),
        weight_bytes=weights[0], encoder_weight_bytes=weights[1], encoder_sparsity=encoder_sparsity(model).sparsity,
        latencies_s=tuple(latencies), cpu_times_s=tuple(cpu), peak_memory_bytes=int(statistics.median(peaks)),
        batch_size=batch_size)


def benchmark(dense: nn.Module, pruned: nn.Module, *, int8_keep_float: Collection[str] = (),
              **kwargs: Any) -> BenchResult:
    """Time ``dense`` and ``pruned`` side by side: :func:`benchmark_side_by_side` with one pruned model."""
    return benchmark_side_by_side(dense, [pruned], int8_keep_float=[int8_keep_float], **kwargs)[0]


def benchmark_side_by_side(dense: nn.Module, pruned: Sequence[nn.Module], *, seq_len: int = 256,
                           batch_size: int = 32, repeats: int = 10, warmup: int = 2, threads: int = 2,
                           dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                           memory_repeats: int = 3, seed: int = 0, int8: bool = False, onnx: bool = False,
                           bfloat16: bool = False, int8_keep_float: Sequence[Collection[str]] | None = None,
                           int8_activations: str = "auto", int8_engine: str = "auto",
                           onnx_sessions: Sequence[Any] | None = None) -> list[BenchResult]:
    """Time ``dense`` and every model of ``pruned`` (HF encoders, BiEncoders or DDP) on one batch, interleaved
    in one loop (dense, first pruned, second pruned, ..., then the reverse order); medians. One result per
    pruned model, all against the same dense run, so they compare with each other too (e.g. the shapes of
    two plans of the same sparsity).

    Models already on ``device`` in ``dtype`` are used as they are; otherwise a converted copy is made
    (the caller's models are never changed). ``threads`` sets torch's intra-op threads for the run. With
    ``int8`` (CPU, float32) each pruned model is timed with int8 linear layers (:mod:`sma.quantize`; those
    named in its entry of ``int8_keep_float`` stay float32; inputs quantized to the ``int8_activations`` range of
    :func:`sma.quantize.quantize_int8`, weights packed by PyTorch's ``int8_engine``), its weight bytes as stored; its parameter counts
    and sparsity are those of the float model. With ``onnx`` (CPU, float32) each pruned model runs in ONNX
    Runtime (exported by :func:`sma.export.onnx_session`, or the caller's sessions of them in ``onnx_sessions``,
    already built with the same ``threads``) against the dense model in PyTorch; with ``onnx`` and ``int8`` that
    ONNX model is int8-quantized by ONNX Runtime (weight bytes: those of the float model).
    With ``bfloat16`` (CPU, float32) each pruned model runs as a bfloat16 copy against the dense model in
    float32 (weight bytes: the copy's).
    """
    if not pruned:
        raise ValueError("benchmark_side_by_side needs at least one pruned model")
    keep = list(int8_keep_float) if int8_keep_float is not None else [()] * len(pruned)
    if len(keep) != len(pruned):
        raise ValueError(f"int8_keep_float has {len(keep)} entries for {len(pruned)} pruned models")
    device = torch.device(device)
    models, was_training = [], []
    for m in (dense, *pruned):
        enc = unwrap(m)
        ref = next(enc.parameters())
        if ref.device != device or ref.dtype != dtype:
            enc = copy.deepcopy(enc).to(device=device, dtype=dtype)
        was_training.append(enc.training)
        models.append(enc.eval())
    runtime = CpuRuntime(int8=int8, onnx=onnx, bfloat16=bfloat16)
    timed, sessions = _runtimes(models, runtime=runtime, device=device, dtype=dtype, threads=threads,
                                int8_keep_float=keep, int8_activations=int8_activations, int8_engine=int8_engine,
                                onnx_sessions=onnx_sessions)
    vocab = min(int(getattr(models[0].config, "vocab_size", 1000)), 30000)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch_size, seq_len), generator=gen).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cuda = device.type == "cuda"
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            feeds = {k: v.cpu().numpy() for k, v in batch.items()} if any(sessions) else {}
            forwards: list[Callable[[], object]] = [
                (lambda m=m: m(**batch).last_hidden_state) if session is None
                else (lambda session=session: session.run(None, feeds))
                for m, session in zip(timed, sessions, strict=True)]
            for _ in range(warmup):
                for forward in forwards:
                    forward()
            peaks: list[list[int]] = [[] for _ in forwards]
            for _ in range(memory_repeats):
                for i, forward in enumerate(forwards):
                    peaks[i].append(_peak_cuda(forward, device) if cuda else _peak_rss_delta(forward))
            times, cpu = _time_interleaved(forwards, repeats=repeats, device=device if cuda else None)
    finally:
        torch.set_num_threads(old_threads)
        for m, training in zip(models, was_training, strict=True):
            m.train(training)
    runs = [_model_run(m, t, latencies=times[i], cpu=cpu[i], peaks=peaks[i], batch_size=batch_size)
            for i, (m, t) in enumerate(zip(models, timed, strict=True))]
    where = torch.cuda.get_device_name(device) if cuda else f"cpu ({threads} threads)"
    label = _label(runtime) if any(runtime) else str(dtype).removeprefix("torch.")
    return [BenchResult(device=where, dtype=label, seq_len=seq_len, batch_size=batch_size, threads=threads,
                        repeats=repeats, warmup=warmup,
                        peak_memory_kind="cuda_max_allocated_delta" if cuda else "rss_delta",
                        dense=runs[0], pruned=run) for run in runs[1:]]
