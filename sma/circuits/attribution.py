"""Gradient attribution (attribution patching), optionally iterated with ablation between rounds.

Each round is one GradCache backward pass over the probe (:func:`sma.circuits.objective.attribute`) that
gives, per unit, sequence and token, the first-order estimate ``G = (x - b) . dL/dx`` of what ablating the
unit towards its baseline ``b`` does to the probe loss. The unit's score is a statistic of ``G`` over the
probe (``abs_seq``: sum over sequences of |G summed over the sequence's tokens|, the default).

With ``steps > 1`` the least important units are ablated between rounds (each layer's heads and neurons
separately, in equal steps up to ``sparsity``) and the survivors re-scored with those units gone, so
later scores see the model the pruner will leave. Final scores then encode the round a unit was ablated in
(integer part; survivors score highest) plus its statistic at its last scoring divided by that round's
largest statistic of its kind over all layers (fraction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sma.circuits.controls import UnitScores, to_scores
from sma.circuits.objective import ProbeBatches, attribute
from sma.circuits.patching import UnitMeans

STATISTICS = ("abs_seq", "sq_seq", "abs_token", "abs_total")


@dataclass(frozen=True)
class AttributionResult:
    scores: UnitScores
    first_round: UnitScores
    """The single-pass statistic on the intact model."""
    signed: UnitScores
    """The intact model's signed first-order estimate of the loss increase when a unit is ablated."""
    rounds: tuple[dict, ...]
    """Per round: probe loss and nDCG@10 of the model being scored, and the units it had ablated."""


def _statistic(att, name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if name == "abs_total":
        heads, neurons = att.total
        return [h.abs() for h in heads], [n.abs() for n in neurons]
    return att.get(name)


def _normalised(values: Sequence[torch.Tensor], active: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Values divided by the largest active value over all layers (kept below 1), so that within one
    round units stay comparable across layers."""
    live = [v[a] for v, a in zip(values, active, strict=True) if bool(a.any())]
    top = float(torch.cat(live).max()) if live else 0.0
    return [v / top * 0.999 if top > 0 else torch.zeros_like(v) for v in values]


def attribution_scores(model, batches: ProbeBatches, *, temperature: float, means: UnitMeans | None,
                       steps: int = 1, sparsity: float = 0.5, statistic: str = "abs_seq",
                       method: str = "attribution", embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                       ) -> AttributionResult:
    """``embeddings``: the intact model's probe embeddings, if already computed (saves a forward pass)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    head_active: list[torch.Tensor] | None = None
    neuron_active: list[torch.Tensor] | None = None
    levels: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
    last: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
    rounds, first, signed = [], None, None
    for r in range(steps):
        gates = None if head_active is None else ([a.float() for a in head_active], [a.float() for a in neuron_active])
        att = attribute(model, batches, temperature=temperature, means=means,
                        head_gates=gates[0] if gates else None, neuron_gates=gates[1] if gates else None,
                        desc=f"attribution round {r + 1}/{steps}", embeddings=embeddings if r == 0 else None)
        stat = _statistic(att, statistic)
        if first is None:
            first = stat
            signed = ([-h for h in att.total[0]], [-n for n in att.total[1]])
            head_active = [torch.ones(len(h), dtype=torch.bool) for h in stat[0]]
            neuron_active = [torch.ones(len(n), dtype=torch.bool) for n in stat[1]]
            levels = ([torch.full((len(h),), float(steps)) for h in stat[0]],
                      [torch.full((len(n),), float(steps)) for n in stat[1]])
            last = ([torch.zeros(len(h), dtype=torch.float64) for h in stat[0]],
                    [torch.zeros(len(n), dtype=torch.float64) for n in stat[1]])
        rounds.append({"round": r + 1, "loss": att.loss, "ndcg_at_10": att.ndcg,
                       "ablated_heads": sum(int((~a).sum()) for a in head_active),
                       "ablated_neurons": sum(int((~a).sum()) for a in neuron_active)})
        if steps == 1:
            break
        target = sparsity * (r + 1) / steps
        for pos, (actives, values) in enumerate(((head_active, stat[0]), (neuron_active, stat[1]))):
            normed = _normalised(values, actives)
            for layer, (active, v) in enumerate(zip(actives, values, strict=True)):
                last[pos][layer][active] = normed[layer][active]
                if r == steps - 1:
                    continue
                n_off = math.floor(target * len(v) + 1e-9) - int((~active).sum())
                if n_off <= 0:
                    continue
                ids = [i for i in sorted(range(len(v)), key=lambda i: (float(v[i]), i)) if active[i]][:n_off]
                active[ids] = False
                levels[pos][layer][ids] = float(r)
    assert first is not None and signed is not None
    if steps == 1:
        final = first
    else:
        final = ([lv + lt for lv, lt in zip(levels[0], last[0], strict=True)],
                 [lv + lt for lv, lt in zip(levels[1], last[1], strict=True)])
    return AttributionResult(
        scores=to_scores(*final, method=method),
        first_round=to_scores(*first, method=f"{method}:first_round"),
        signed=to_scores(*signed, method=f"{method}:signed"),
        rounds=tuple(rounds),
    )
