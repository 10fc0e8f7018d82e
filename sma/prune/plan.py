"""Turn unit scores into a plan that reaches a target encoder sparsity (:func:`plan_for_sparsity`).

:class:`UnitScores` and :class:`PruningPlan` are defined in :mod:`sma.prune.schema` and re-exported here.

Units compete by importance per parameter (``score / params``; a head owns ``4*h*d + 3*d`` parameters in
BERT, a neuron ``2*h + 1``), least important first. Selection never overshoots while smaller units can
still fill the gap, so the result lands within one FFN neuron of the target whenever neurons remain.

Depth: with ``whole_layers`` > 0 the plan first empties whole layers (every head and neuron), the least
important layer by total score per parameter first and layers holding protected (circuit) units last, as many
as the target holds; the rest of the target comes from the other layers' units. An emptied layer computes
nothing but its two LayerNorms (and the output biases it keeps): its matrices are gone.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from torch import nn

from sma.prune.schema import PruningPlan, UnitDecision, UnitScores
from sma.prune.sparsity import LayerCount, layer_counts
from sma.prune.units import LayerUnits, dense_sizes, unit_ids

__all__ = ["ALLOCATIONS", "SPLITS", "PruningPlan", "UnitDecision", "UnitScores", "plan_for_sparsity"]

ALLOCATIONS = ("global", "per_layer")
SPLITS = ("joint", "proportional")


@dataclass(frozen=True)
class _Candidate:
    kind: str
    layer: int
    unit: int
    score: float
    cost: int
    protected: bool

    @property
    def key(self) -> tuple:
        return (self.protected, self.score / self.cost, self.layer, self.kind, self.unit)


@dataclass
class _State:
    """Mutable selection state shared by the pools of one plan."""

    heads_left: dict[int, int]
    min_heads: int
    chosen: list[_Candidate]

    def allowed(self, c: _Candidate) -> bool:
        return c.kind != "head" or self.heads_left[c.layer] > self.min_heads

    def take(self, c: _Candidate) -> None:
        self.chosen.append(c)
        if c.kind == "head":
            self.heads_left[c.layer] -= 1

    def give_back(self, c: _Candidate) -> None:
        self.chosen.remove(c)
        if c.kind == "head":
            self.heads_left[c.layer] += 1


def _select(cands: list[_Candidate], needed: float, state: _State, *, nearest: bool) -> int:
    """Take candidates in priority order until ``needed`` params are removed; returns params taken.

    ``nearest``: stop at the count closest to ``needed`` (used for the coarse head pool). Otherwise a unit
    that would overshoot is skipped while later (smaller) units can fill the gap; the gap is then closed
    with the smallest units, and if a big unit had to overshoot, the most important smaller units taken
    are given back while the target stays met.
    """
    taken_ids = {id(c) for c in state.chosen}
    mine: list[_Candidate] = []
    removed, skipped = 0, []
    for c in cands:
        if removed >= needed:
            break
        if id(c) in taken_ids or not state.allowed(c):
            continue
        if removed + c.cost <= needed + (c.cost / 2 if nearest else 0):
            state.take(c)
            mine.append(c)
            removed += c.cost
        else:
            skipped.append(c)
    if nearest:
        return removed
    for c in sorted(skipped, key=lambda c: c.cost):  # smallest units first, least important among equals
        if removed >= needed:
            break
        if state.allowed(c):
            state.take(c)
            mine.append(c)
            removed += c.cost
    for c in sorted(mine, key=lambda c: c.key, reverse=True):  # most important first
        if removed - c.cost >= needed:
            state.give_back(c)
            removed -= c.cost
    return removed


def _candidates(scores: UnitScores, ids: list[LayerUnits], counts: list[LayerCount],
                protected: set[tuple[str, int, int]]) -> list[_Candidate]:
    out = []
    for layer, (units, count) in enumerate(zip(ids, counts, strict=True)):
        for kind, present, cost in (("head", units.heads, count.head_cost), ("neuron", units.neurons,
                                                                               count.neuron_cost)):
            for uid in present:
                s = scores.score(kind, layer, uid)
                if math.isnan(s):
                    raise ValueError(f"{kind} {uid} of layer {layer} is present but its score is nan")
                out.append(_Candidate(kind, layer, uid, s, cost, (kind, layer, uid) in protected))
    return sorted(out, key=lambda c: c.key)


def _check_scores(model: nn.Module, scores: UnitScores, n_layers: int) -> None:
    n_heads, n_neurons = dense_sizes(model)
    if len(scores.heads) != n_layers:
        raise ValueError(f"scores cover {len(scores.heads)} layers, the model has {n_layers}")
    for layer, (h, n) in enumerate(zip(scores.heads, scores.neurons, strict=True)):
        if len(h) != n_heads or len(n) != n_neurons:
            raise ValueError(
                f"layer {layer}: scores have {len(h)} heads/{len(n)} neurons, the dense model {n_heads}/"
                f"{n_neurons}; scores are indexed by ORIGINAL ids (use UnitScores.from_current for scores "
                "computed in the current order of a pruned model)")


def _reason(c: _Candidate, rank: int, n: int, scope: str, target: float) -> str:
    base = f"score {c.score:.4g} over {c.cost} params, rank {rank + 1} of {n} by importance per parameter ({scope})"
    if c.protected:
        return (f"protected unit removed: target {target:g} (with its head/neuron split) cannot be met "
                f"otherwise; {base}")
    return f"low importance per parameter: {base}"


def _check_args(target: float, allocation: str, split: str, protected: Collection[tuple[str, int, int]],
                neuron_multiple: int, whole_layers: int, min_heads: int) -> None:
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be in [0, 1), got {target}")
    if whole_layers < 0:
        raise ValueError(f"whole_layers must be at least 0, got {whole_layers}")
    if whole_layers and min_heads:
        raise ValueError(f"whole_layers={whole_layers} empties layers, which min_heads_per_layer={min_heads} forbids")
    if neuron_multiple < 1:
        raise ValueError(f"neuron_multiple must be at least 1, got {neuron_multiple}")
    if allocation not in ALLOCATIONS or split not in SPLITS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS} and split one of {SPLITS}, "
                         f"got {allocation!r}/{split!r}")
    for kind, _, _ in protected:
        if kind not in ("head", "neuron"):
            raise ValueError(f"protected kinds are 'head' and 'neuron', got {kind!r}")


def _fill(group: list[_Candidate], cnts: list[LayerCount], needed: float, state: _State, *, target: float,
          split: str) -> float:
    """Choose units of ``group`` (the candidates of the layers ``cnts``) worth at least ``needed`` parameters
    into ``state``; returns the parameters they free. Raises ``ValueError`` when the group cannot."""
    free = [c for c in group if not c.protected]
    got = 0
    if split == "proportional":  # heads to their own share (whole heads), neurons fill the rest
        # The shape is part of the target: each kind's pool lists its protected units last, so a
        # protected unit goes only when its own kind's share cannot be met by unprotected ones (rather
        # than the unprotected units of the other kind going instead, which would unbalance the layer).
        dense_heads = sum(c.dense_heads * c.head_cost for c in cnts)
        removed_heads = sum((c.dense_heads - c.heads) * c.head_cost for c in cnts)
        got = _select([c for c in group if c.kind == "head"], target * dense_heads - removed_heads, state,
                      nearest=True)
        got += _select([c for c in group if c.kind == "neuron"], needed - got, state, nearest=False)
    if got < needed:
        got += _select(free, needed - got, state, nearest=False)
    if got < needed:  # last resort: protected units, least important first
        got += _select([c for c in group if c.protected], needed - got, state, nearest=False)
    if got < needed:
        raise ValueError(f"target {target:g} is unreachable: {needed - got:.0f} more parameters would have to "
                         f"go but no removable units are left (min_heads_per_layer={state.min_heads})")
    return got


def layer_multiple(multiple: int, dense_neurons: int) -> int:
    """The neuron multiple a layer of ``dense_neurons`` FFN neurons is rounded to: ``multiple``, halved until
    it is at most a 16th of the layer (so rounding moves a layer by at most a 32nd of its width; MiniLM's
    1536 neurons keep 64, a 64-neuron test model gets 4)."""
    while multiple > 1 and 16 * multiple > dense_neurons:
        multiple //= 2
    return multiple


def _round_neurons(cands: list[_Candidate], ids: list[LayerUnits], counts: list[LayerCount], state: _State,
                   multiple: int) -> set[int]:
    """Make every layer keep a multiple of ``multiple`` (:func:`layer_multiple`) FFN neurons (the nearest one
    it can hold): take the least important kept neurons, or give back the most important ones this plan took.
    Returns the ids of the candidates taken for the rounding."""
    added: set[int] = set()
    for layer, units in enumerate(ids):
        multiple_here = layer_multiple(multiple, counts[layer].dense_neurons)
        present = len(units.neurons)
        mine = [c for c in state.chosen if c.kind == "neuron" and c.layer == layer]
        kept = present - len(mine)
        goal = multiple_here * math.floor(kept / multiple_here + 0.5)
        if goal > present:
            goal -= multiple_here
        if goal < kept:
            taken = {id(c) for c in state.chosen}
            more = [c for c in cands if c.kind == "neuron" and c.layer == layer and id(c) not in taken]
            for c in more[:kept - goal]:  # least important first (unprotected before protected)
                state.take(c)
                added.add(id(c))
        for c in sorted(mine, key=lambda c: c.key, reverse=True)[:max(goal - kept, 0)]:
            state.give_back(c)
    return added


def _unit_params(c: LayerCount) -> int:
    """What emptying layer ``c`` removes, counted from dense: every head and neuron (LayerNorms and output
    biases stay)."""
    return c.dense_heads * c.head_cost + c.dense_neurons * c.neuron_cost


def _empty_layers(cands: list[_Candidate], counts: list[LayerCount], target: float, whole_layers: int,
                  state: _State) -> tuple[list[int], dict[int, str]]:
    """Empty up to ``whole_layers`` layers in total (layers the model already holds empty count), never more
    than ``target`` holds, and none that would leave another layer already pruned beyond its new share (units a
    step removed cannot come back): take every unit of the chosen layers into ``state``. Returns the layers now
    empty (old and new) and, per unit candidate taken, its reason."""
    dense = sum(c.dense_params for c in counts)
    empty = [c.index for c in counts if c.heads == 0 and c.neurons == 0]
    fits, removed = [], sum(_unit_params(c) for c in counts if c.index in empty)
    by_layer = {c.index: [u for u in cands if u.layer == c.index] for c in counts if c.index not in empty}

    def key(layer: int) -> tuple:
        units = by_layer[layer]
        return (any(u.protected for u in units), sum(u.score for u in units) / max(1, sum(u.cost for u in units)),
                layer)

    ranked = sorted(by_layer, key=key)
    reasons: dict[int, str] = {}
    for rank, layer in enumerate(ranked):
        if len(empty) + len(fits) >= whole_layers:
            break
        units_dense = next(_unit_params(c) for c in counts if c.index == layer)
        if removed + units_dense > target * dense + 1e-9:
            break
        others = [c for c in counts if c.index not in empty and c.index not in fits and c.index != layer]
        share = (target * dense - removed - units_dense) / sum(c.dense_params for c in others)
        if any(c.dense_params - c.params > share * c.dense_params + c.neuron_cost for c in others):
            break
        fits.append(layer)
        removed += units_dense
        units = by_layer[layer]
        why = (f"whole layer {layer} emptied: rank {rank + 1} of {len(ranked)} layers by total score per parameter "
               f"({sum(u.score for u in units):.4g} over {sum(u.cost for u in units)} params)"
               + (", circuit units among them" if any(u.protected for u in units) else ""))
        for u in units:
            state.take(u)
            reasons[id(u)] = why
    return sorted(empty + fits), reasons


def plan_for_sparsity(model: nn.Module, scores: UnitScores, target: float, *, allocation: str = "global",
                      min_heads_per_layer: int = 0, protected: Collection[tuple[str, int, int]] = (),
                      split: str = "joint", neuron_multiple: int = 1, whole_layers: int = 0) -> PruningPlan:
    """A plan that brings the encoder (embeddings excluded) to ``target`` sparsity vs the DENSE model.

    ``model`` may already be pruned: only units it still holds are listed, and the plan removes what is
    missing to reach ``target`` in total. ``allocation="global"`` ranks units across all layers;
    ``"per_layer"`` makes every layer lose ``target`` of its own dense parameters. ``split="joint"`` lets
    heads and neurons compete; ``"proportional"`` removes ``target`` of the head parameters (rounded to
    whole heads) and fills the rest with neurons, which keeps layer shapes uniform. ``protected`` units
    ``("head"|"neuron", layer, original id)`` go last, only if the target is unreachable without them (with
    ``"proportional"``: if their kind's share is unreachable without them, so layers keep the split).
    ``neuron_multiple`` > 1 then rounds each layer's kept FFN neurons to the nearest multiple it can hold
    (shapes the matrix kernels like; at most a 16th of the layer, :func:`layer_multiple`): the sparsity is
    then near the target, not exactly on it (within half a multiple of neurons per layer).
    ``whole_layers`` > 0 first empties up to that many whole layers (see the module docstring); the other
    layers then share what is left of the target as ``allocation`` says.
    Raises ``ValueError`` if the target cannot be reached under ``min_heads_per_layer``.
    """
    _check_args(target, allocation, split, protected, neuron_multiple, whole_layers, min_heads_per_layer)
    counts, ids = layer_counts(model), unit_ids(model)
    _check_scores(model, scores, len(counts))
    cands = _candidates(scores, ids, counts, {(k, int(la), int(u)) for k, la, u in protected})
    dense = sum(c.dense_params for c in counts)
    already = sum(c.dense_params - c.params for c in counts)
    state = _State(heads_left={c.index: c.heads for c in counts}, min_heads=min_heads_per_layer, chosen=[])
    emptied, whole = _empty_layers(cands, counts, target, whole_layers, state) if whole_layers else ([], {})
    rest = [c for c in counts if c.index not in emptied]
    # the layers left share what the emptied ones do not cover, each toward the same sparsity
    rest_target = target if not emptied else max(
        0.0, target * dense - sum(_unit_params(c) for c in counts if c.index in emptied)) / sum(
        c.dense_params for c in rest)
    groups = [([c for c in cands if c.layer not in emptied], rest)] if allocation == "global" else [
        ([c for c in cands if c.layer == cnt.index], [cnt]) for cnt in rest]
    notes = [f"layers {emptied} emptied whole"] if emptied else []
    ranks: dict[int, tuple[int, int]] = {}
    excess = 0.0  # per_layer: what earlier layers removed beyond their share (rounding), carried forward
    for group, cnts in groups:
        share = rest_target * sum(c.dense_params for c in cnts) - sum(c.dense_params - c.params for c in cnts)
        needed = share - excess
        if needed <= 0:
            excess = -needed
            if allocation == "per_layer" and share <= 0:
                notes.append(f"layer {cnts[0].index} already beyond the target; nothing removed there")
            continue
        got = _fill(group, cnts, needed, state, target=rest_target, split=split)
        excess = got - needed
        ranks.update({id(c): (i, len(group)) for i, c in enumerate(group)})
    rounded = _round_neurons(cands, ids, counts, state, neuron_multiple) if neuron_multiple > 1 else set()
    if already >= target * dense:
        notes.append(f"model already at {already / dense:.4f} sparsity >= target {target:g}; nothing to remove")
    scope = "all layers" if allocation == "global" else "within its layer"
    decisions = tuple(
        UnitDecision(kind=c.kind, layer=c.layer, unit=c.unit, score=c.score, params=c.cost,
                     reason=whole[id(c)] if id(c) in whole
                     else (f"rounds the layer's neurons to a multiple of "
                           f"{layer_multiple(neuron_multiple, counts[c.layer].dense_neurons)} (least important "
                           f"kept neuron, score {c.score:.4g})") if id(c) in rounded
                     else _reason(c, *ranks[id(c)], scope, target))
        for c in sorted(state.chosen, key=lambda c: (c.layer, c.kind, c.unit)))
    heads: dict[int, list[int]] = {}
    neurons: dict[int, list[int]] = {}
    for c in state.chosen:
        (heads if c.kind == "head" else neurons).setdefault(c.layer, []).append(c.unit)
    removed = already + sum(c.cost for c in state.chosen)
    return PruningPlan(
        heads={k: tuple(v) for k, v in heads.items()}, neurons={k: tuple(v) for k, v in neurons.items()},
        decisions=decisions, target=target, method=scores.method, allocation=f"{allocation}/{split}",
        expected_sparsity=removed / dense, notes=tuple(notes), layers=tuple(emptied))
