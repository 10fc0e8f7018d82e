"""The report's tables, computed from the runs frame of :func:`analysis.runs.load_runs`.

Every table keeps the MLflow ``run_id`` of each number it shows. Configurations are chosen on **dev** and
shown with their **test** values.
"""

from __future__ import annotations

import pandas as pd

from analysis.pareto import REFERENCE_FRONT, hypervolume, pareto_front
from analysis.runs import COLLECTION
from analysis.stats import mean_over_seeds, retention_difference_interval, retention_interval, seed_summary
from sma.config import SEARCHED
from sma.config.ablation import RECIPE_PARAMS
from sma.metrics import METRICS, OBJECTIVE, PHASE_PREFIX, PHASES, RETENTION

SPARSITY = "params.sparsity"
DEV, TEST = f"metrics.{OBJECTIVE}", f"metrics.{RETENTION}"
CONFIG_PARAMS = tuple(f"params.{name}" for name in dict.fromkeys((*RECIPE_PARAMS, *(p.name for p in SEARCHED))))
"""What makes two result runs the same configuration (the seed aside)."""

AXES = {
    # name: (x column, x better, reference point (x, retention), reference front column)
    "sparsity": ("metrics.actual_sparsity", "max", (0.0, 0.0), "sparsity"),
    "speedup": ("metrics.speedup", METRICS["speedup"].direction, (1.0, 0.0), "speedup"),
    "memory": ("metrics.memory_ratio", METRICS["memory_ratio"].direction, (1.0, 0.0), None),
}
"""The three Pareto views: retention against sparsity, measured speedup and memory ratio."""


def config_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in CONFIG_PARAMS if c in df.columns]


