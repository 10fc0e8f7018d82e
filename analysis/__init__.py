"""Analysis of pruned models' results: Pareto fronts, paired ablation statistics, Optuna study reports.

Modules (none imports torch or Ray: pandas, numpy, scipy, matplotlib and optuna only):

- :mod:`analysis.pareto`: Pareto fronts, 2-D hypervolume, the published reference front, dev selection.
- :mod:`analysis.stats`: paired bootstrap + Wilcoxon on per-query metrics, means over seeds, Holm,
  seed summaries with t-intervals.
- :mod:`analysis.studies`: one Optuna study's trials table, best trial, importances and plots.
"""

from analysis.pareto import (
    AXES,
    REFERENCE_FRONT,
    hypervolume,
    pareto_front,
    reference_hypervolume,
    select_on_dev,
    versus_reference,
)
from analysis.stats import holm, mean_over_seeds, paired_difference, seed_summary

__all__ = [
    "AXES",
    "REFERENCE_FRONT",
    "holm",
    "hypervolume",
    "mean_over_seeds",
    "paired_difference",
    "pareto_front",
    "reference_hypervolume",
    "seed_summary",
    "select_on_dev",
    "versus_reference",
]
