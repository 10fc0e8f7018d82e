"""analysis.stats: the paired bootstrap against a hand-written one with the same seed, Wilcoxon against
scipy on the same differences, means over seeds, Holm and the t-interval by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from analysis.stats import (
    BOOTSTRAP_BATCH,
    holm,
    mean_over_seeds,
    paired_difference,
    retention_difference_interval,
    retention_interval,
    seed_summary,
)

TREATMENT = {"q3": 0.70, "q1": 0.50, "q2": 0.90, "q5": 0.40, "q4": 0.65, "q6": 0.80, "only_t": 1.0}
REFERENCE = {"q1": 0.45, "q2": 0.60, "q3": 0.72, "q4": 0.50, "q5": 0.41, "q6": 0.55, "only_r": 0.0}
DIFFS = [0.50 - 0.45, 0.90 - 0.60, 0.70 - 0.72, 0.65 - 0.50, 0.40 - 0.41, 0.80 - 0.55]  # q1 .. q6


def hand_bootstrap(diffs, resamples, seed, confidence):
    """Resample queries with replacement in batches of BOOTSTRAP_BATCH; percentile interval of the mean."""
    rng = np.random.default_rng(seed)
    d = np.asarray(diffs)
    means = []
    for start in range(0, resamples, BOOTSTRAP_BATCH):
        idx = rng.integers(0, len(d), size=(min(BOOTSTRAP_BATCH, resamples - start), len(d)))
        means.append(d[idx].mean(axis=1))
    alpha = (1 - confidence) / 2
    return np.quantile(np.concatenate(means), [alpha, 1 - alpha])


def test_paired_difference_matches_hand_bootstrap_and_scipy_wilcoxon():
    res = paired_difference(TREATMENT, REFERENCE, resamples=2500, seed=7, confidence=0.9)
    assert res.n == 6 and res.dropped == 2 and res.resamples == 2500 and res.confidence == 0.9
    assert res.mean == pytest.approx(np.mean(DIFFS))
    low, high = hand_bootstrap(DIFFS, 2500, 7, 0.9)  # query ids sorted: q1 .. q6
    assert (res.ci_low, res.ci_high) == pytest.approx((low, high), abs=1e-12)
    assert res.ci_low < res.mean < res.ci_high
    assert res.p_value == pytest.approx(stats.wilcoxon(DIFFS).pvalue)


def test_bootstrap_is_seeded():
    a = paired_difference(TREATMENT, REFERENCE, resamples=500, seed=1)
    assert a == paired_difference(TREATMENT, REFERENCE, resamples=500, seed=1)
    b = paired_difference(TREATMENT, REFERENCE, resamples=500, seed=2)
    assert (a.ci_low, a.ci_high) != (b.ci_low, b.ci_high)


def test_two_query_bootstrap_by_enumeration():
    # with 2 queries a resample's mean is d1, (d1+d2)/2 or d2 with probabilities 1/4, 1/2, 1/4: the
    # 2.5 % and 97.5 % quantiles of many resamples are d1 and d2
    res = paired_difference({"a": 1.0, "b": 3.0}, {"a": 0.0, "b": 0.0}, resamples=4000, seed=0)
    assert (res.ci_low, res.ci_high) == (1.0, 3.0) and res.mean == 2.0


def test_all_zero_differences_give_p_one_and_a_point_interval():
    for n in (3, 40):  # scipy alone gives p = 1 for 3 zeros but NaN for 40 (normal approximation)
        same = {f"q{i}": i / n for i in range(n)}
        res = paired_difference(same, dict(same), resamples=200)
        assert res.p_value == 1.0 and res.mean == 0.0 and (res.ci_low, res.ci_high) == (0.0, 0.0)


def test_missing_and_nan_queries_dropped_none_common_rejected_single_query():
    res = paired_difference({"a": 1.0, "b": math.nan, "c": 0.5}, {"a": 0.5, "b": 0.2, "c": 0.5, "d": 1.0},
                            resamples=100)
    assert res.n == 2 and res.dropped == 2 and res.mean == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no query"):
        paired_difference({"a": 1.0}, {"b": 1.0})
    one = paired_difference({"a": 1.0}, {"a": 0.5})
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.ci_low) and math.isnan(one.ci_high)


def test_mean_over_seeds_per_query_over_queries_every_seed_has():
    per_seed = [{"q1": 0.2, "q2": 0.4, "q3": 1.0}, {"q2": 0.6, "q1": 0.4, "q4": 0.0},
                {"q1": 0.6, "q2": 0.8, "q3": math.nan}]
    assert mean_over_seeds(per_seed) == pytest.approx({"q1": 0.4, "q2": 0.6})
    assert mean_over_seeds([{"a": 0.1}]) == {"a": 0.1}
    with pytest.raises(ValueError):
        mean_over_seeds([])


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, monotone
    assert holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])  # ties
    assert holm([0.2]) == [0.2] and holm([]) == []
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_seed_summary_t_interval_by_hand():
    s = seed_summary([0.80, 0.84, 0.82, 0.86])
    sd = math.sqrt((0.03**2 + 0.01**2 + 0.01**2 + 0.03**2) / 3)
    t_975_3 = 3.182446305284263  # t table: 97.5 % quantile, 3 degrees of freedom
    half = t_975_3 * sd / math.sqrt(4)
    assert (s.n, s.mean, s.sd) == pytest.approx((4, 0.83, sd))
    assert (s.ci_low, s.ci_high) == pytest.approx((0.83 - half, 0.83 + half))
    s90 = seed_summary([1.0, 2.0], confidence=0.9)  # t_{0.95, 1} = 6.313751514675043, sd = sqrt(0.5)
    assert s90.ci_high == pytest.approx(1.5 + 6.313751514675043 * math.sqrt(0.5) / math.sqrt(2))


def test_seed_summary_one_seed_constant_seeds_and_none():
    one = seed_summary([0.9])
    assert one.n == 1 and one.mean == 0.9 and all(math.isnan(v) for v in (one.sd, one.ci_low, one.ci_high))
    flat = seed_summary([0.5, 0.5, 0.5])
    assert (flat.sd, flat.ci_low, flat.ci_high) == (0.0, 0.5, 0.5)
    with pytest.raises(ValueError):
        seed_summary([])


def test_retention_interval_by_enumeration_and_pairing():
    # two queries: a resample's retention is 0.5 / 1.0, (0.5 + 0.8) / (1.0 + 0.8) or 0.8 / 0.8, with
    # probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 % quantiles are 0.5 and 1.0
    low, high = retention_interval({"a": 0.5, "b": 0.8}, {"a": 1.0, "b": 0.8, "only_dense": 0.3}, resamples=4000)
    assert (low, high) == pytest.approx((0.5, 1.0), abs=1e-12)
    # pruned = 0.9 x dense on every query: every paired resample has retention 0.9 (resampling the two sides
    # apart would give anything from 0.18 / 1.0 to 0.9 / 0.2)
    low, high = retention_interval({"a": 0.9, "b": 0.18, "c": 0.45}, {"a": 1.0, "b": 0.2, "c": 0.5})
    assert (low, high) == pytest.approx((0.9, 0.9))
    assert all(math.isnan(x) for x in retention_interval({"a": 0.5}, {"a": 1.0}))


def test_retention_difference_interval_by_enumeration_and_pairing():
    # float32 a 0.5, b 0.8; int8 a 0.4, b 0.8; dense a 1.0, b 0.8. A resample of (a, a) loses 0.1 / 1.0, (a, b)
    # or (b, a) 0.1 / 1.8 and (b, b) nothing, with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 % quantiles
    # are the extremes, 0 and 0.1
    low, high = retention_difference_interval({"a": 0.5, "b": 0.8}, {"a": 0.4, "b": 0.8, "only_int8": 0.1},
                                              {"a": 1.0, "b": 0.8, "only_dense": 0.3}, resamples=4000)
    assert (low, high) == pytest.approx((0.0, 0.1), abs=1e-12)
    # int8 = float32 - 0.05 x dense on every query: every paired resample loses exactly 0.05 (resampling the
    # three apart would not)
    float32, dense = {"a": 0.9, "b": 0.3, "c": 0.6}, {"a": 1.0, "b": 0.4, "c": 0.8}
    int8 = {q: float32[q] - 0.05 * dense[q] for q in dense}
    low, high = retention_difference_interval(float32, int8, dense)
    assert (low, high) == pytest.approx((0.05, 0.05))
    assert all(math.isnan(x) for x in retention_difference_interval({"a": 0.5}, {"a": 0.4}, {"a": 1.0}))


def test_retention_interval_leaves_out_resamples_without_a_dense_score():
    # the dense model scores 0 on a: a resample of (a, a) is 0 / 0 (a quarter of them); (a, b), (b, a) and
    # (b, b) all give 0.5 / 1.0 or 1.0 / 2.0 = 0.5. One undefined resample must not make the interval NaN.
    low, high = retention_interval({"a": 0.0, "b": 1.0}, {"a": 0.0, "b": 2.0}, resamples=400)
    assert (low, high) == pytest.approx((0.5, 0.5), abs=1e-12)
    assert all(math.isnan(x) for x in retention_interval({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.0}))
    # pruned finds a where dense scores 0: (a, a) is 0.4 / 0, left out like 0 / 0; (b, b) is 0.5 / 1.0 and
    # (a, b) 0.45 / 0.5 = 0.9 (two thirds of the rest), so the 2.5 % and 97.5 % quantiles are 0.5 and 0.9
    low, high = retention_interval({"a": 0.4, "b": 0.5}, {"a": 0.0, "b": 1.0}, resamples=2000)
    assert (low, high) == pytest.approx((0.5, 0.9), abs=1e-12)


def test_retention_interval_matches_a_hand_bootstrap_with_the_same_seed():
    p = np.array([0.5, 0.9, 0.7, 0.65, 0.4, 0.8])
    d = np.array([0.45, 0.6, 0.72, 0.5, 0.41, 0.55])
    pruned = {f"q{i + 1}": float(v) for i, v in enumerate(p)}  # q1 .. q6: sorted ids keep this order
    dense = {f"q{i + 1}": float(v) for i, v in enumerate(d)}
    rng = np.random.default_rng(3)
    ratios = []
    for start in range(0, 2500, BOOTSTRAP_BATCH):
        idx = rng.integers(0, 6, size=(min(BOOTSTRAP_BATCH, 2500 - start), 6))
        ratios.append(p[idx].mean(axis=1) / d[idx].mean(axis=1))
    expected = np.quantile(np.concatenate(ratios), [0.05, 0.95])
    assert retention_interval(pruned, dense, resamples=2500, seed=3, confidence=0.9) == pytest.approx(
        tuple(expected), abs=1e-12)
