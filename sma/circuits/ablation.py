"""Causal importance: ablate units (mean or zero) and measure the change of the probe objective.

Heads are ablated one at a time. FFN neurons are ablated in groups of ``neuron_group_size`` (one by one
costs a forward pass per neuron): each layer's neurons are ordered by their exact local effect (the mean
squared change of the layer output when the neuron alone is ablated, :func:`local_effects`), cut into
contiguous groups, and each group is ablated as a whole; the group's measured loss change is shared among
its members in proportion to their local effects. With ``neuron_group_size=1`` every neuron is ablated
alone. Every pass re-runs only the layers from the ablated one on (:mod:`sma.circuits.resume`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sma.circuits.baselines import UnitScores, to_scores
from sma.circuits.objective import ProbeBatches, ProbeScore, analysis_mode, contrastive_loss, pool_ndcg
from sma.circuits.patching import UnitMeans, patched
from sma.circuits.probe import negative_mask
from sma.circuits.resume import cache_inputs, embed_from
from sma.prune.arch import encoder_layers


@dataclass(frozen=True)
class AblationResult:
    scores: UnitScores
    """Importance = increase of the probe loss when the unit is ablated (shared within neuron groups)."""
    base: ProbeScore
    head_loss: tuple[tuple[float, ...], ...]
    """Per layer and head: probe loss with the head ablated minus the intact loss."""
    head_ndcg: tuple[tuple[float, ...], ...]
    """Per layer and head: intact probe nDCG@10 minus the nDCG@10 with the head ablated."""
    neuron_groups: tuple[tuple[tuple[int, ...], ...], ...]
    group_loss: tuple[tuple[float, ...], ...]
    group_ndcg: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict:
        return {"base_loss": self.base.loss, "base_ndcg": self.base.ndcg,
                "head_delta_loss": self.head_loss, "head_delta_ndcg": self.head_ndcg,
                "neuron_groups": self.neuron_groups, "group_delta_loss": self.group_loss,
                "group_delta_ndcg": self.group_ndcg}


def neuron_groups(local: torch.Tensor, size: int) -> tuple[tuple[int, ...], ...]:
    """Neurons ordered by local effect (largest first, ties by id), cut into contiguous groups."""
    order = sorted(range(len(local)), key=lambda i: (-float(local[i]), i))
    return tuple(tuple(order[s:s + size]) for s in range(0, len(order), size))


def ablation_scores(model, batches: ProbeBatches, *, temperature: float, means: UnitMeans | None,
                    local_neurons: Sequence[torch.Tensor], group_size: int, method: str = "ablation"
                    ) -> AblationResult:
    """One pass per head and per neuron group over ``batches`` (use a small probe: this is the slow method)."""
    layers = encoder_layers(model)
    probe = batches.probe
    neg = negative_mask(probe)

    with analysis_mode(model):
        cq = cache_inputs(model, batches.queries)
        cd = cache_inputs(model, batches.docs)

        def run(start: int, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> ProbeScore:
            hg = [torch.ones(p.num_heads) for p in layers]
            ng = [torch.ones(p.num_neurons) for p in layers]
            for layer, ids in heads.items():
                hg[layer][ids] = 0.0
            for layer, ids in neurons.items():
                ng[layer][ids] = 0.0
            with patched(model, head_gates=hg, neuron_gates=ng, means=means):
                q = embed_from(model, cq, start=start)
                d = embed_from(model, cd, start=start)
            loss = float(contrastive_loss(q, d, probe, temperature=temperature, neg=neg))
            return ProbeScore(loss=loss, ndcg=pool_ndcg(q, d, probe))

        base = run(0, {}, {})
        groups = tuple(neuron_groups(local_neurons[p.index], group_size) for p in layers)
        jobs = [("head", p.index, (h,)) for p in layers for h in range(p.num_heads)]
        jobs += [("group", p.index, g) for p in layers for g in groups[p.index]]
        results: dict[tuple[str, int, tuple[int, ...]], ProbeScore] = {}
        for kind, layer, ids in tqdm(jobs, desc="ablation", unit="pass", leave=False):
            spec = {layer: list(ids)}
            results[(kind, layer, ids)] = run(layer, spec if kind == "head" else {}, spec if kind == "group" else {})

    head_loss, head_ndcg, group_loss, group_ndcg, head_scores, neuron_scores = [], [], [], [], [], []
    for p in layers:
        hr = [results[("head", p.index, (h,))] for h in range(p.num_heads)]
        head_loss.append(tuple(r.loss - base.loss for r in hr))
        head_ndcg.append(tuple(base.ndcg - r.ndcg for r in hr))
        head_scores.append(torch.tensor(head_loss[-1], dtype=torch.float64))
        gr = [results[("group", p.index, g)] for g in groups[p.index]]
        group_loss.append(tuple(r.loss - base.loss for r in gr))
        group_ndcg.append(tuple(base.ndcg - r.ndcg for r in gr))
        scores = torch.zeros(p.num_neurons, dtype=torch.float64)
        local = local_neurons[p.index].double()
        for g, delta in zip(groups[p.index], group_loss[-1], strict=True):
            ids = list(g)
            share = local[ids] / local[ids].sum() if float(local[ids].sum()) > 0 else torch.full(
                (len(ids),), 1.0 / len(ids), dtype=torch.float64)
            scores[ids] = delta * share
        neuron_scores.append(scores)
    return AblationResult(
        scores=to_scores(head_scores, neuron_scores, method=method), base=base,
        head_loss=tuple(head_loss), head_ndcg=tuple(head_ndcg), neuron_groups=groups,
        group_loss=tuple(group_loss), group_ndcg=tuple(group_ndcg),
    )
