"""Pareto fronts of pruned models, their 2-D hypervolume, and the published front to beat.

- :func:`pareto_front`: the non-dominated rows of a results table on two columns (each maximised or
  minimised), duplicates folded into one row that counts them in ``n_duplicates``.
- :func:`hypervolume`: the area a set of points dominates up to a reference (nadir) point.
- :data:`AXES`: each known column's direction and reference value; :func:`reference_point` pairs them.
- :data:`REFERENCE_FRONT`, :func:`reference_hypervolume`, :func:`versus_reference`: the original research
  code's published front and "ours vs the reference" on the same axes and reference point.
- :func:`select_on_dev`: per group (e.g. per target sparsity) the run chosen on the dev metric, all columns
  kept, so its test numbers are reported for a point that was not chosen on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from sma.metrics import METRICS

Direction = Literal["max", "min"]

DUPLICATES_COLUMN = "n_duplicates"
"""Added by :func:`pareto_front`: how many *other* input rows sat on exactly the same (x, y) point."""


@dataclass(frozen=True)
class Axis:
    """How a metric is read: which way is better, and the value that earns nothing (the nadir)."""

    better: Direction
    reference: float
    why: str


def _better(metric: str) -> Direction:
    return METRICS[metric].direction  # type: ignore[return-value]


_RETENTION = Axis(_better("test_retention"), 0.0, "fraction of the dense model's score kept; 0 = nothing kept")
_SPARSITY = Axis("max", 0.0, "fraction of prunable units removed; 0 = the dense model")  # on a front, more is better
AXES: dict[str, Axis] = {
    "sparsity": _SPARSITY,
    "actual_sparsity": _SPARSITY,
    "retention": _RETENTION,
    "dev_retention": _RETENTION,
    "test_retention": _RETENTION,
    "speedup": Axis(_better("speedup"), 1.0, "dense latency / pruned latency; 1 = no faster than the dense model"),
    "memory_ratio": Axis(_better("memory_ratio"), 1.0, "pruned / dense memory; 1 = no smaller than the dense model"),
}
"""Direction and reference value per column. Every reference is what the *dense* model (or a model that
kept nothing) scores, so the hypervolume measures only what pruning gained: with (sparsity, retention)
from (0, 0) it is the area under the staircase retention-vs-sparsity curve, a fraction of the unit square
(1.0 = full retention at 100 % sparsity); speedups count from 1x and memory ratios down from 1.0."""

REFERENCE_FRONT = pd.DataFrame(
    {"sparsity": [0.3, 0.5, 0.7], "retention": [0.852, 0.815, 0.700], "speedup": [1.4, 2.0, 2.8]}
)
"""The original research code's published front (sparsity, retention, speedup): the front to beat."""


def _check_direction(better: str) -> None:
    if better not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', not {better!r}")


def _oriented(values: np.ndarray, better: Direction) -> np.ndarray:
    """``values`` turned so that larger is better."""
    _check_direction(better)
    return values if better == "max" else -values


def pareto_front(
    df: pd.DataFrame, x: str, y: str, *, x_better: Direction = "max", y_better: Direction = "max"
) -> pd.DataFrame:
    """The rows of ``df`` that no other row dominates on (``x``, ``y``), sorted by ``x`` (ascending).

    A row is dominated when another is at least as good on both axes and strictly better on one. Rows with
    NaN in ``x`` or ``y`` are ignored. Rows on exactly the same point appear once: the first in input
    order, with the number of other rows on that point in :data:`DUPLICATES_COLUMN` (0 when unique). The
    original index is kept. The result always has ``df``'s columns plus :data:`DUPLICATES_COLUMN`, also
    when it is empty.
    """
    rows = df.dropna(subset=[x, y])
    sizes = rows.groupby([x, y], sort=False)[x].transform("size")
    rows = rows.assign(**{DUPLICATES_COLUMN: sizes - 1})[~rows.duplicated([x, y], keep="first").to_numpy()]
    a = _oriented(rows[x].to_numpy(dtype=float), x_better)
    b = _oriented(rows[y].to_numpy(dtype=float), y_better)
    keep = np.zeros(len(rows), dtype=bool)
    best_b = -np.inf
    for i in np.lexsort((-b, -a)):  # best x first; on equal x, best y first
        if b[i] > best_b:  # nothing with an x at least as good reached this y
            keep[i], best_b = True, b[i]
    return rows[keep].sort_values(x, kind="mergesort")


