"""analysis.pareto: fronts against hand-computed sets (ties, duplicates, NaN, one point, empty, min/max),
hypervolumes against hand-computed areas, the reference front, and selection on dev."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.pareto import (
    AXES,
    DUPLICATES_COLUMN,
    REFERENCE_FRONT,
    hypervolume,
    pareto_front,
    reference_hypervolume,
    reference_point,
    select_on_dev,
    versus_reference,
)


def _points(df: pd.DataFrame, x: str = "x", y: str = "y") -> list[tuple[float, float]]:
    return list(zip(df[x].tolist(), df[y].tolist(), strict=True))


def test_front_max_max_drops_points_dominated_with_a_tie_on_one_axis():
    df = pd.DataFrame({
        "run_id": list("abcdef"),
        "x": [0.3, 0.5, 0.5, 0.4, 0.7, 0.2],
        "y": [0.9, 0.8, 0.7, 0.8, 0.6, 0.85],
    })
    front = pareto_front(df, "x", "y")
    # c: same x as b, lower y; d: same y as b, lower x; f: below and left of a
    assert front["run_id"].tolist() == ["a", "b", "e"]
    assert _points(front) == [(0.3, 0.9), (0.5, 0.8), (0.7, 0.6)]
    assert front.index.tolist() == [0, 1, 4]  # the input's index is kept
    assert front[DUPLICATES_COLUMN].tolist() == [0, 0, 0]
    assert list(front.columns) == ["run_id", "x", "y", DUPLICATES_COLUMN]


def test_duplicate_points_appear_once_first_row_kept_and_counted():
    df = pd.DataFrame({
        "run_id": ["late", "first", "second", "third", "low", "low2"],
        "x": [0.7, 0.5, 0.5, 0.5, 0.1, 0.1],
        "y": [0.6, 0.8, 0.8, 0.8, 0.1, 0.1],
    })
    front = pareto_front(df, "x", "y")
    assert front["run_id"].tolist() == ["first", "late"]
    assert front[DUPLICATES_COLUMN].tolist() == [2, 0]


def test_equal_on_both_axes_but_one_is_strictly_better_elsewhere():
    df = pd.DataFrame({"x": [0.5, 0.6, 0.6], "y": [0.8, 0.8, 0.7]})
    assert _points(pareto_front(df, "x", "y")) == [(0.6, 0.8)]


def test_min_directions():
    df = pd.DataFrame({"memory_ratio": [0.5, 0.4, 0.6, 0.45, 0.7],
                       "retention": [0.9, 0.85, 0.95, 0.8, 0.95]})
    front = pareto_front(df, "memory_ratio", "retention", x_better="min", y_better="max")
    assert _points(front, "memory_ratio", "retention") == [(0.4, 0.85), (0.5, 0.9), (0.6, 0.95)]
    both_min = pareto_front(df, "memory_ratio", "retention", x_better="min", y_better="min")
    assert _points(both_min, "memory_ratio", "retention") == [(0.4, 0.85), (0.45, 0.8)]
    x_max_y_min = pareto_front(df, "memory_ratio", "retention", x_better="max", y_better="min")
    assert _points(x_max_y_min, "memory_ratio", "retention") == [(0.45, 0.8), (0.5, 0.9), (0.7, 0.95)]


def test_nan_rows_ignored_one_point_and_empty_input():
    df = pd.DataFrame({"x": [0.3, np.nan, 0.9, 0.2], "y": [0.5, 0.99, np.nan, 0.4]})
    assert _points(pareto_front(df, "x", "y")) == [(0.3, 0.5)]
    one = pareto_front(df.iloc[:1], "x", "y")
    assert _points(one) == [(0.3, 0.5)] and one[DUPLICATES_COLUMN].tolist() == [0]
    for empty in (df.iloc[:0], df.iloc[[1, 2]]):
        out = pareto_front(empty, "x", "y")
        assert out.empty and list(out.columns) == ["x", "y", DUPLICATES_COLUMN]


def test_unknown_direction_rejected():
    with pytest.raises(ValueError, match="direction"):
        pareto_front(pd.DataFrame({"x": [1.0], "y": [1.0]}), "x", "y", x_better="up")


def test_front_matches_brute_force_dominance_on_random_points():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": rng.integers(0, 6, 60) / 5, "y": rng.integers(0, 6, 60) / 5})
    pts = df.drop_duplicates().to_numpy()

    def dominated(p):
        return any((q[0] >= p[0]) and (q[1] <= p[1]) and (q != p).any() for q in pts)  # x max, y min

    expected = sorted(tuple(p) for p in pts if not dominated(p))
    assert sorted(_points(pareto_front(df, "x", "y", x_better="max", y_better="min"))) == expected


def test_hypervolume_by_hand():
    staircase = [(1, 3), (2, 2), (3, 1)]
    assert hypervolume(staircase, reference=(0, 0)) == pytest.approx(3 * 1 + 2 * 1 + 1 * 1)
    # (1, 3) is not beyond x_ref = 1.5; (2, 2) adds 0.5 x 2, (3, 1) adds 1.5 x 1 minus the 0.5 x 1 overlap
    assert hypervolume(staircase, reference=(1.5, 0)) == pytest.approx(2.0)
    # dominated points, duplicates and points worse than the reference add nothing
    padded = staircase + [(1, 1), (2, 2), (-1, 5), (5, -1)]
    assert hypervolume(padded, reference=(0, 0)) == pytest.approx(6.0)
    assert hypervolume([], reference=(0, 0)) == 0.0
    assert hypervolume([(0, 5)], reference=(0, 0)) == 0.0  # on the reference: zero width


def test_hypervolume_min_direction_and_dataframe_input():
    df = pd.DataFrame({"memory_ratio": [0.5, 0.8, np.nan, 1.2], "retention": [0.9, 0.95, 1.0, 1.0]})
    hv = hypervolume(df, "memory_ratio", "retention", reference=(1.0, 0.0), x_better="min")
    assert hv == pytest.approx(0.5 * 0.9 + 0.2 * 0.05)  # NaN row dropped; 1.2 is worse than the reference
    both_min = hypervolume([(0.5, 0.2), (0.2, 0.5)], reference=(1, 1), x_better="min", y_better="min")
    assert both_min == pytest.approx(0.5 * 0.8 + 0.3 * 0.5)
    with pytest.raises(ValueError, match="name the x and y"):
        hypervolume(df, reference=(1.0, 0.0))


def test_hypervolume_of_points_equals_that_of_their_front_and_optunas():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.random(40), "y": rng.random(40)})
    hv = hypervolume(df, "x", "y", reference=(0, 0))
    assert hv == pytest.approx(hypervolume(pareto_front(df, "x", "y"), "x", "y", reference=(0, 0)))
    try:
        from optuna._hypervolume import compute_hypervolume  # private: a cross-check only
    except ImportError:
        pytest.skip("optuna's private hypervolume moved")
    assert hv == pytest.approx(compute_hypervolume(-df[["x", "y"]].to_numpy(), np.zeros(2)))


def test_reference_front_and_its_hypervolumes():
    assert REFERENCE_FRONT.to_dict("list") == {
        "sparsity": [0.3, 0.5, 0.7], "retention": [0.852, 0.815, 0.700], "speedup": [1.4, 2.0, 2.8]}
    assert reference_point("sparsity", "retention") == ((0.0, 0.0), "max", "max")
    assert reference_point("speedup", "memory_ratio") == ((1.0, 1.0), "max", "min")
    assert AXES["memory_ratio"].better == "min"
    assert reference_hypervolume() == pytest.approx(0.7 * 0.7 + 0.5 * 0.115 + 0.3 * 0.037)
    # retention over speedup counted from 1x
    assert reference_hypervolume("speedup", "retention") == pytest.approx(1.8 * 0.7 + 1.0 * 0.115 + 0.4 * 0.037)
    with pytest.raises(KeyError, match="no reference value"):
        reference_point("sparsity", "latency_ms")


def test_versus_reference():
    ours = pd.DataFrame({"actual_sparsity": [0.5, 0.7], "test_retention": [0.9, 0.8]})
    cmp = versus_reference(ours)
    assert cmp.ours == pytest.approx(0.7 * 0.8 + 0.5 * 0.1)
    assert cmp.reference == pytest.approx(0.5586)
    assert cmp.reference_point == (0.0, 0.0) and cmp.ratio == pytest.approx(0.61 / 0.5586)
    with pytest.raises(ValueError, match="not read the same way"):
        versus_reference(ours, "actual_sparsity", "test_retention", reference_x="speedup")


def test_select_on_dev_best_per_group_ties_to_first_run_id():
    df = pd.DataFrame({
        "target": [0.3, 0.3, 0.3, 0.5, 0.5, 0.7],
        "run_id": ["r3", "r2", "r1", "r5", "r4", "r6"],
        "dev_retention": [0.90, 0.95, 0.95, 0.80, np.nan, np.nan],
        "test_retention": [0.99, 0.91, 0.93, 0.82, 0.99, 0.99],
    })
    chosen = select_on_dev(df, ["target"])
    assert chosen["run_id"].tolist() == ["r1", "r5"]  # r2/r1 tie on dev: r1; NaN dev never chosen
    assert chosen["test_retention"].tolist() == [0.93, 0.82]  # test shown at the dev-chosen point
    assert list(chosen.columns) == list(df.columns)
    worst = select_on_dev(df, ["target"], better="min")
    assert worst["run_id"].tolist() == ["r3", "r5"]
    no_ids = select_on_dev(df.drop(columns="run_id"), ["target"])
    assert no_ids["test_retention"].tolist() == [0.91, 0.82]  # without run ids: input order breaks the tie
    assert math.isclose(select_on_dev(df, ["target", "run_id"])["dev_retention"].sum(), 0.9 + 0.95 * 2 + 0.8)
