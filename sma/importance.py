"""Unit importance for the pruning criterion, from the mechanistic analysis (its parts in the project cache)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sma.cache import cache_root
from sma.config import RunConfig
from sma.data import RetrievalData
from sma.model import BiEncoder
from sma.prune import UnitScores


@dataclass(frozen=True)
class Importance:
    scores: dict[str, UnitScores]
    """By analysis method (``ablation``, ``attribution``, ``magnitude``, ``random``, ``mechanistic``)."""
    circuit: frozenset[tuple[str, int, int]]
    """Units the circuit analysis says must survive: ``("head"|"neuron", layer, original id)``."""

    def scores_for(self, criterion: str) -> UnitScores:
        if criterion not in self.scores:
            raise ValueError(f"criterion {criterion!r} not analysed; have {', '.join(sorted(self.scores))}")
        return self.scores[criterion]


MECHANISTIC_SOURCE = "attribution"
"""The analysis method behind the ``mechanistic`` criterion (its scores and its circuit)."""


def get_importance(cfg: RunConfig, data: RetrievalData, teacher: BiEncoder, *,
                   out_dir: Path | None = None) -> Importance:
    """Run (or load from cache) the mechanistic analysis of the teacher on the probe (``cfg.analysis``).

    ``out_dir`` receives ``phase1/`` (scores, circuits, plots)."""
    from sma.circuits import run_analysis

    # Analyse only what the criterion needs: one-unit-at-a-time ablation is the expensive method.
    wanted = MECHANISTIC_SOURCE if cfg.prune.criterion == "mechanistic" else cfg.prune.criterion
    acfg = dataclasses.replace(cfg.analysis, methods=(wanted,))
    result = run_analysis(teacher, data, acfg, out_dir, cache_dir=cache_root(cfg.cache_dir))  # the project cache
    scores = dict(result.scores)
    source = MECHANISTIC_SOURCE if MECHANISTIC_SOURCE in scores else next(iter(scores))
    scores.setdefault("mechanistic", scores[source])
    return Importance(scores=scores, circuit=frozenset(result.circuit(source)))
