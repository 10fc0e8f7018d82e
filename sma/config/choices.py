"""Every closed set of values a config key can take, defined once (sections validate against these, the CLI
offers them as ``choices``)."""

from __future__ import annotations

import re
from typing import NamedTuple

CRITERIA = ("mechanistic", "attribution", "ablation", "magnitude", "random")
"""``prune.criterion``: how units are chosen for removal. ``mechanistic`` = attribution scores with their circuit
protected; ``magnitude`` is the non-mechanistic comparison and ``random`` the control."""
METHODS = ("ablation", "attribution", "magnitude", "random")
"""``analysis.methods``: importance methods of the mechanistic analysis, mechanistic first."""
ALLOCATIONS = ("per_layer", "global")
"""``prune.allocation``."""
SPLITS = ("proportional", "joint")
"""``prune.split``: how a layer's budget is split between heads and neurons."""
POOLINGS = ("mean", "cls")
"""``model.pooling``."""
HARD_NEGATIVES = ("none", "bm25", "dense")
"""``train.hard_negatives``."""
NEGATIVE_SOURCES = ("bm25", "dense")
"""``analysis.negative_source``."""
ABLATIONS = ("mean", "zero")
"""``analysis.ablation``."""
PRECISIONS = ("float32", "bfloat16", "auto")
"""``distill.precision``: the student's forward and backward passes in distillation (float32, or bfloat16
under ``torch.autocast``; ``auto``: bfloat16 where the device runs it natively, else float32)."""
LR_SCHEDULES = ("linear", "constant")
"""``distill.lr_schedule``."""
SCHEDULERS = ("none", "asha")
"""``scheduler`` of a search."""
BENCH_SCORES = ("magnitude", "first_n")
"""Units ``sma bench`` removes (the benchmark measures shapes, not quality)."""
DTYPES = ("float32", "bfloat16", "float16", "int8", "onnx", "onnx-int8", "cpu-bfloat16")
"""``bench.dtypes``; ``int8``: the pruned model with dynamic int8 linear layers against dense float32 (CPU);
``onnx``: the pruned model in ONNX Runtime against dense float32 in PyTorch (CPU); ``onnx-int8``: that ONNX
model with ONNX Runtime's dynamic int8 quantization of its matrix multiplications (CPU); ``cpu-bfloat16``:
the pruned model in bfloat16 against dense float32 (CPU; fast where the CPU has AMX or AVX512-BF16, slower
than float32 elsewhere). ``bfloat16`` and ``float16`` time both models in that dtype."""
EVAL_DTYPES = ("float32", "bfloat16")
"""``sma evaluate --dtype``: what the saved pruned model is measured in (the dense model: float32)."""
INT8_ACTIVATIONS = ("auto", "full", "reduced")
"""``bench.int8_activations``: the range a dynamic int8 linear layer quantizes its input to. ``full``: 8 bits
(0-255); ``reduced``: 7 bits (0-127), PyTorch's default, which keeps fbgemm's ``vpmaddubsw`` from saturating
on x86 CPUs without VNNI; ``auto``: full where the CPU has VNNI (nothing to saturate), reduced elsewhere."""
INT8_ENGINES = ("auto", "x86", "fbgemm", "onednn")
"""``bench.int8_engine``: PyTorch's quantized engine that packs the int8 copy's weights and so picks the kernel
its linear layers run (the same int8 arithmetic, up to rounding). ``onednn`` runs them on AMX int8 tiles or
AVX512-VNNI; ``x86`` (PyTorch's default on x86) and ``fbgemm`` on AVX2 / AVX512-VNNI; ``auto``: ``onednn`` on
CPUs with AMX int8 or AVX512-VNNI (measured faster there at 30 to 50 %), PyTorch's default engine elsewhere."""
INT8_RUNTIMES = ("pytorch", "onnxruntime")
"""``bench.int8_runtime``: what runs the int8 copy ``sma run`` and ``sma evaluate`` measure with ``bench.int8``.
``pytorch``: dynamic int8 linear layers (:mod:`sma.quantize`); ``onnxruntime``: the exported ONNX model with
ONNX Runtime's dynamic int8 matrix multiplications (:func:`sma.export.quantize_onnx`; inputs always 8 bits)."""


class CpuRuntime(NamedTuple):
    """How a CPU-only ``bench.dtypes`` entry runs the pruned model: int8 linear layers, ONNX Runtime (both:
    ONNX Runtime's int8), or PyTorch in bfloat16."""

    int8: bool = False
    onnx: bool = False
    bfloat16: bool = False


CPU_RUNTIMES = {"int8": CpuRuntime(int8=True), "onnx": CpuRuntime(onnx=True), "onnx-int8": CpuRuntime(int8=True, onnx=True),
                "cpu-bfloat16": CpuRuntime(bfloat16=True)}
"""Dtypes timed on the CPU only, each against the dense float32 model, and how (:func:`sma.bench.benchmark`'s
``int8``, ``onnx`` and ``bfloat16`` flags)."""
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
"""Accepted ``device`` / ``bench.device`` names (resolved by :func:`sma.device.resolve_device`)."""
