"""Circuits: the smallest top-scored share of units that keeps a chosen share of the probe objective.

A circuit of a method keeps the top fraction ``f`` of every layer's heads and of every layer's neurons by
that method's scores; everything else is ablated (mean or zero). Its *retained share* is
``(L_none - L_circuit) / (L_none - L_full)`` with ``L`` the probe loss of the intact model, of the circuit
alone and of the model with every unit ablated. Bisection over ``f`` (the share grows with ``f``) finds the
smallest fraction whose share reaches ``circuit_share``. Faithfulness reports the probe loss and
nDCG@10 of the intact model, the circuit alone, the model with the circuit removed, and nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sma.circuits.controls import UnitScores
from sma.circuits.objective import ProbeBatches, ProbeScore, evaluate_probe
from sma.circuits.patching import UnitMeans
from sma.prune.arch import encoder_layers
from sma.prune.units import head_cost, neuron_cost

Unit = tuple[str, int, int]


@dataclass(frozen=True)
class Faithfulness:
    full: ProbeScore
    circuit_only: ProbeScore
    circuit_removed: ProbeScore
    nothing: ProbeScore

    def to_dict(self) -> dict:
        return {k: {"loss": v.loss, "ndcg_at_10": v.ndcg} for k, v in
                (("full", self.full), ("circuit_only", self.circuit_only),
                 ("circuit_removed", self.circuit_removed), ("all_ablated", self.nothing))}


@dataclass(frozen=True)
class Circuit:
    method: str
    units: tuple[Unit, ...]
    keep_fraction: float
    retained_share: float
    params: int
    param_share: float
    faithfulness: Faithfulness
    top_units: tuple[tuple[Unit, float], ...]
    """The ``top`` highest-scored heads and neurons with their scores (``ablation``: loss increase)."""

    def to_dict(self) -> dict:
        return {"method": self.method, "keep_fraction": self.keep_fraction,
                "retained_share": self.retained_share, "params": self.params, "param_share": self.param_share,
                "num_heads": sum(u[0] == "head" for u in self.units),
                "num_neurons": sum(u[0] == "neuron" for u in self.units),
                "units": [list(u) for u in self.units], "faithfulness": self.faithfulness.to_dict(),
                "top_units": [{"unit": list(u), "score": s} for u, s in self.top_units]}


def _ranked(values: tuple[float, ...]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def top_fraction(scores: UnitScores, fraction: float) -> frozenset[Unit]:
    """The top ``ceil(fraction * n)`` heads and neurons of every layer by score (ties: lower id first)."""
    units: set[Unit] = set()
    for kind, table in (("head", scores.heads), ("neuron", scores.neurons)):
        for layer, values in enumerate(table):
            keep = math.ceil(fraction * len(values) - 1e-9)
            units.update((kind, layer, i) for i in _ranked(values)[:keep])
    return frozenset(units)


def gates_for(model, units: frozenset[Unit], *, keep: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gates that keep only ``units`` (``keep=True``) or remove only them."""
    layers = encoder_layers(model)
    on, off = (1.0, 0.0) if keep else (0.0, 1.0)
    heads = [torch.full((p.num_heads,), off) for p in layers]
    neurons = [torch.full((p.num_neurons,), off) for p in layers]
    for kind, layer, i in units:
        (heads if kind == "head" else neurons)[layer][i] = on
    return heads, neurons


def unit_params(model, units: frozenset[Unit]) -> tuple[int, int]:
    """Parameters the units own, and the parameters all prunable units own."""
    layers = encoder_layers(model)
    own = sum(head_cost(layers[n]) if k == "head" else neuron_cost(layers[n]) for k, n, _ in units)
    total = sum(p.num_heads * head_cost(p) + p.num_neurons * neuron_cost(p) for p in layers)
    return own, total


def reference_scores(model, batches: ProbeBatches, *, temperature: float,
                     means: UnitMeans | None) -> tuple[ProbeScore, ProbeScore]:
    """Probe scores of the intact model and of the model with every unit ablated."""
    full = evaluate_probe(model, batches, temperature=temperature)
    hg, ng = gates_for(model, frozenset(), keep=True)
    return full, evaluate_probe(model, batches, temperature=temperature, head_gates=hg, neuron_gates=ng, means=means)


def find_circuit(model, batches: ProbeBatches, scores: UnitScores, *, temperature: float,
                 means: UnitMeans | None, share: float, resolution: int = 32, top: int = 20,
                 references: tuple[ProbeScore, ProbeScore] | None = None) -> Circuit:
    """Bisection over the kept fraction in steps of ``1/resolution``; then faithfulness of the result.

    ``references``: :func:`reference_scores` on the same probe, when several circuits share them.
    """
    def run(units: frozenset[Unit], *, keep: bool) -> ProbeScore:
        hg, ng = gates_for(model, units, keep=keep)
        return evaluate_probe(model, batches, temperature=temperature, head_gates=hg, neuron_gates=ng, means=means)

    bar = tqdm(total=math.ceil(math.log2(resolution)) + 1, desc=f"circuit {scores.method}", leave=False)
    full, nothing = references or reference_scores(model, batches, temperature=temperature, means=means)
    margin = nothing.loss - full.loss

    def retained(loss: float) -> float:
        return (nothing.loss - loss) / margin if margin > 0 else 1.0

    lo, hi = 0, resolution  # invariant: fraction hi/resolution reaches the share (f = 1 is the full model)
    found: dict[int, ProbeScore] = {resolution: full}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found[mid] = run(top_fraction(scores, mid / resolution), keep=True)
        bar.update(1)
        if retained(found[mid].loss) >= share:
            hi = mid
        else:
            lo = mid
    units = top_fraction(scores, hi / resolution)
    removed = run(units, keep=False)
    bar.update(1)
    bar.close()
    params, total = unit_params(model, units)
    ranked = [((kind, layer, i), table[layer][i])
              for kind, table in (("head", scores.heads), ("neuron", scores.neurons))
              for layer, i in sorted(((n, i) for n, vals in enumerate(table) for i in range(len(vals))),
                                     key=lambda t: (-table[t[0]][t[1]], t[0], t[1]))[:top]]
    return Circuit(
        method=scores.method, units=tuple(sorted(units)), keep_fraction=hi / resolution,
        retained_share=retained(found[hi].loss), params=params, param_share=params / total,
        faithfulness=Faithfulness(full=full, circuit_only=found[hi], circuit_removed=removed, nothing=nothing),
        top_units=tuple(ranked),
    )
