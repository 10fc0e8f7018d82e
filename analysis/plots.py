"""The report's figures (matplotlib, Agg backend): Pareto fronts against the reference implementation's
published front, the ablation effects with their intervals, per-epoch recovery curves, and each test query's
pruned against dense nDCG@10."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.pareto import REFERENCE_FRONT  # noqa: E402
from sma.atomic import atomic_file  # noqa: E402
from sma.metrics import PHASES  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def pareto_plot(df: pd.DataFrame, front: pd.DataFrame, *, x: str, label: str, reference_col: str | None,
                path: Path) -> Path:
    """Every run (grey), the front chosen on dev shown at its test retention (line), the reference front."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(df[x], 100 * df["metrics.test_retention"], s=14, color="0.7", label="all runs (test)")
    f = front.sort_values(x)
    ax.plot(f[x], 100 * f["metrics.test_retention"], "o-", color="C0", label="front chosen on dev (test)")
    if reference_col:
        ax.plot(REFERENCE_FRONT[reference_col], 100 * REFERENCE_FRONT["retention"], "s--", color="C3",
                label="reference implementation (published)")
    ax.set_xlabel(label)
    ax.set_ylabel("test retention (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def effect_plot(table: pd.DataFrame, path: Path) -> Path:
    """Mean paired difference of test nDCG@10 per ablation cell with its bootstrap 95 % interval."""
    t = table.reset_index(drop=True)
    where = t["collection"] + " " if "collection" in t.columns and t["collection"].nunique() > 1 else [""] * len(t)
    labels = [f"{w}{c} @ {100 * s:.0f}%" for w, c, s in zip(where, t["cell"], t["sparsity"], strict=True)]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(t) + 1.2))
    y = range(len(t))
    ax.errorbar(t["mean diff nDCG@10"], y, xerr=[t["mean diff nDCG@10"] - t["ci_low"],
                                                 t["ci_high"] - t["mean diff nDCG@10"]], fmt="o", capsize=3)
    ax.axvline(0, color="0.4", lw=1)
    ax.set_yticks(list(y), labels)
    ax.set_xlabel("test nDCG@10, cell minus reference recipe (paired over queries)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def curves_plot(curves: dict[str, pd.DataFrame], labels: dict[str, str], path: Path) -> Path:
    """One panel per metric (``{axis label: history}``; a label ending in ``(%)`` is drawn in percent) with its
    value after each post-prune epoch, one line per run."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (label, history) in zip(axes[0], curves.items(), strict=True):
        scale = 100 if label.endswith("(%)") else 1
        for run_id, rows in history.groupby("run_id"):
            rows = rows.sort_values("step")
            ax.plot(rows["step"], scale * rows["value"], marker=".", label=labels.get(run_id, run_id[:8]))
        ax.set_xlabel("post-prune epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if history["run_id"].nunique() <= 12:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def time_plot(table: pd.DataFrame, path: Path) -> Path:
    """Stacked minutes per phase, one bar per row of :func:`analysis.tables.time_table` (collection, sparsity
    and the params that tell its configurations apart)."""
    phases = [c for c in table.columns if c in PHASES]
    config = [c for c in table.columns if c not in (*PHASES, "Collection", "Sparsity", "Runs", "total")]
    labels = [" ".join([f"{row['Collection']} {row['Sparsity']}".strip(), *(f"{c}={row[c]}" for c in config)])
              for _, row in table.iterrows()]
    width = 7 + 0.075 * max(0, max(map(len, labels), default=0) - 20)  # room for long labels beside the bars
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(table) + 1.4))
    left = pd.Series(0.0, index=table.index)
    for i, phase in enumerate(phases):
        values = table[phase].fillna(0.0)
        ax.barh(labels, values, left=left, color=f"C{i}", label=phase.replace("_", " "))
        left += values
    ax.set_xlabel("minutes (mean over runs)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(phases), frameon=False)
    return _save(fig, path)



def query_plot(rows: list[tuple[str, str, pd.DataFrame]], path: Path) -> Path:
    """One panel per results row (:func:`analysis.tables.row_queries`): each test query's pruned nDCG@10
    (mean over seeds) against the dense model's, on the diagonal when unchanged; the query that moves the
    row's retention most is labelled."""
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), squeeze=False)
    for ax, (collection, sparsity, frame) in zip(axes[0], rows, strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1)
        ax.scatter(frame["dense"], frame["pruned"], s=12)
        top = frame.loc[frame["effect"].abs().idxmax()]
        ax.annotate(f"{top['query']} ({top['effect']:+.1f} pts)", (top["dense"], top["pruned"]), fontsize=7,
                    xytext=(4, -10), textcoords="offset points")
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), title=f"{collection} {sparsity}".strip(),
               xlabel="dense nDCG@10")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pruned nDCG@10 (mean over seeds)")
    return _save(fig, path)
