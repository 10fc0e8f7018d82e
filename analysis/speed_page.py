"""``sma bench --page FILE.md``: the benchmark's rows as a results page to check in, with the command that
measured them and the machine it ran on. The numbers are ratios measured side by side in one process
(:func:`sma.bench.benchmark`), never timings from different runs."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.render import Section, to_markdown
from sma.atomic import write_text
from sma.config.choices import CPU_RUNTIMES

RUNTIMES = {"float32": "PyTorch float32", "bfloat16": "PyTorch bfloat16", "float16": "PyTorch float16",
            "int8": "PyTorch, int8 linear layers", "onnx": "ONNX Runtime float32",
            "onnx-int8": "ONNX Runtime, int8 matrix multiplications", "cpu-bfloat16": "PyTorch bfloat16"}
"""How the pruned model runs for each ``bench.dtypes`` value (the dense model: PyTorch, that dtype or float32)."""


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ffn_widths(row: dict[str, Any]) -> str:
    """The pruned model's FFN neurons per layer, each distinct count once, widest first (e.g. ``448, 384``)."""
    widths = sorted({layer["neurons"] for layer in row.get("structure", [])}, reverse=True)
    return ", ".join(str(w) for w in widths)


def _multiples(rows: list[dict[str, Any]]) -> list[int]:
    """The ``prune.neuron_multiple`` values the rows compare (rows without one: 1), smallest first."""
    return sorted({r.get("neuron_multiple", 1) for r in rows})


def _multiple_cell(row: dict[str, Any], several: bool) -> dict[str, Any]:
    """A "Neuron multiple" cell when the page compares several multiples."""
    return {"Neuron multiple": row.get("neuron_multiple", 1)} if several else {}


def speed_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (sparsity, runtime[, neuron multiple]): latencies, the speedup statistics and weight memory."""
    mb = 2.0**20
    several = len(_multiples(rows)) > 1
    return pd.DataFrame([{
        "Sparsity": f"{r['target']:.0%}", **_multiple_cell(r, several), "Actual": f"{r['pruned']['encoder_sparsity']:.2%}",
        "FFN neurons": ffn_widths(r),
        "Dense model runs in": _dense_runtime(r),
        "Pruned model runs in": RUNTIMES.get(r["dtype"], r["dtype"]) + _inputs(r) + _kept(r),
        "Dense ms": round(1e3 * r["dense"]["latency_s"], 1), "Pruned ms": round(1e3 * r["pruned"]["latency_s"], 1),
        "Speedup": f"{r['speedup']:.2f}x", "Paired": f"{r['speedup_paired']:.2f}x",
        "CPU time": f"{r['speedup_cpu']:.2f}x", "Encoder MB dense": round(r["dense"]["encoder_weight_bytes"] / mb, 2),
        "Encoder MB pruned": round(r["pruned"]["encoder_weight_bytes"] / mb, 2),
        "Memory": f"{r['encoder_weight_ratio']:.3f}"} for r in rows])


def _dense_runtime(row: dict[str, Any]) -> str:
    """What the dense model of a row runs in: PyTorch float32 against the CPU runtimes (int8, ONNX Runtime,
    cpu-bfloat16), otherwise PyTorch in the row's dtype."""
    return "PyTorch float32" if row["dtype"] in CPU_RUNTIMES else RUNTIMES.get(row["dtype"], row["dtype"])


def _inputs(row: dict[str, Any]) -> str:
    """The input range of PyTorch's int8 layers (``bench.int8_activations`` as resolved) and the quantized
    engine that packed them (``bench.int8_engine`` as resolved), where the row has them."""
    bits = {"full": 8, "reduced": 7}.get(row.get("int8_activations", ""))
    parts = ([f"{bits}-bit inputs"] if bits else []) + ([f"{row['int8_engine']} engine"] if row.get("int8_engine") else [])
    return f" ({', '.join(parts)})" if parts else ""


def _kept(row: dict[str, Any]) -> str:
    kept = row.get("int8_keep_float") or []
    return f", {len(kept)} kept float32 ({', '.join(kept)})" if kept else ""


def training_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per sparsity[, neuron multiple]: the pruned model's median distillation step in each variant
    (precision, word embeddings trained or frozen) and its ratio to float32 with them trained."""
    several = len(_multiples(rows)) > 1
    return pd.DataFrame([{"Sparsity": f"{r['target']:.0%}", **_multiple_cell(r, several),
                          **{f"{p} s": f"{s:.3f}" for p, s in r["median_s"].items()},
                          **{f"Speedup {p}": f"{x:.2f}x" for p, x in r["speedup"].items() if p != r["reference"]}}
                         for r in rows])


def _training_section(rows: list[dict[str, Any]]) -> Section:
    first = rows[0]
    return Section("Distillation step: float32 against bfloat16 autocast, word embeddings trained and frozen",
                   f"One distillation step of the pruned model (forward on {first['batch_size']} x {first['seq_len']} "
                   f"tokens, float32 KD loss, backward, gradient clipping, AdamW update) in each distill.precision, "
                   f"with the word embedding table trained and frozen (distill.freeze_word_embeddings), each on its "
                   f"own copy of the model, interleaved; median seconds per step and the median of float32 with the "
                   f"table trained / the variant's median ({first['threads']} threads).",
                   tables=(("training", training_table(rows)),))


def _multiples_text(rows: list[dict[str, Any]]) -> str:
    multiples = _multiples(rows)
    if len(multiples) < 2:
        return ""
    return (f" Each sparsity's plans with each layer's FFN neurons rounded to a multiple of "
            f"{', '.join(map(str, multiples))} (prune.neuron_multiple; 1 = the exact target) are timed in the same "
            f"interleaved loop against the same dense runs, so their speedups compare directly.")


def write_speed_page(path: Path, payload: dict[str, Any], *, command: str) -> Path:
    """The page of one ``sma bench`` (its ``--output`` payload) at ``path``."""
    settings, rows = payload["settings"], payload["results"]
    bench = settings["bench"]
    first = rows[0] if rows else {}
    where = first.get("device", bench["device"])
    machine = (f"{cpu_name()}, {os.cpu_count()} logical cores" if str(where).startswith("cpu") else str(where))
    text = (f"Dense and pruned {settings['model']} on one batch of {bench['batch_size']} x {bench['seq_len']} "
            f"tokens on {where}, {bench['repeats']} repeats after {bench['warmup']} warm-up, interleaved (dense, "
            f"pruned, pruned, dense, ...). Speedup = dense median / pruned median; Paired = median of the "
            f"per-repeat ratios; CPU time = the same on process CPU seconds. Each row says what the dense and "
            f"the pruned model run in. Units removed by {settings['scores']} "
            f"scores, allocation {settings['allocation']}/{settings['split']}: the shapes of a pruned model, "
            f"not its quality.{_multiples_text(rows)} Machine: {machine}; torch {payload['torch']}.")
    notes = ("Encoder MB: weights of the encoder layers as stored (int8 rows: PyTorch's packed int8 weights; "
             "ONNX Runtime rows: the float32 model's).",
             "Ratios come from one process; latencies of different pages or runs are not comparable.")
    sections = [Section("Speed and memory, side by side", text, tables=(("bench", speed_table(rows)),), notes=notes)]
    if payload.get("training"):
        sections.append(_training_section(payload["training"]))
    sections.append(Section("Reproduce", "On a quiet machine (nothing else running):", code=command))
    write_text(path, to_markdown(f"SMA benchmark: {settings['model']}", sections, images=False))
    return path
