"""Paired statistics for ablations, on per-query metrics (query id -> score), with scipy.

- :func:`paired_difference`: treatment - reference over the queries both have: mean, a seeded paired
  percentile bootstrap interval (:func:`scipy.stats.bootstrap`) and the two-sided Wilcoxon signed-rank p.
- :func:`retention_interval`: a seeded paired percentile bootstrap interval over queries of retention, the ratio
  of the pruned model's mean to the dense model's on the same resampled queries.
- :func:`retention_difference_interval`: the same for the difference of two models' retentions (float32 - int8).
- :func:`mean_over_seeds`: per-query means over seeds, taken *before* any paired comparison.
- :func:`holm`: Holm-Bonferroni adjusted p values for a family of comparisons.
- :func:`seed_summary`: mean, sd and t-interval of one number over seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

BOOTSTRAP_BATCH = 1000
"""Resamples drawn per batch (bounds memory at ``BOOTSTRAP_BATCH x queries`` floats)."""


@dataclass(frozen=True)
class PairedDifference:
    """treatment - reference over ``n`` common queries (``dropped``: queries only one side had, or NaN)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float
    """Two-sided Wilcoxon signed-rank test (zero differences dropped); 1.0 when every difference is 0."""
    resamples: int
    confidence: float
    dropped: int


def _differences(treatment: Mapping[str, float], reference: Mapping[str, float]) -> tuple[np.ndarray, int]:
    """Differences on the common queries with finite values (sorted by query id) and how many were left."""
    common = [q for q in sorted(treatment.keys() & reference.keys())
              if math.isfinite(treatment[q]) and math.isfinite(reference[q])]
    if not common:
        raise ValueError("treatment and reference have no query with a value on both sides")
    dropped = len(treatment.keys() | reference.keys()) - len(common)
    return np.array([treatment[q] - reference[q] for q in common], dtype=float), dropped


def bootstrap_interval(diffs: np.ndarray, *, resamples: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs``: queries resampled with replacement,
    ``numpy.random.default_rng(seed)``; (NaN, NaN) for a single query."""
    if len(diffs) < 2:
        return math.nan, math.nan
    res = stats.bootstrap((diffs,), np.mean, n_resamples=resamples, batch=BOOTSTRAP_BATCH, vectorized=True,
                          confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference(
    treatment: Mapping[str, float], reference: Mapping[str, float],
    *, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95,
) -> PairedDifference:
    """Paired comparison of two per-query metric maps (query id -> score) over the queries both have.

    Raises ValueError when no query has a finite value on both sides.
    """
    diffs, dropped = _differences(treatment, reference)
    low, high = bootstrap_interval(diffs, resamples=resamples, seed=seed, confidence=confidence)
    p = 1.0 if not diffs.any() else float(stats.wilcoxon(diffs, alternative="two-sided").pvalue)
    return PairedDifference(n=len(diffs), mean=float(diffs.mean()), ci_low=low, ci_high=high, p_value=p,
                            resamples=resamples, confidence=confidence, dropped=dropped)


def _ratio_of_means(pruned: np.ndarray, dense: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return pruned.mean(axis=axis) / dense.mean(axis=axis)


def retention_interval(pruned: Mapping[str, float], dense: Mapping[str, float], *, resamples: int = 10_000,
                       seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """How far retention (mean pruned / mean dense nDCG@10) could move with another sample of queries:
    percentile bootstrap interval of the ratio, queries resampled with replacement and paired (a resample
    takes a query's pruned and dense values together), ``numpy.random.default_rng(seed)``. Over the queries
    both sides have; (NaN, NaN) for fewer than two. A resample that draws only queries the dense model scores 0
    has no finite ratio (0/0, or x/0) and is left out of the quantiles (cacm's 6 dev queries include one: about
    1 resample in 47 000), instead of turning the whole interval into NaN."""
    return _paired_interval((pruned, dense), _ratio_of_means, resamples=resamples, seed=seed, confidence=confidence)


def retention_difference_interval(first: Mapping[str, float], second: Mapping[str, float],
                                  dense: Mapping[str, float], *, resamples: int = 10_000, seed: int = 0,
                                  confidence: float = 0.95) -> tuple[float, float]:
    """How far the difference of two models' retentions on the same queries, ``(mean first - mean second) /
    mean dense`` (e.g. a float32 model and its int8 copy), could move with another sample of queries: the
    percentile bootstrap interval of :func:`retention_interval`, each resample taking a query's three values
    together, over the queries all three have."""
    return _paired_interval((first, second, dense), _difference_over_mean, resamples=resamples, seed=seed,
                            confidence=confidence)


def _difference_over_mean(first: np.ndarray, second: np.ndarray, dense: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (first.mean(axis=axis) - second.mean(axis=axis)) / dense.mean(axis=axis)


def _paired_interval(samples: Sequence[Mapping[str, float]], statistic, *, resamples: int, seed: int,
                     confidence: float) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over paired resamples of the queries every map has (finite values),
    resamples without a finite value left out; (NaN, NaN) for fewer than two queries or no finite resample."""
    common = [q for q in sorted(set.intersection(*(set(m) for m in samples)))
              if all(math.isfinite(m[q]) for m in samples)]
    if len(common) < 2:
        return math.nan, math.nan
    columns = tuple(np.array([m[q] for q in common], dtype=float) for m in samples)
    with warnings.catch_warnings():  # scipy's own interval and standard error are NaN when a ratio is not finite;
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # the quantiles below leave those out
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(columns, statistic, paired=True, vectorized=True, n_resamples=resamples,
                              batch=BOOTSTRAP_BATCH, confidence_level=confidence, method="percentile",
                              rng=np.random.default_rng(seed))
    values = res.bootstrap_distribution
    defined = values[np.isfinite(values)]
    if defined.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def mean_over_seeds(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-query mean over seeds, for the queries every seed scored (NaN counts as missing)."""
    if not per_seed:
        raise ValueError("no seeds")
    table = pd.DataFrame([dict(m) for m in per_seed]).dropna(axis=1)  # one row per seed, one column per query
    return {str(q): float(v) for q, v in table.mean(axis=0).sort_index().items()}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p values, in input order: the i-th smallest p times (m - i + 1), made
    non-decreasing along the sorted order and capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p values must lie in [0, 1]: {list(pvalues)}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return adjusted.tolist()


@dataclass(frozen=True)
class SeedSummary:
    """One number over ``n`` seeds: mean, sample sd (ddof=1) and the t-interval of the mean."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    confidence: float


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n); sd and interval are NaN for a single seed."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("no values")
    mean = float(v.mean())
    if len(v) == 1:
        return SeedSummary(1, mean, math.nan, math.nan, math.nan, confidence)
    sd = float(v.std(ddof=1))
    if sd == 0.0:  # scipy wants a positive scale; every seed agreed
        low, high = mean, mean
    else:
        low, high = stats.t.interval(confidence, df=len(v) - 1, loc=mean, scale=sd / math.sqrt(len(v)))
    return SeedSummary(len(v), mean, sd, float(low), float(high), confidence)
