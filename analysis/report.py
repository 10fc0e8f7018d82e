"""``sma report --experiment NAME``: one report from every result run of an MLflow experiment.

Writes ``<output_dir>/<experiment>/report/``: ``report.md``, a self-contained ``report.html``, the PNG plots
and a CSV per table, and logs them as the artifacts of a ``role=report`` run in the same experiment. Works
for any experiment: ``sma run`` (sparsities, seeds), ``sma tune`` (trials, studies), ablations (cells).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from analysis import plots, tables
from analysis.render import Section, to_html, to_markdown
from analysis.runs import (
    DENSE,
    INT8,
    PARENT,
    commands,
    display_command,
    display_uri,
    load_runs,
    metric_history,
    per_query,
)
from sma.atomic import atomic_file, write_bytes, write_text

log = logging.getLogger(__name__)


def _save_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)


def _results_sections(df: pd.DataFrame, uri: str, out: Path, cache: Path, resamples: int) -> list[Section]:
    runs = df.dropna(subset=[tables.DEV])["run_id"]
    pruned = per_query(uri, runs, cache_dir=cache, missing_ok=True)
    dense = per_query(uri, runs, cache_dir=cache, model=DENSE, missing_ok=True, progress=False)
    int8 = per_query(uri, runs, cache_dir=cache, model=INT8, missing_ok=True, progress=False)
    results = tables.results_table(df, pruned, dense, int8=int8, resamples=resamples)
    _save_csv(results, out / "results.csv")
    sections = [Section("Results per sparsity", "The configuration with the best mean dev retention over its seeds "
                        "at each collection and target sparsity, with its means over those seeds (retention = pruned "
                        "/ dense test nDCG@10, sd of it over seeds; top-10 kept and corpus cosine: the label-free "
                        "agreement with the dense teacher; 95 % CI (queries): the paired bootstrap interval of retention over the "
                        f"test queries ({resamples} resamples, per-query means over seeds first), the spread another "
                        "sample of as many queries could give; where runs measured it with bench.int8, the same "
                        "model with dynamic int8 linear layers: its test retention and CPU speedup over the dense "
                        "float32 model and its loss, float32 - int8 test retention in points, means over the seeds "
                        "that measured it, with the loss's paired bootstrap interval over the test queries).",
                        tables=(("results.csv", results),))]
    queries = tables.row_queries(results, pruned, dense)
    if queries:
        effects = tables.query_effect_table(queries)
        _save_csv(effects, out / "queries.csv")
        sections.append(Section("Per query", "Each row's test queries: pruned (mean over the row's seeds) against "
                                "dense nDCG@10. Retention is a ratio of means over few queries, so one query can "
                                "move it by points: the table gives the three queries of each row that move it "
                                "most (effect: points of retention from that query's difference) and the "
                                "retention without each.", tables=(("queries.csv", effects),),
                                images=(plots.query_plot(queries, out / "queries.png"),)))
    profile = tables.collection_table(df)
    if not profile.empty:
        _save_csv(profile, out / "collections.csv")
        sections.append(Section("Collections", "What the recipe's fixed lengths meet on each collection: documents, "
                                "judged training queries, document length in tokens (untruncated) and the share of "
                                "documents or queries longer than the distillation, evaluation and query lengths.",
                                tables=(("collections.csv", profile),)))
    collections = tables.by_collection(df)
    images, front_tables, volumes = [], [], []
    for collection, runs in collections:
        tag = f"_{collection}" if len(collections) > 1 else ""
        fronts = tables.fronts(runs)
        for name, front in fronts.items():
            x, _, _, ref_col = tables.AXES[name]
            images.append(plots.pareto_plot(runs, front, x=x, label=x.removeprefix("metrics.") + (
                f" ({collection})" if tag else ""), reference_col=ref_col, path=out / f"pareto{tag}_{name}.png"))
            ft = tables.front_table(front, x)
            _save_csv(ft, out / f"pareto{tag}_{name}.csv")
            front_tables.append((f"pareto{tag}_{name}.csv", ft))
        volumes.append(tables.hypervolumes(fronts).assign(collection=collection))
    hv = pd.concat(volumes, ignore_index=True)
    _save_csv(hv, out / "hypervolume.csv")
    sections.append(Section(
        "Pareto fronts", "Non-dominated configurations by dev retention against actual sparsity, measured speedup "
        "and encoder memory ratio, drawn at their test retention (one front per collection); the dashed line is "
        "the published front of the reference implementation (85.2 / 81.5 / 70.0 % at 30 / 50 / 70 %; "
        "1.4 / 2.0 / 2.8x).",
        tables=(("hypervolume.csv", hv), *front_tables), images=tuple(images)))
    times = tables.time_table(df)
    if not times.empty:
        _save_csv(times, out / "time.csv")
        sections.append(Section("Where the time goes", "Mean wall minutes of each phase of one sparsity: pruning "
                                "steps (each with its distillation), post-prune recovery, dev/test evaluation over "
                                "the whole corpus, the speed benchmark (and int8 where measured). Shared work "
                                "(dense baseline, analysis) is cached across sparsities and seeds.",
                                tables=(("time.csv", times),), images=(plots.time_plot(times, out / "time.png"),)))
    seeds = tables.seed_table(df)
    if not seeds.empty:
        _save_csv(seeds, out / "seeds.csv")
        sections.append(Section("Across seeds", "Test retention of every configuration run: mean over its seeds, "
                                "sd and the 95 % t-interval of the mean (blank with one seed).",
                                tables=(("seeds.csv", seeds),)))
    return sections


def _ablation_section(df: pd.DataFrame, uri: str, out: Path, cache: Path, resamples: int) -> list[Section]:
    if tables.CELL not in df.columns or df[tables.CELL].isna().all():
        return []
    cells = df[df[tables.CELL].notna()]
    table = tables.ablation_table(cells, per_query(uri, cells["run_id"], cache_dir=cache), resamples=resamples)
    if table.empty:
        return []
    _save_csv(table, out / "ablation.csv")
    return [Section("Ablation", f"Each cell against the reference recipe at the same sparsity: per-query paired "
                    f"difference of test nDCG@10 (per-query means over seeds first), paired bootstrap 95 % CI "
                    f"({resamples} resamples, seeded), Wilcoxon signed-rank p and Holm-adjusted p across cells.",
                    tables=(("ablation.csv", table),), images=(plots.effect_plot(table, out / "ablation.png"),))]


CURVES = {"dev_retention": "dev retention (%)", "corpus_cosine": "corpus cosine with the teacher",
          "dev_top10_overlap": "teacher's dev top 10 kept (%)"}
"""Per-epoch metrics of the recovery curves (logged with ``distill.eval_every_epoch``) and their axis labels."""


def _curves_section(df: pd.DataFrame, uri: str, out: Path) -> list[Section]:
    curves = {}
    for metric, label in CURVES.items():
        history = metric_history(uri, df["run_id"], metric)
        history = history[history.groupby("run_id")["step"].transform("nunique") > 1]
        if not history.empty:  # the final value is logged again at the last epoch: once per step
            curves[label] = history.drop_duplicates(["run_id", "step"], keep="last")
    if not curves:
        return []
    labels = {r.run_id: f"{100 * getattr(r, 'sparsity', 0):.0f}% {r.run_id[:6]}"
              for r in df.rename(columns={tables.SPARSITY: "sparsity"}).itertuples()}
    return [Section("Recovery", "After each post-prune epoch: dev retention, and the label-free agreement with "
                    "the dense teacher (mean cosine of the corpus embeddings, share of the teacher's dev top 10 "
                    "kept), which does not depend on a few judged dev queries.",
                    images=(plots.curves_plot(curves, labels, out / "recovery.png"),))]


def _search_sections(df: pd.DataFrame, results_dir: Path, out: Path, optuna_url: str | None) -> list[Section]:
    """Per Optuna study of a search: its trials, best trial, hyperparameter importance and plots."""
    from analysis.studies import study_report

    db = results_dir / "tune" / "optuna.db"
    url = optuna_url or (f"sqlite:///{db}" if db.is_file() else None)
    if url is None or "tags.study" not in df.columns:
        return []
    sections = []
    for name in sorted(df["tags.study"].dropna().unique()):
        rep = study_report(url, name, out / f"study_{name}")
        keep = [c for c in rep.trials.columns if c in ("number", "state", "value") or c.startswith("params_")
                or c == "user_attrs_mlflow_run_id"]
        trials = rep.trials[keep]
        _save_csv(trials, out / f"trials_{name}.csv")
        importance = pd.DataFrame({"hyperparameter": list(rep.importance), "importance": list(rep.importance.values())})
        best = (f"best trial {rep.best.number}: dev retention {rep.best.value:.4f}, {rep.best.params}"
                if rep.best else "no complete trial")
        sections.append(Section(f"Search: {name}", f"{best}. Importance: Optuna's fANOVA over the complete trials"
                                + (f" ({rep.importance_note})" if rep.importance_note else "") + ".",
                                tables=((f"trials_{name}.csv", trials), ("importance", importance)),
                                images=tuple(rep.plots.values())))
    return sections


def _phase1_section(results_dir: Path) -> list[Section]:
    pngs = tuple(sorted((results_dir / "phase1").glob("*.png")))
    if not pngs:
        return []
    return [Section("Mechanistic analysis", "Importance of every head and neuron of the dense model (phase 1).",
                    images=pngs)]


def _reproduce_section(experiment: str, uri: str, df: pd.DataFrame, command: str) -> Section:
    n_runs = len(df)
    parents = df[PARENT].dropna() if PARENT in df.columns else ()
    logged = commands(experiment, uri=uri, parents=parents)
    made_by = list(dict.fromkeys(display_command(c) for c in logged))
    report = command or f"sma report --experiment {experiment}"
    named = (" Collections given as folders are shown by name: a BEIR folder of that name under "
             "$SMA_DATA_DIR.") if made_by != logged else ""
    return Section("Reproduce", f"{n_runs} result runs of MLflow experiment {experiment!r} "
                   f"(store {display_uri(uri)}), made by the commands below (each tagged on its MLflow run), "
                   f"then this report.{named}", code="\n".join([*made_by, report]))


def build_report(experiment: str, *, uri: str, results_dir: Path, resamples: int = 10_000,
                 command: str = "", optuna_url: str | None = None, page: Path | None = None) -> Path:
    """Compute every section from the experiment's result runs and write the report folder; returns it.
    ``page``: also write the report there as one Markdown file without images."""
    started = time.time()
    df = load_runs(experiment, uri=uri)
    if df.empty:
        raise LookupError(f"experiment {experiment!r} at {uri} has no finished result runs")
    out = results_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    cache = results_dir / ".mlflow-artifacts"  # per-query metrics downloaded once
    sections = _results_sections(df, uri, out, cache, resamples)
    sections += _ablation_section(df, uri, out, cache, resamples)
    sections += _search_sections(df, results_dir, out, optuna_url)
    sections += _curves_section(df, uri, out)
    sections += _phase1_section(results_dir)
    sections.append(_reproduce_section(experiment, uri, df, command))
    title = f"SMA report: {experiment}"
    for section in sections:  # every image next to the Markdown that links it
        for image in section.images:
            if image.parent != out:
                write_bytes(out / image.name, image.read_bytes())
    write_text(out / "report.md", to_markdown(title, sections))
    write_text(out / "report.html", to_html(title, sections))
    if page is not None:
        write_text(page, to_markdown(title, sections, images=False))
    log.info("report of %d runs in %s (%.1f s)", len(df), out, time.time() - started)
    return out


def log_report(experiment: str, uri: str, folder: Path) -> str:
    """A ``role=report`` run in the experiment holding the report's files as artifacts; returns its id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, run_name="report", tags={"role": "report"})
    for path in sorted(folder.iterdir()):
        if path.is_file():
            client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def run_cli(args, cfg) -> int:
    """``sma report``: build the report of ``cfg.experiment`` and log it to MLflow."""
    from sma.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.mlflow_tracking_uri, cfg.output_dir)
    command = f"sma report --experiment {cfg.experiment} --mlflow-tracking-uri {display_uri(uri)}"
    try:
        if args.optuna_storage is not None:
            command += f" --optuna-storage {display_uri(args.optuna_storage)}"
        if args.page is not None:
            command += f" --page {args.page}"
        folder = build_report(cfg.experiment, uri=uri, results_dir=cfg.run_dir, resamples=args.resamples,
                              command=command, optuna_url=args.optuna_storage, page=args.page)
    except LookupError as exc:
        print(f"sma: error: {exc}")
        return 2
    run_id = log_report(cfg.experiment, uri, folder)
    print(f"report: {folder / 'report.html'} (MLflow run {run_id} in experiment {cfg.experiment!r})")
    return 0
