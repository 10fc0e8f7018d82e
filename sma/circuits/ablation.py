"""Causal importance: ablate units (mean or zero) and measure what the probe's ranking does.

Every pass ablates one head, or one group of FFN neurons, and records three effects on the probe:

* ``loss``: increase of the contrastive loss (the ranking objective);
* ``ndcg``: drop of the pool nDCG@10;
* ``kl``: divergence of the ranking, ``KL(p || p')`` between each query's softmax distribution over the
  pool (temperature ``tau``) before and after the ablation, averaged over queries.

The signed loss and nDCG changes of removing one unit from an intact, redundant encoder are small and
cancel across queries (many are negative: the ablation "helps" some queries), so on a small probe they
rank units little better than chance. The divergence is non-negative per query and counts every change
of the ranking, whichever way it goes; it is the default score (``effect``). All three are reported.

Heads are ablated one at a time. FFN neurons are ablated in groups of ``group_size`` (one by one costs a
forward pass per neuron): each layer's neurons are ordered by their exact local effect (the mean squared
change of the layer output when the neuron alone is ablated, :func:`local_effects`), cut into contiguous
groups, and each group is ablated as a whole; the group's measured effect is shared among its members in
proportion to their local effects. ``group_size=1`` ablates every neuron alone. Every pass re-runs only
the layers from the ablated one on (:mod:`sma.circuits.resume`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sma.circuits.controls import UnitScores, to_scores
from sma.circuits.objective import ProbeBatches, ProbeScore, analysis_mode, contrastive_loss, pool_ndcg
from sma.circuits.patching import UnitMeans, patched
from sma.circuits.probe import negative_mask
from sma.circuits.resume import cache_inputs, embed_from
from sma.prune.arch import encoder_layers

EFFECTS = ("kl", "loss", "ndcg")


@dataclass(frozen=True)
class Effect:
    loss: float
    ndcg: float
    kl: float


@dataclass(frozen=True)
class AblationResult:
    scores: UnitScores
    """Importance = the chosen effect of ablating the unit (shared within neuron groups)."""
    effect: str
    base: ProbeScore
    heads: tuple[tuple[Effect, ...], ...]
    """Per layer and head: loss increase, nDCG@10 drop and ranking divergence when the head is ablated."""
    neuron_groups: tuple[tuple[tuple[int, ...], ...], ...]
    groups: tuple[tuple[Effect, ...], ...]

    def to_dict(self) -> dict:
        def table(rows: tuple[tuple[Effect, ...], ...], name: str) -> list[list[float]]:
            return [[getattr(e, name) for e in row] for row in rows]

        return {"effect": self.effect, "base_loss": self.base.loss, "base_ndcg": self.base.ndcg,
                **{f"head_delta_{k}": table(self.heads, k) for k in EFFECTS},
                "neuron_groups": self.neuron_groups,
                **{f"group_delta_{k}": table(self.groups, k) for k in EFFECTS}}


def neuron_groups(local: torch.Tensor, size: int) -> tuple[tuple[int, ...], ...]:
    """Neurons ordered by local effect (largest first, ties by id), cut into contiguous groups."""
    order = sorted(range(len(local)), key=lambda i: (-float(local[i]), i))
    return tuple(tuple(order[s:s + size]) for s in range(0, len(order), size))


def _shared(groups: tuple[tuple[int, ...], ...], effects: Sequence[float], local: torch.Tensor) -> torch.Tensor:
    """Each group's effect split among its neurons in proportion to their local effects."""
    scores = torch.zeros(len(local), dtype=torch.float64)
    local = local.double()
    for g, value in zip(groups, effects, strict=True):
        ids = list(g)
        total = float(local[ids].sum())
        share = local[ids] / total if total > 0 else torch.full((len(ids),), 1.0 / len(ids), dtype=torch.float64)
        scores[ids] = value * share
    return scores


def ablation_scores(model, batches: ProbeBatches, *, temperature: float, means: UnitMeans | None,
                    local_neurons: Sequence[torch.Tensor], group_size: int, effect: str = "kl",
                    method: str = "ablation") -> AblationResult:
    """One pass per head and per neuron group over ``batches`` (use a small probe: this is the slow method)."""
    if effect not in EFFECTS:
        raise ValueError(f"effect must be one of {EFFECTS}, got {effect!r}")
    layers = encoder_layers(model)
    probe = batches.probe
    neg = negative_mask(probe)

    with analysis_mode(model):
        cq = cache_inputs(model, batches.queries)
        cd = cache_inputs(model, batches.docs)

        def embed(start: int, heads: dict[int, list[int]], neurons: dict[int, list[int]]):
            hg = [torch.ones(p.num_heads) for p in layers]
            ng = [torch.ones(p.num_neurons) for p in layers]
            for layer, ids in heads.items():
                hg[layer][ids] = 0.0
            for layer, ids in neurons.items():
                ng[layer][ids] = 0.0
            with patched(model, head_gates=hg, neuron_gates=ng, means=means):
                return embed_from(model, cq, start=start).double(), embed_from(model, cd, start=start).double()

        q0, d0 = embed(0, {}, {})
        base = ProbeScore(loss=float(contrastive_loss(q0, d0, probe, temperature=temperature, neg=neg)),
                          ndcg=pool_ndcg(q0, d0, probe))
        logp0 = F.log_softmax(q0 @ d0.T / temperature, dim=1)

        def measure(start: int, heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> Effect:
            q, d = embed(start, heads, neurons)
            logp = F.log_softmax(q @ d.T / temperature, dim=1)
            kl = float((logp0.exp() * (logp0 - logp)).sum(1).mean())
            return Effect(loss=float(contrastive_loss(q, d, probe, temperature=temperature, neg=neg)) - base.loss,
                          ndcg=base.ndcg - pool_ndcg(q, d, probe), kl=kl)

        groups = tuple(neuron_groups(local_neurons[p.index], group_size) for p in layers)
        jobs = [("head", p.index, (h,)) for p in layers for h in range(p.num_heads)]
        jobs += [("group", p.index, g) for p in layers for g in groups[p.index]]
        results: dict[tuple[str, int, tuple[int, ...]], Effect] = {}
        for kind, layer, ids in tqdm(jobs, desc="ablation", unit="pass", leave=False):
            spec = {layer: list(ids)}
            results[(kind, layer, ids)] = measure(layer, spec if kind == "head" else {},
                                                  spec if kind == "group" else {})

    heads = tuple(tuple(results[("head", p.index, (h,))] for h in range(p.num_heads)) for p in layers)
    group_effects = tuple(tuple(results[("group", p.index, g)] for g in groups[p.index]) for p in layers)
    head_scores = [torch.tensor([getattr(e, effect) for e in row], dtype=torch.float64) for row in heads]
    neuron_scores = [_shared(groups[p.index], [getattr(e, effect) for e in group_effects[p.index]],
                             local_neurons[p.index]) for p in layers]
    return AblationResult(scores=to_scores(head_scores, neuron_scores, method=method), effect=effect, base=base,
                          heads=heads, neuron_groups=groups, groups=group_effects)
