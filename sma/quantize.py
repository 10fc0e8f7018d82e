"""Dynamic int8 quantization of an encoder's linear layers for CPU serving (PyTorch's ``quantize_dynamic``:
int8 weights, activations quantized per batch at run time; embeddings and LayerNorms stay float32).

Activations get the full 8-bit range where the CPU has VNNI int8 instructions: PyTorch's dynamic linear layer
quantizes them to 7 bits so that fbgemm's ``vpmaddubsw`` (pairs of u8 x s8 products summed into 16 bits) cannot
saturate on x86 CPUs without VNNI; VNNI's ``vpdpbusd`` sums into 32 bits, so the 8th bit is free there and
halves the rounding step of every activation (``bench.int8_activations``).

The engine that packs the weights picks the kernels (``bench.int8_engine``): the int8 copy of a 50 % pruned
all-MiniLM-L6-v2 packed by oneDNN ran 2.96-3.12x the dense float32 model against 2.60x packed by PyTorch's
default ``x86`` engine (fbgemm) on a Xeon with AMX, and 4.90-4.94x against 4.45-4.55x on an AMD EPYC with
AVX512-VNNI, at the same retention up to rounding, so ``auto`` packs with ``onednn`` on CPUs with either.

Plan, then apply: :func:`plan_int8` measures, without labels, how far each linear layer alone moves the
embeddings of sample texts when it is int8 and names the most sensitive ones to keep in float32;
:func:`quantize_int8` makes the int8 copy that keeps them."""

from __future__ import annotations

import copy
import functools
import random
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sma.config.choices import INT8_ACTIVATIONS, INT8_ENGINES
from sma.prune.arch import unwrap

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""``/proc/cpuinfo`` flags of x86 CPUs whose int8 dot products accumulate in 32 bits (no 16-bit saturation)."""
ONEDNN_FLAGS = ("amx_int8", "avx512_vnni")
"""``/proc/cpuinfo`` flags of the x86 CPUs where oneDNN's int8 linear layers were measured faster than fbgemm's
at 30 to 50 % sparsity: AMX int8 tiles (a Xeon) and AVX512-VNNI without AMX (an AMD EPYC)."""


@functools.cache
def _host_cpuinfo() -> str:
    """This machine's ``/proc/cpuinfo``, read once per process; empty where it cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _cpu_flags(cpuinfo: str | None) -> set[str]:
    """The ``flags`` of this CPU's ``/proc/cpuinfo`` (or of the given text); empty where it cannot be read."""
    cpuinfo = _host_cpuinfo() if cpuinfo is None else cpuinfo
    return {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[-1].split()}


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this CPU (or the given ``/proc/cpuinfo`` text) lists a VNNI flag; ``False`` where it cannot be
    read (not Linux): the reduced range is the safe choice there."""
    return any(flag in _cpu_flags(cpuinfo) for flag in VNNI_FLAGS)


def int8_engine(setting: str = "auto", cpuinfo: str | None = None) -> str:
    """PyTorch's quantized engine for ``bench.int8_engine``: ``auto`` resolved to ``onednn`` on a CPU with AMX
    int8 or AVX512-VNNI (this one, or the given ``/proc/cpuinfo`` text; :data:`ONEDNN_FLAGS`), PyTorch's default
    engine elsewhere (``x86`` on x86 CPUs); an engine this PyTorch build lacks is a ``ValueError`` naming the
    setting."""
    if setting not in INT8_ENGINES:
        raise ValueError(f"bench.int8_engine: {setting!r} is not one of {', '.join(INT8_ENGINES)}")
    supported = torch.backends.quantized.supported_engines
    if setting == "auto":
        return "onednn" if _cpu_flags(cpuinfo) & set(ONEDNN_FLAGS) and "onednn" in supported \
            else torch.backends.quantized.engine
    if setting not in supported:
        raise ValueError(f"bench.int8_engine: this PyTorch build has no {setting!r} quantized engine "
                         f"(it has {', '.join(e for e in supported if e != 'none')})")
    return setting


@contextmanager
def _packing_engine(engine: str) -> Iterator[None]:
    """PyTorch's global quantized engine set to ``engine`` inside the block and restored after it: layers
    quantized inside keep the engine's packed weights (and kernels) wherever they later run."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def activation_range(setting: str = "auto") -> str:
    """``full`` or ``reduced``: ``bench.int8_activations`` with ``auto`` resolved for this CPU. ``full`` on a CPU
    without VNNI warns: its products may saturate."""
    if setting not in INT8_ACTIVATIONS:
        raise ValueError(f"bench.int8_activations: {setting!r} is not one of {', '.join(INT8_ACTIVATIONS)}")
    if setting == "auto":
        return "full" if cpu_has_vnni() else "reduced"
    if setting == "full" and not cpu_has_vnni():
        warnings.warn("bench.int8_activations=full on a CPU without VNNI: fbgemm's 16-bit sums may saturate",
                      stacklevel=2)
    return setting


