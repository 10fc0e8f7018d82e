"""The data of pruning decisions: unit scores in, a :class:`PruningPlan` out (JSON both ways).

Ids are always ORIGINAL ids of the dense model (see :mod:`sma.prune.units`). A plan decides nothing by
itself being built: :func:`sma.prune.apply_plan` makes it real, :func:`sma.prune.masked` simulates it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sma.prune.units import dense_sizes, unit_ids


def _floats(rows: Iterable[Any]) -> tuple[tuple[float, ...], ...]:
    out = []
    for row in rows:
        if isinstance(row, torch.Tensor):
            row = row.detach().float().cpu().tolist()
        out.append(tuple(float(x) for x in row))
    return tuple(out)


@dataclass(frozen=True)
class UnitScores:
    """Importance per unit, higher = more important, indexed ``[layer][original id]`` of the dense model.

    Units a partly pruned model no longer holds may carry ``nan``. Lists and tensors are accepted and
    stored as tuples of floats.
    """

    heads: tuple[tuple[float, ...], ...]
    neurons: tuple[tuple[float, ...], ...]
    method: str = "unknown"

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", _floats(self.heads))
        object.__setattr__(self, "neurons", _floats(self.neurons))
        if len(self.heads) != len(self.neurons):
            raise ValueError(f"scores cover {len(self.heads)} layers of heads but {len(self.neurons)} of neurons")

    @classmethod
    def from_current(cls, model: nn.Module, *, heads: Sequence[Sequence[float] | torch.Tensor],
                     neurons: Sequence[Sequence[float] | torch.Tensor], method: str,
                     fill: float = math.nan) -> UnitScores:
        """Scores given in the CURRENT unit order of a (possibly pruned) model, mapped to original ids."""
        n_heads, n_neurons = dense_sizes(model)
        out_h, out_n = [], []
        for layer, units in enumerate(unit_ids(model)):
            h, n = [fill] * n_heads, [fill] * n_neurons
            for uid, s in zip(units.heads, _floats([heads[layer]])[0], strict=True):
                h[uid] = s
            for uid, s in zip(units.neurons, _floats([neurons[layer]])[0], strict=True):
                n[uid] = s
            out_h.append(tuple(h))
            out_n.append(tuple(n))
        return cls(heads=tuple(out_h), neurons=tuple(out_n), method=method)

    def score(self, kind: str, layer: int, unit: int) -> float:
        return (self.heads if kind == "head" else self.neurons)[layer][unit]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "heads": [list(r) for r in self.heads],
                "neurons": [list(r) for r in self.neurons]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitScores:
        return cls(heads=data["heads"], neurons=data["neurons"], method=data.get("method", "unknown"))

    @classmethod
    def from_json(cls, text: str) -> UnitScores:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class UnitDecision:
    """Why one unit is removed: its score, its parameter count and a human-readable reason."""

    kind: str
    layer: int
    unit: int
    score: float | None = None
    params: int = 0
    reason: str = ""


def _ids_by_layer(raw: Mapping[Any, Iterable[int]], kind: str) -> dict[int, tuple[int, ...]]:
    out: dict[int, tuple[int, ...]] = {}
    for layer, ids in raw.items():
        ids = [int(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"layer {layer}: duplicate {kind} ids {sorted(ids)}")
        if any(i < 0 for i in ids) or int(layer) < 0:
            raise ValueError(f"layer {layer}: negative {kind} id or layer in {ids}")
        if ids:
            out[int(layer)] = tuple(sorted(ids))
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class PruningPlan:
    """Heads and FFN neurons to remove, per layer, in ORIGINAL ids; plus why (``decisions``).

    ``PruningPlan(heads={0: (1, 3)}, neurons={2: tuple(range(64))})`` is a complete manual plan; the
    other fields are filled by :func:`plan_for_sparsity`. A layer may lose all its heads or neurons.
    """

    heads: dict[int, tuple[int, ...]] = field(default_factory=dict)
    neurons: dict[int, tuple[int, ...]] = field(default_factory=dict)
    decisions: tuple[UnitDecision, ...] = ()
    target: float | None = None
    method: str = "manual"
    allocation: str | None = None
    expected_sparsity: float | None = None
    """Encoder sparsity (vs the dense model, embeddings excluded) once this plan is applied."""
    notes: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    """Layers this plan leaves empty, chosen whole (``whole_layers``; their units are in ``heads``/``neurons``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(sorted(int(x) for x in self.layers)))
        object.__setattr__(self, "heads", _ids_by_layer(self.heads, "head"))
        object.__setattr__(self, "neurons", _ids_by_layer(self.neurons, "neuron"))
        object.__setattr__(self, "decisions", tuple(self.decisions))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def num_heads(self) -> int:
        return sum(len(v) for v in self.heads.values())

    @property
    def num_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    @property
    def is_empty(self) -> bool:
        return not self.heads and not self.neurons

    def decision(self, kind: str, layer: int, unit: int) -> UnitDecision | None:
        for d in self.decisions:
            if (d.kind, d.layer, d.unit) == (kind, layer, unit):
                return d
        return None

    def union(self, other: PruningPlan) -> PruningPlan:
        """Both plans' units (as a manual plan): what two successive steps remove in total."""
        def merge(a: Mapping[int, tuple[int, ...]], b: Mapping[int, tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
            return {k: tuple(sorted(set(a.get(k, ())) | set(b.get(k, ())))) for k in set(a) | set(b)}

        return PruningPlan(heads=merge(self.heads, other.heads), neurons=merge(self.neurons, other.neurons),
                           decisions=self.decisions + other.decisions, method=f"{self.method}+{other.method}",
                           layers=tuple(set(self.layers) | set(other.layers)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": {str(k): list(v) for k, v in self.heads.items()},
            "neurons": {str(k): list(v) for k, v in self.neurons.items()},
            "decisions": [asdict(d) for d in self.decisions],
            "target": self.target, "method": self.method, "allocation": self.allocation,
            "expected_sparsity": self.expected_sparsity, "notes": list(self.notes), "layers": list(self.layers),
        }

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        return cls(
            heads={int(k): tuple(v) for k, v in data.get("heads", {}).items()},
            neurons={int(k): tuple(v) for k, v in data.get("neurons", {}).items()},
            decisions=tuple(UnitDecision(**d) for d in data.get("decisions", ())),
            target=data.get("target"), method=data.get("method", "manual"), allocation=data.get("allocation"),
            expected_sparsity=data.get("expected_sparsity"), notes=tuple(data.get("notes", ())),
            layers=tuple(data.get("layers", ())),
        )

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """A short per-layer table for logs."""
        head = (f"PruningPlan(method={self.method}, allocation={self.allocation}, target={self.target}, "
                f"expected_sparsity={_pct(self.expected_sparsity)}): {self.num_heads} heads, "
                f"{self.num_neurons} neurons")
        lines = [head]
        for layer in sorted(set(self.heads) | set(self.neurons)):
            h, n = self.heads.get(layer, ()), self.neurons.get(layer, ())
            lines.append(f"  layer {layer:>2}: -{len(h):>3} heads {list(h)}  -{len(n):>5} neurons"
                         + ("  (whole layer)" if layer in self.layers else ""))
        protected = [d for d in self.decisions if d.reason.startswith("protected")]
        if protected:
            lines.append(f"  {len(protected)} protected units had to be removed to meet the target")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"