def by_collection(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(collection, its runs)`` in name order: numbers of two collections are never pooled. A frame
    without the :data:`~analysis.runs.COLLECTION` column is one unnamed collection."""
    if COLLECTION not in df.columns:
        return [("", df)]
    return [(str(name), runs) for name, runs in df.groupby(COLLECTION, sort=True, dropna=False)]


PerQuery = dict[str, dict[str, float]]
"""``{run_id: {query_id: test nDCG@10}}`` (:func:`analysis.runs.per_query`)."""


def results_table(df: pd.DataFrame, pruned: PerQuery | None = None, dense: PerQuery | None = None, *,
                  int8: PerQuery | None = None, resamples: int = 10_000) -> pd.DataFrame:
    """Per collection and target sparsity, the configuration (runs alike but for the seed) with the best mean
    dev retention over its seeds, shown with its means over those seeds (and the sd of test retention over
    them): the seed-style results table, a row per collection and sparsity. Ties go to the configuration met
    first; ``run_id`` lists every run averaged.

    With the per-query test nDCG@10 of the pruned and dense models of every run of a row, the row also has
    the paired bootstrap 95 % interval over test queries of its retention (per-query means over seeds first):
    the spread another sample of queries could give, next to ``sd``, the spread over seeds. Where runs measured
    their int8 copy (``bench.int8``), the row has its retention and speedup, and what int8 loses: float32 - int8
    test retention in points, with its paired interval over the test queries when ``int8`` has the copies'
    per-query nDCG@10 (:func:`_int8_columns`)."""
    cols = config_columns(df)
    rows = []
    for collection, runs_of in by_collection(df.dropna(subset=[DEV])):
        for _, at in runs_of.groupby(SPARSITY, sort=True):
            configs = [runs for _, runs in at.groupby(cols, dropna=False, sort=False)] if cols else [at]
            runs = max(configs, key=lambda r: r[DEV].mean())  # max keeps the first of equals
            queries = _query_columns(runs, pruned or {}, dense or {}, resamples)
            rows.append(_result_row(collection, runs, queries,
                                    _int8_columns(runs, pruned or {}, dense or {}, int8 or {}, resamples)))
    table = pd.DataFrame(rows)
    unmeasured = [c for c in (*INT8_COLUMNS, *QUERY_COLUMNS) if c in table.columns and table[c].isna().all()]
    return table.drop(columns=unmeasured)


def _result_row(collection: str, runs: pd.DataFrame, queries: dict[str, object],
                int8: dict[str, object]) -> dict[str, object]:
    def mean(column: str) -> float | None:
        return runs[column].mean() if column in runs.columns else None

    return {
        "Collection": collection,
        "Sparsity": f"{100 * runs[SPARSITY].iloc[0]:.0f}%",
        "Actual": f"{100 * mean('metrics.actual_sparsity'):.2f}%",
        "Baseline": mean("metrics.test_dense_ndcg_at_10"),
        "Pruned": mean("metrics.test_ndcg_at_10"),
        "Retention": f"{100 * mean(TEST):.2f}%",
        "sd": f"{100 * runs[TEST].std():.2f}" if len(runs) > 1 else "",
        **queries,
        "Dev retention": f"{100 * mean(DEV):.2f}%",
        "Top-10 kept": mean("metrics.test_top10_overlap"),
        "Corpus cosine": mean("metrics.corpus_cosine"),
        "Speedup": mean("metrics.speedup"),
        "Memory": mean("metrics.memory_ratio"),
        **int8,
        "Seeds": len(runs),
        "run_id": ", ".join(runs["run_id"]),
    }


QUERY_COLUMNS = ("95% CI (queries)", "Test queries")


def _seed_means(ids: list[str], pruned: PerQuery, dense: PerQuery) -> tuple[dict[str, float], dict[str, float]] | None:
    """Per-query means over the runs ``ids`` of the pruned and the dense model; ``None`` unless every run has
    both."""
    if not all(r in pruned and r in dense for r in ids):
        return None
    return mean_over_seeds([pruned[r] for r in ids]), mean_over_seeds([dense[r] for r in ids])


def _query_columns(runs: pd.DataFrame, pruned: PerQuery, dense: PerQuery, resamples: int) -> dict[str, object]:
    """The row's retention interval over test queries and how many queries; ``None`` unless every run of
    the row has both models' per-query numbers."""
    means = _seed_means(list(runs["run_id"]), pruned, dense)
    if means is None:
        return dict.fromkeys(QUERY_COLUMNS)
    student, teacher = means
    low, high = retention_interval(student, teacher, resamples=resamples)
    return {"95% CI (queries)": f"{100 * low:.1f}-{100 * high:.1f}%",
            "Test queries": len(student.keys() & teacher.keys())}


def row_queries(results: pd.DataFrame, pruned: PerQuery, dense: PerQuery) -> list[tuple[str, str, pd.DataFrame]]:
    """For each row of :func:`results_table` whose runs all have both models' per-query numbers:
    ``(collection, sparsity, frame)``, the frame a row per test query (``query``, ``dense``, ``pruned``: the
    pruned model's mean over the row's seeds) with ``effect``: how many points of the row's retention the
    query's difference makes, ``100 * (pruned - dense) / (queries * mean dense)`` (the effects add up to
    retention - 100)."""
    out = []
    for _, row in results.iterrows():
        means = _seed_means(str(row["run_id"]).split(", "), pruned, dense)
        if means is None:
            continue
        student, teacher = means
        qs = sorted(student.keys() & teacher.keys())
        frame = pd.DataFrame({"query": qs, "dense": [teacher[q] for q in qs], "pruned": [student[q] for q in qs]})
        total = frame["dense"].sum()
        frame["effect"] = 100 * (frame["pruned"] - frame["dense"]) / total if total else float("nan")
        out.append((str(row["Collection"]), str(row["Sparsity"]), frame))
    return out


def query_effect_table(rows: list[tuple[str, str, pd.DataFrame]], *, top: int = 3) -> pd.DataFrame:
    """The ``top`` queries of each row that move its retention most (largest ``|effect|``), and what
    retention would be without each of them alone."""
    out = []
    for collection, sparsity, frame in rows:
        retention = 100 * frame["pruned"].sum() / frame["dense"].sum()
        for _, q in frame.reindex(frame["effect"].abs().sort_values(ascending=False).index).head(top).iterrows():
            rest = frame[frame["query"] != q["query"]]
            out.append({"Collection": collection, "Sparsity": sparsity, "Query": q["query"], "Dense": q["dense"],
                        "Pruned": q["pruned"], "Effect (points)": round(q["effect"], 2),
                        "Retention": f"{retention:.2f}%",
                        "Without it": f"{100 * rest['pruned'].sum() / rest['dense'].sum():.2f}%"})
    return pd.DataFrame(out)


INT8 = f"metrics.{RETENTION}_int8"
INT8_COLUMNS = ("Retention int8", "int8 loss (points)", "int8 loss 95% CI (queries)", "Speedup int8", "int8 seeds")


def _int8_columns(runs: pd.DataFrame, pruned: PerQuery, dense: PerQuery, int8: PerQuery,
                  resamples: int) -> dict[str, object]:
    """Over the seeds that measured the int8 copy (``bench.int8``): its test retention and speedup, its loss
    (float32 - int8 test retention, points; positive = int8 lost) and how many seeds; the loss's paired
    bootstrap interval over the test queries (per-query means over those seeds first) when every one of them
    has the three models' per-query numbers. ``None`` (the column is then left out) where nothing was measured."""
    if INT8 not in runs.columns or runs[INT8].isna().all():
        return dict.fromkeys(INT8_COLUMNS)
    measured = runs.dropna(subset=[INT8])
    ids = list(measured["run_id"])
    interval = None
    means = _seed_means(ids, pruned, dense)
    if means is not None and all(r in int8 for r in ids):
        low, high = retention_difference_interval(means[0], mean_over_seeds([int8[r] for r in ids]), means[1],
                                                  resamples=resamples)
        interval = f"{100 * low:.2f} to {100 * high:.2f}"
    return {"Retention int8": f"{100 * measured[INT8].mean():.2f}%",
            "int8 loss (points)": round(100 * (measured[TEST] - measured[INT8]).mean(), 2),
            "int8 loss 95% CI (queries)": interval,
            "Speedup int8": measured["metrics.speedup_int8"].mean() if "metrics.speedup_int8" in runs else None,
            "int8 seeds": len(measured)}


def fronts(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per axis, the Pareto front of (x, dev retention): configurations chosen on dev, their test values kept."""
    out = {}
    for name, (x, better, _, _) in AXES.items():
        if x in df.columns and df[x].notna().any():
            out[name] = pareto_front(df, x, DEV, x_better=better, y_better="max")
    return out


def hypervolumes(front_by_axis: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Hypervolume of each front on **test** retention, next to the reference front's under the same point."""
    rows = []
    for name, front in front_by_axis.items():
        x, better, ref, ref_col = AXES[name]
        ours = hypervolume(front, x, TEST, reference=ref, x_better=better, y_better="max")
        theirs = (hypervolume(REFERENCE_FRONT, ref_col, "retention", reference=ref, x_better=better, y_better="max")
                  if ref_col else float("nan"))
        rows.append({"front": f"test retention vs {name}", "points": len(front), "hypervolume": ours,
                     "reference implementation": theirs, "reference point": str(ref)})
    return pd.DataFrame(rows)


def front_table(front: pd.DataFrame, x: str) -> pd.DataFrame:
    cols = {SPARSITY: "target", x: x.removeprefix("metrics."), DEV: "dev retention", TEST: "test retention"}
    cols.update({c: c.removeprefix("params.") for c in config_columns(front)})
    return front[[*cols, "run_id"]].rename(columns=cols).reset_index(drop=True)


SEED = "params.seed"


def seed_table(df: pd.DataFrame, metric: str = TEST) -> pd.DataFrame:
    """Per (collection, target sparsity, configuration): mean ± sd and the t-interval over seeds (runs of one
    configuration with the same seed, repeats, count once: their mean). A configuration run with one seed is
    listed too, its sd and interval NaN: the table is where every configuration tried can be found."""
    keys = [*([COLLECTION] if COLLECTION in df.columns else []), SPARSITY, *config_columns(df)]
    rows = []
    for key, group in df.groupby(keys, dropna=False, sort=True):
        per_seed = group.groupby(SEED)[metric].mean() if SEED in group.columns else group[metric]
        s = seed_summary(per_seed.tolist())
        rows.append({**dict(zip([k.removeprefix("params.") for k in keys], key, strict=True)),
                     "seeds": s.n, "mean": s.mean, "sd": s.sd, "ci_low": s.ci_low, "ci_high": s.ci_high,
                     "run_ids": " ".join(group["run_id"])})
    return pd.DataFrame(rows)


CELL = "tags.cell"
REFERENCE_CELL = "reference"


def ablation_table(df: pd.DataFrame, per_query_by_run: dict[str, dict[str, float]], *, resamples: int = 10_000,
                   seed: int = 0) -> pd.DataFrame:
    """Every ablation cell against the reference recipe at the same collection and sparsity: the per-query
    paired difference of test nDCG@10 (per-query means over seeds first), its bootstrap CI, Wilcoxon p and
    Holm-adjusted p."""
    from analysis.stats import holm, mean_over_seeds, paired_difference

    if CELL not in df.columns:
        return pd.DataFrame()
    rows = []
    for collection, runs_of in by_collection(df):
        for sparsity, at in runs_of.groupby(SPARSITY, sort=True):
            means = {cell: mean_over_seeds([per_query_by_run[r] for r in runs["run_id"]])
                     for cell, runs in at.groupby(CELL)}
            if REFERENCE_CELL not in means:
                continue
            for cell, runs in at.groupby(CELL):
                if cell == REFERENCE_CELL:
                    continue
                d = paired_difference(means[cell], means[REFERENCE_CELL], resamples=resamples, seed=seed)
                rows.append({"collection": collection, "sparsity": sparsity, "cell": cell, "seeds": len(runs),
                             "queries": d.n, "mean diff nDCG@10": d.mean, "ci_low": d.ci_low, "ci_high": d.ci_high,
                             "wilcoxon p": d.p_value, "run_ids": " ".join(runs["run_id"])})
    table = pd.DataFrame(rows)
    if not table.empty:
        table.insert(table.columns.get_loc("wilcoxon p") + 1, "holm p", holm(table["wilcoxon p"].tolist()))
    return table


COLLECTION_METRICS = {
    "documents": "Documents", "train_queries": "Train queries", "doc_tokens_median": "Doc tokens (median)",
    "doc_tokens_p90": "Doc tokens (p90)", "distill_length": "Distill length",
    "docs_over_distill_length": "Docs past distill length",
    "docs_over_eval_length": "Docs past eval length", "queries_over_query_length": "Queries past query length",
}
"""The collection profile's metrics (:mod:`sma.collection_profile`) and their column names."""


def collection_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per collection: its size, judged training queries and what the runs' length cuts meet (shares
    as percentages). Runs on one collection under different cuts (an ablation of the distillation length)
    give a row per cut. Empty when no run logged its collection's profile."""
    if "params.max_length" in df.columns:  # runs that predate the distill_length metric set distill.max_length
        logged = df["metrics.distill_length"] if "metrics.distill_length" in df.columns else pd.Series(index=df.index)
        df = df.assign(**{"metrics.distill_length": logged.fillna(pd.to_numeric(df["params.max_length"],
                                                                                  errors="coerce"))})
    cols = [f"metrics.{m}" for m in COLLECTION_METRICS if f"metrics.{m}" in df.columns]
    if not cols:
        return pd.DataFrame()
    rows = []
    for collection, runs in by_collection(df.dropna(subset=cols, how="all")):
        for values, _ in runs.groupby(cols, dropna=False, sort=True):
            row: dict[str, object] = {"Collection": collection}
            for col, value in zip(cols, values, strict=True):
                name = col.removeprefix("metrics.")
                row[COLLECTION_METRICS[name]] = ("-" if pd.isna(value) else f"{100 * value:.0f}%"
                                                 if name.startswith(("docs_", "queries_")) else int(value))
            rows.append(row)
    return pd.DataFrame(rows)


def time_table(df: pd.DataFrame) -> pd.DataFrame:
    """Where a sparsity's wall time goes: per collection, target sparsity and configuration, the mean minutes of
    each phase the runs timed (``metrics.seconds_*``) and of the whole sparsity, over the runs that timed them.
    Configurations are told apart by the params that differ among the timed runs (more recovery epochs,
    bfloat16 distillation), shown as columns; none when every run shares them. Empty when no run timed."""
    prefix = f"metrics.{PHASE_PREFIX}"
    phases = [c for c in (f"{prefix}{p}" for p in PHASES) if c in df.columns]
    if not phases:
        return pd.DataFrame()
    timed = df.dropna(subset=phases, how="all")
    varying = [c for c in config_columns(timed) if timed[c].astype(str).nunique() > 1]
    rows = []
    for collection, runs_of in by_collection(timed):
        for keys, at in runs_of.groupby([SPARSITY, *varying], sort=True, dropna=False):
            keys = keys if isinstance(keys, tuple) else (keys,)
            row: dict[str, object] = {"Collection": collection, "Sparsity": f"{100 * keys[0]:.0f}%"}
            row.update({c.removeprefix("params."): v for c, v in zip(varying, keys[1:], strict=True)})
            row["Runs"] = len(at)
            row.update({c.removeprefix(prefix): round(at[c].mean() / 60, 2) for c in phases})
            row["total"] = round(at["metrics.seconds"].mean() / 60, 2)
            rows.append(row)
    return pd.DataFrame(rows)