@functools.cache
def _full_range_linear() -> type[nn.Module]:
    """PyTorch's dynamic int8 ``Linear`` quantizing its input to the full 8 bits (it passes ``reduce_range=True``
    to the same kernel); built on first use so that importing this module does not import the quantized ops."""
    from torch.ao.nn.quantized.dynamic import Linear

    class FullRangeDynamicLinear(Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
            return y.to(x.dtype)

        def _get_name(self) -> str:
            return "FullRangeDynamicQuantizedLinear"

    return FullRangeDynamicLinear

INT8_SAMPLE_TEXTS = 128
"""Documents :func:`plan_int8` measures each layer's sensitivity on in ``sma run`` and ``sma bench``."""


def sample_documents(corpus: Mapping[str, Mapping[str, str]], seed: int) -> list[str]:
    """The texts of :data:`INT8_SAMPLE_TEXTS` documents of ``corpus`` drawn with ``seed``: what the int8 plan
    measures on, the same for a run and the benchmark of the same seed."""
    from sma.data import doc_text

    ids = sorted(corpus)
    return [doc_text(corpus[d]) for d in random.Random(seed).sample(ids, min(INT8_SAMPLE_TEXTS, len(ids)))]


@dataclass(frozen=True)
class Int8Plan:
    """Which linear layers an int8 copy keeps in float32, and the measurement that chose them."""

    keep_float: tuple[str, ...] = ()
    """Names (inside the bare encoder) of the linear layers left in float32, the most sensitive first."""
    sensitivity: dict[str, float] = field(default_factory=dict)
    """1 - mean cosine between the sample texts' embeddings with only that layer int8 and the float model's;
    empty when nothing was measured (nothing kept in float32)."""
    texts: int = 0
    """Sample texts the sensitivity was measured on."""

    def to_dict(self) -> dict[str, Any]:
        return {"keep_float": list(self.keep_float), "texts": self.texts,
                "sensitivity": dict(sorted(self.sensitivity.items(), key=lambda kv: -kv[1]))}


def int8_linears(model: nn.Module) -> list[str]:
    """Names (inside the bare encoder) of the linear layers :func:`quantize_int8` makes int8: every
    ``nn.Linear`` with weights (an emptied attention or FFN block's weightless layers have nothing to quantize)."""
    return [name for name, m in unwrap(model).named_modules() if isinstance(m, nn.Linear) and m.weight.numel() > 0]


def quantize_int8(model: nn.Module, keep_float: Collection[str] = (), *, activations: str = "auto",
                  engine: str = "auto") -> nn.Module:
    """An int8 copy of ``model`` (on the CPU, in eval mode) whose ``nn.Linear`` layers are dynamically
    quantized, except those named in ``keep_float`` (names inside the bare encoder, as in :class:`Int8Plan`);
    ``model`` itself is not changed. Works on a bare encoder or a :class:`sma.model.BiEncoder`. ``activations``:
    the input range, ``full``, ``reduced`` or ``auto`` (:func:`activation_range`); ``engine``: PyTorch's
    quantized engine that packs the weights (:func:`int8_engine`).

    Weights get one scale per output channel: with one per matrix (PyTorch's default) all-MiniLM-L6-v2's
    document embeddings keep a cosine of about 0.96 with the float model's, per channel about 0.98."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names, keep = int8_linears(model), set(keep_float)
    unknown = sorted(keep - set(names))
    if unknown:
        raise ValueError(f"keep_float: {unknown[0]!r} is not a linear layer with weights of this encoder")
    packing = int8_engine(engine)
    model = copy.deepcopy(model).cpu().float().eval()
    spec = {name: per_channel_dynamic_qconfig for name in names if name not in keep}
    mapping = {nn.Linear: _full_range_linear()} if activation_range(activations) == "full" else None
    with warnings.catch_warnings(), _packing_engine(packing):  # torch 2.10+ points eager-mode quantization to
        warnings.simplefilter("ignore")  # torchao; it still works
        quantize_dynamic(unwrap(model), spec, dtype=torch.qint8, mapping=mapping, inplace=True)  # bare encoder's names
    return model


def plan_int8(model: nn.Module, texts: Sequence[str], *, keep_float: int, batch_size: int = 32,
              activations: str = "auto", engine: str = "auto") -> Int8Plan:
    """Keep the ``keep_float`` linear layers of ``model`` (a :class:`sma.model.BiEncoder`) whose int8 copy
    alone moves the document embeddings of ``texts`` furthest from the float model's (no labels needed).

    One encoding of ``texts`` per linear layer with weights (37 on MiniLM, its unused pooler included) when ``keep_float`` > 0; none
    otherwise."""
    if keep_float <= 0:
        return Int8Plan()
    names = int8_linears(model)
    reference = model.encode(texts, kind="doc", batch_size=batch_size)
    sensitivity = {}
    for name in names:
        only = quantize_int8(model, keep_float=[n for n in names if n != name], activations=activations,
                             engine=engine)
        moved = only.encode(texts, kind="doc", batch_size=batch_size)
        sensitivity[name] = 1.0 - torch.nn.functional.cosine_similarity(moved, reference).mean().item()
    ranked = sorted(names, key=lambda n: -sensitivity[n])
    return Int8Plan(keep_float=tuple(ranked[:keep_float]), sensitivity=sensitivity, texts=len(texts))


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s weights as stored: its state dict, packed int8 linear weights included."""
    total = 0
    for value in model.state_dict().values():
        for t in value if isinstance(value, tuple) else (value,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total