def _points(front: pd.DataFrame | np.ndarray | Sequence, x: str | None, y: str | None) -> np.ndarray:
    """``front`` as an (n, 2) float array, rows with NaN dropped."""
    if isinstance(front, pd.DataFrame):
        if x is None or y is None:
            raise ValueError("name the x and y columns of a DataFrame front")
        pts = front[[x, y]].to_numpy(dtype=float)
    else:
        pts = np.asarray(front, dtype=float).reshape(-1, 2)
    return pts[~np.isnan(pts).any(axis=1)]


def hypervolume(
    front: pd.DataFrame | np.ndarray | Sequence,
    x: str | None = None,
    y: str | None = None,
    *,
    reference: tuple[float, float],
    x_better: Direction = "max",
    y_better: Direction = "max",
) -> float:
    """The area dominated by the points of ``front`` and bounded by ``reference`` = (x_ref, y_ref).

    ``front`` is a DataFrame (read columns ``x`` and ``y``) or an array of (x, y) pairs; it need not be a
    front (dominated points add nothing). Points not strictly better than the reference on both axes
    contribute nothing; an empty front has hypervolume 0.
    """
    pts = _points(front, x, y)
    a = _oriented(pts[:, 0] - reference[0], x_better)  # distance beyond the reference, larger = better
    b = _oriented(pts[:, 1] - reference[1], y_better)
    inside = (a > 0) & (b > 0)
    a, b = a[inside], b[inside]
    area, covered = 0.0, 0.0
    for i in np.lexsort((-b, -a)):  # widest first: each point adds the strip above what is covered
        if b[i] > covered:
            area += float(a[i] * (b[i] - covered))
            covered = float(b[i])
    return area


def reference_point(x: str, y: str) -> tuple[tuple[float, float], Direction, Direction]:
    """((x_ref, y_ref), x_better, y_better) for two columns named in :data:`AXES`."""
    unknown = [c for c in (x, y) if c not in AXES]
    if unknown:
        raise KeyError(f"no reference value for {unknown}; known axes: {sorted(AXES)}")
    return (AXES[x].reference, AXES[y].reference), AXES[x].better, AXES[y].better


def reference_hypervolume(x: str = "sparsity", y: str = "retention") -> float:
    """The hypervolume of :data:`REFERENCE_FRONT` on (``x``, ``y``), from :func:`reference_point`."""
    ref, xb, yb = reference_point(x, y)
    return hypervolume(REFERENCE_FRONT, x, y, reference=ref, x_better=xb, y_better=yb)


@dataclass(frozen=True)
class HypervolumeComparison:
    """Our front's hypervolume and the reference front's, on the same axes and reference point."""

    ours: float
    reference: float
    reference_point: tuple[float, float]

    @property
    def ratio(self) -> float:
        """ours / reference (> 1: our front dominates more)."""
        return self.ours / self.reference if self.reference else float("nan")


def versus_reference(
    df: pd.DataFrame, x: str = "actual_sparsity", y: str = "test_retention",
    *, reference_x: str = "sparsity", reference_y: str = "retention",
) -> HypervolumeComparison:
    """Hypervolume of ``df`` on (``x``, ``y``) vs :data:`REFERENCE_FRONT` on (``reference_x``,
    ``reference_y``); both axes pairs must share directions and reference values in :data:`AXES`."""
    ours_ref = reference_point(x, y)
    if ours_ref != reference_point(reference_x, reference_y):
        raise ValueError(f"({x}, {y}) and ({reference_x}, {reference_y}) are not read the same way")
    ref, xb, yb = ours_ref
    ours = hypervolume(df, x, y, reference=ref, x_better=xb, y_better=yb)
    return HypervolumeComparison(ours, reference_hypervolume(reference_x, reference_y), ref)


def select_on_dev(
    df: pd.DataFrame, group: list[str], dev: str = "dev_retention",
    *, better: Direction = "max", run_id: str = "run_id",
) -> pd.DataFrame:
    """Per ``group``, the row with the best ``dev`` value, all columns kept, sorted by ``group``.

    Ties go to the smallest ``run_id`` (input order when there is no such column). Rows with NaN ``dev``
    are ignored, so a group whose runs all lack it is absent.
    """
    _check_direction(better)
    rows = df.dropna(subset=[dev])
    by, ascending = [dev], [better == "min"]
    if run_id in rows.columns:
        by, ascending = [dev, run_id], [better == "min", True]
    ranked = rows.sort_values(by, ascending=ascending, kind="mergesort")  # stable: input order breaks ties
    best = ranked.groupby(group, sort=True, dropna=False).head(1)
    return best.sort_values(group, kind="mergesort")
