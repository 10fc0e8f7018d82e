"""Unit importance for the pruning criterion, from the mechanistic analysis (cached there)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sma.baseline import Baseline
from sma.config import RunConfig
from sma.data import RetrievalData
from sma.model import BiEncoder
from sma.prune import UnitScores

CRITERIA = ("mechanistic", "attribution", "ablation", "magnitude", "random")


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


def get_importance(cfg: RunConfig, data: RetrievalData, baseline: Baseline, teacher: BiEncoder, *,
                   out_dir: Path | None = None) -> Importance:
    """Run (or load from cache) the mechanistic analysis of the teacher on the train/dev probe."""
    from sma.circuits import run_analysis

    if cfg.prune.criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {cfg.prune.criterion!r}")
    result = run_analysis(teacher, data, cfg.analysis, out_dir=out_dir, cache_dir=cfg.cache_dir,
                          model_key=baseline.key)
    return Importance(scores=dict(result.scores), circuit=frozenset(result.circuit))
