"""The report from a fixture MLflow store with known runs: the tables it must produce, worked out by hand;
and the report page opened in headless Chromium."""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from conftest import check_page_in_browser

from analysis import tables
from analysis.runs import load_runs, per_query

QUERIES = ("q1", "q2", "q3")


def _log(client, exp_id: str, tmp: Path, *, params: dict, metrics: dict, per_query_test: dict[str, float],
         cell: str | None = None, status: str = "FINISHED") -> str:
    tags = {"result": "1", "role": "sparsity", **({"cell": cell} if cell else {})}
    run = client.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    for k, v in params.items():
        client.log_param(rid, k, v)
    for k, v in metrics.items():
        client.log_metric(rid, k, v)
    blob = tmp / rid / "metrics.json"
    blob.parent.mkdir(parents=True)
    dense = {"test": dict.fromkeys(QUERIES, {"ndcg_at_10": 0.5})}  # the dense teacher scores 0.5 on each query
    blob.write_text(json.dumps({"per_query": {"test": {q: {"ndcg_at_10": v} for q, v in per_query_test.items()}},
                                "dense_per_query": dense}))
    client.log_artifact(rid, str(blob))
    client.set_terminated(rid, status)
    return rid


def _metrics(sparsity: float, dev: float, test: float, speedup: float) -> dict[str, float]:
    return {"actual_sparsity": sparsity, "dev_retention": dev, "test_retention": test, "speedup": speedup,
            "memory_ratio": 1 - sparsity, "test_ndcg_at_10": 0.5 * test, "test_dense_ndcg_at_10": 0.5}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("fx", artifact_location=(tmp / "artifacts").as_uri())
    base = {"criterion": "mechanistic", "gentleness": 0.5, "post_prune_epochs": 8, "protect_circuits": "True",
            "dataset": "../data/cranfield/"}
    flat = dict.fromkeys(QUERIES, 0.5)
    ids = {
        "a30": _log(client, exp_id, tmp, params={**base, "sparsity": 0.3, "alpha": 1.0, "seed": 1},
                    metrics=_metrics(0.3, 0.99, 0.98, 1.3), per_query_test=flat),
        "b30": _log(client, exp_id, tmp, params={**base, "sparsity": 0.3, "alpha": 0.5, "seed": 1},
                    metrics=_metrics(0.3, 0.97, 0.995, 1.35), per_query_test=flat),
        # an ablation at 50 %: the reference recipe and magnitude, two seeds each
        "ref1": _log(client, exp_id, tmp, params={**base, "sparsity": 0.5, "alpha": 1.0, "seed": 1},
                     metrics=_metrics(0.5, 0.95, 0.96, 1.9), cell="reference",
                     per_query_test={"q1": 0.5, "q2": 0.6, "q3": 0.7}),
        "ref2": _log(client, exp_id, tmp, params={**base, "sparsity": 0.5, "alpha": 1.0, "seed": 2},
                     metrics=_metrics(0.5, 0.94, 0.97, 1.9), cell="reference",
                     per_query_test={"q1": 0.7, "q2": 0.6, "q3": 0.5}),
        "mag1": _log(client, exp_id, tmp, params={**base, "criterion": "magnitude", "sparsity": 0.5, "alpha": 1.0,
                                                  "seed": 1},
                     metrics=_metrics(0.5, 0.90, 0.92, 1.9), cell="criterion=magnitude",
                     per_query_test={"q1": 0.4, "q2": 0.5, "q3": 0.3}),
        "mag2": _log(client, exp_id, tmp, params={**base, "criterion": "magnitude", "sparsity": 0.5, "alpha": 1.0,
                                                  "seed": 2},
                     metrics=_metrics(0.5, 0.91, 0.90, 1.9), cell="criterion=magnitude",
                     per_query_test={"q1": 0.4, "q2": 0.3, "q3": 0.5}),
    }
    # the commands that made them, on their top-level runs: one run twice (resumed), shown once, oldest first
    for start, command in ((1, "sma ablate --seeds 2"), (2, "sma ablate --seeds 2"), (3, "sma run --sparsity 0.3")):
        client.set_terminated(client.create_run(exp_id, start_time=start, tags={"command": command}).info.run_id)
    failed = _log(client, exp_id, tmp, params={**base, "sparsity": 0.7, "alpha": 1.0, "seed": 1},
                  metrics=_metrics(0.7, 0.99, 0.99, 3.0), per_query_test=flat, status="FAILED")
    return uri, ids, failed, tmp


def test_runs_load_into_one_frame_with_numeric_params(store):
    uri, ids, failed, _ = store
    df = load_runs("fx", uri=uri)
    assert set(df["run_id"]) == set(ids.values())  # the FAILED run is not a result
    assert df["params.sparsity"].dtype.kind == "f" and df["params.criterion"].dtype.kind not in "iuf"
    assert set(df["collection"]) == {"cranfield"}  # the dataset argument's folder name
    with pytest.raises(LookupError, match="no MLflow experiment 'nope'"):
        load_runs("nope", uri=uri)


def test_results_table_takes_the_best_dev_configuration_per_sparsity_averaged_over_seeds(store):
    uri, ids, _, _ = store
    table = tables.results_table(load_runs("fx", uri=uri))
    assert list(table["Sparsity"]) == ["30%", "50%"]
    # 30 %: dev 0.99 (alpha 1) beats dev 0.97 even though its test retention is lower
    # 50 %: the reference's mean dev (0.95 + 0.94) / 2 beats magnitude's (0.90 + 0.91) / 2; its test mean is
    # (0.96 + 0.97) / 2, not the 0.96 of its best-dev seed alone
    assert list(table["Retention"]) == ["98.00%", "96.50%"] and list(table["Dev retention"]) == ["99.00%", "94.50%"]
    assert list(table["Seeds"]) == [1, 2]
    assert table["run_id"][0] == ids["a30"] and set(table["run_id"][1].split(", ")) == {ids["ref1"], ids["ref2"]}


def test_a_collection_is_named_by_the_last_part_of_its_dataset_argument():
    from sma.data import collection_name

    assert [collection_name(d) for d in ("../shared/data/cacm", "cacm/", "BeIR/scifact", "cranfield")] == [
        "cacm", "cacm", "scifact", "cranfield"]
    assert collection_name(None) == collection_name(float("nan")) == collection_name("") == ""


def _two_collections():
    import pandas as pd

    # the same recipe at 50 % on two collections, two seeds each; on cranfield a second recipe with a better
    # dev mean (0.97) but a worse test mean
    rows = [("cacm", "mechanistic", 1, 0.95, 0.99), ("cacm", "mechanistic", 2, 0.96, 0.97),
            ("cranfield", "mechanistic", 1, 0.94, 0.90), ("cranfield", "mechanistic", 2, 0.92, 0.94),
            ("cranfield", "magnitude", 1, 0.97, 0.85), ("cranfield", "magnitude", 2, 0.97, 0.89)]
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(len(rows))], "collection": [r[0] for r in rows],
                         "params.criterion": [r[1] for r in rows], "params.seed": [r[2] for r in rows],
                         "params.sparsity": 0.5, "metrics.dev_retention": [r[3] for r in rows],
                         "metrics.test_retention": [r[4] for r in rows],
                         "metrics.test_top10_overlap": [0.6, 0.5, 0.7, 0.8, 0.4, 0.6],
                         "metrics.actual_sparsity": 0.5})


def test_results_table_has_a_row_per_collection_chosen_on_that_collections_dev():
    table = tables.results_table(_two_collections()).set_index("Collection")
    assert list(table.index) == ["cacm", "cranfield"] and list(table["Sparsity"]) == ["50%", "50%"]
    # cacm: (0.99 + 0.97) / 2; the sd of two values is |0.99 - 0.97| / sqrt(2) = 1.41 points
    assert table.loc["cacm", "Retention"] == "98.00%" and table.loc["cacm", "sd"] == "1.41"
    assert table.loc["cacm", "Top-10 kept"] == pytest.approx(0.55) and table.loc["cacm", "run_id"] == "r0, r1"
    # cranfield: magnitude's dev mean 0.97 beats mechanistic's 0.93, so its test mean (0.85 + 0.89) / 2 is shown
    assert table.loc["cranfield", "Retention"] == "87.00%" and table.loc["cranfield", "Dev retention"] == "97.00%"
    assert table.loc["cranfield", "run_id"] == "r4, r5" and table.loc["cranfield", "Seeds"] == 2


def test_a_column_no_run_of_a_row_measured_reads_as_a_dash_on_the_page():
    from analysis.render import markdown_table

    # runs made with bench.enabled=false log no speedup or memory ratio: the page says "-", not "None"
    page = markdown_table(tables.results_table(_two_collections()))
    header, _, *rows = page.splitlines()
    names = [c.strip() for c in header.strip("|").split("|")]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[names.index("Speedup")] == cells[names.index("Memory")] == "-"
    assert "None" not in page


def test_seed_and_ablation_tables_never_pool_two_collections():
    df = _two_collections()
    seeds = tables.seed_table(df).set_index(["collection", "criterion"])
    assert seeds.loc[("cacm", "mechanistic"), "mean"] == pytest.approx(0.98)
    assert seeds.loc[("cranfield", "mechanistic"), "mean"] == pytest.approx(0.92)
    assert seeds.loc[("cranfield", "mechanistic"), "seeds"] == 2 and len(seeds) == 3
    # ablation: both collections have query ids "1" and "2"; each cell is paired with its own collection's
    # reference (cacm: 0.5 -> 0.3 on both queries; cranfield: 0.8 -> 0.9 and 0.6 -> 0.6)
    cells = df.iloc[[0, 1, 2, 4]].assign(**{"tags.cell": ["reference", "x", "reference", "x"]})
    pq = {"r0": {"1": 0.5, "2": 0.5}, "r1": {"1": 0.3, "2": 0.3},
          "r2": {"1": 0.8, "2": 0.6}, "r4": {"1": 0.9, "2": 0.6}}
    table = tables.ablation_table(cells, pq, resamples=500).set_index("collection")
    assert table.loc["cacm", "mean diff nDCG@10"] == pytest.approx(-0.2)
    assert table.loc["cranfield", "mean diff nDCG@10"] == pytest.approx(0.05)
    assert table.loc["cacm", "queries"] == table.loc["cranfield", "queries"] == 2


def test_seeds_and_front(store):
    uri, ids, _, _ = store
    df = load_runs("fx", uri=uri)
    every = tables.seed_table(df)
    # one seed each at 30 % (alpha 1 and 0.5: test 0.98 and 0.995), listed without a spread; the failed 70 % run
    # is not a configuration tried
    once = every[every["sparsity"] == 0.3].set_index("alpha")
    assert list(once["seeds"]) == [1, 1] and once.loc[0.5, "mean"] == pytest.approx(0.995)
    assert once["sd"].isna().all() and set(every["sparsity"]) == {0.3, 0.5}
    seeds = every[every["sparsity"] == 0.5].set_index("criterion")
    assert seeds.loc["mechanistic", "seeds"] == 2 and seeds.loc["mechanistic", "mean"] == pytest.approx(0.965)
    assert seeds.loc["magnitude", "mean"] == pytest.approx(0.91)
    front = tables.fronts(df)["sparsity"]
    # (sparsity, dev): (0.3, .99) and (0.5, .95) are non-dominated; the rest are dominated by one of them
    assert set(front["run_id"]) == {ids["a30"], ids["ref1"]}


def test_repeats_of_one_seed_count_once_across_seeds():
    import pandas as pd

    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "params.sparsity": [0.5] * 4,
                         "params.criterion": ["mechanistic"] * 4, "params.seed": [1, 1, 2, 3],
                         "metrics.test_retention": [0.90, 0.92, 0.95, 0.80]})
    (once,) = tables.seed_table(runs.iloc[:2]).to_dict("records")  # one seed twice: listed, no spread
    assert once["seeds"] == 1 and once["mean"] == pytest.approx(0.91) and math.isnan(once["sd"])
    (row,) = tables.seed_table(runs).to_dict("records")
    assert row["seeds"] == 3 and row["mean"] == pytest.approx((0.91 + 0.95 + 0.80) / 3)
    assert row["sd"] == pytest.approx(statistics.stdev([0.91, 0.95, 0.80]))


def test_ablation_statistics_by_hand(store, tmp_path):
    uri, ids, _, _ = store
    df = load_runs("fx", uri=uri)
    cells = df[df["tags.cell"].notna()]
    pq = per_query(uri, cells["run_id"], cache_dir=tmp_path, progress=False)
    assert pq[ids["ref1"]] == {"q1": 0.5, "q2": 0.6, "q3": 0.7}
    table = tables.ablation_table(cells, pq, resamples=2000)
    assert len(table) == 1
    row = table.iloc[0]
    # per-query means over seeds: reference 0.6 everywhere, magnitude 0.4 everywhere: every difference -0.2
    assert row["cell"] == "criterion=magnitude" and row["seeds"] == 2 and row["queries"] == 3
    assert row["mean diff nDCG@10"] == pytest.approx(-0.2)
    assert row["ci_low"] == pytest.approx(-0.2) and row["ci_high"] == pytest.approx(-0.2)
    assert row["wilcoxon p"] == pytest.approx(0.25)  # exact two-sided: 2 * (1/2)^3
    assert row["holm p"] == pytest.approx(0.25)  # one cell: Holm changes nothing


def test_report_files_and_the_page_in_a_real_browser(store, tmp_path):
    from analysis.report import build_report, log_report

    uri, ids, _, _ = store
    page = tmp_path / "page" / "fx.md"
    folder = build_report("fx", uri=uri, results_dir=tmp_path / "fx", resamples=1000, command="sma report -e fx",
                          page=page)
    md = (folder / "report.md").read_text()
    # the page to check in: the same report, every image line left out
    text_lines = [line for line in md.splitlines() if line and not line.startswith("![")]
    assert "![" in md and [line for line in page.read_text().splitlines() if line] == text_lines
    for rid in ids.values():  # every number traceable to its run
        assert rid in md
    assert "criterion=magnitude" in md
    assert "```bash\nsma ablate --seeds 2\nsma run --sparsity 0.3\nsma report -e fx\n```" in md
    for name in ("results.csv", "ablation.csv", "hypervolume.csv", "pareto_sparsity.png", "ablation.png"):
        assert (folder / name).is_file(), name
    # 30 %: 0.5 on every query, as the dense model: 100 % on any resample; 50 % (reference, per-query means
    # 0.6 over seeds): 120 % on any resample
    results = pd.read_csv(folder / "results.csv")
    assert list(results["95% CI (queries)"]) == ["100.0-100.0%", "120.0-120.0%"]
    assert list(results["Test queries"]) == [3, 3]
    # each query of the 50 % row: 0.6 (mean over seeds) against 0.5, 100 * 0.1 / 1.5 points of retention
    effects = pd.read_csv(folder / "queries.csv")
    assert list(effects["Sparsity"]) == ["30%"] * 3 + ["50%"] * 3
    assert list(effects["Effect (points)"]) == [0.0] * 3 + [6.67] * 3
    assert (folder / "queries.png").is_file()
    run_id = log_report("fx", uri, folder)
    from mlflow.tracking import MlflowClient

    logged = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id)}
    assert {"report.html", "report.md", "results.csv"} <= logged
    check_page_in_browser(folder / "report.html", "report-fixture.png")


def test_loading_runs_leaves_the_tracking_uri_as_it_was(store, monkeypatch):
    import os

    from mlflow.tracking._tracking_service import utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(utils, "_tracking_uri", None)
    load_runs("fx", uri=store[0])
    # neither the variable nor MLflow's global: a pinned global would send later fluent calls (models:/...) and,
    # through the variable, later searches to the default store
    assert "MLFLOW_TRACKING_URI" not in os.environ and utils._tracking_uri is None


def test_cells_differing_only_in_a_transfer_factor_are_different_configurations():
    import pandas as pd

    from sma.config import RunConfig, apply_overrides
    from sma.tracking import result_params

    def runs(length: int, devs: tuple[float, float]) -> list[dict]:
        params = result_params(apply_overrides(RunConfig(), {"distill.max_length": length}), 0.5)
        return [{**{f"params.{k}": v for k, v in params.items()}, "params.seed": seed, "run_id": f"{length}-{seed}",
                 "collection": "cacm", "metrics.dev_retention": dev, "metrics.test_retention": dev - 0.01,
                 "metrics.actual_sparsity": 0.5} for seed, dev in zip((1, 2), devs, strict=True)]

    df = pd.DataFrame(runs(128, (0.95, 0.94)) + runs(256, (0.97, 0.96)))
    best = tables.results_table(df)
    # 256 tokens: mean dev 0.965 over its own 2 seeds (pooled with 128's, it would be 4 runs at 0.955)
    assert list(best["Seeds"]) == [2] and list(best["Dev retention"]) == ["96.50%"]
    assert best["run_id"][0] == "256-1, 256-2"
    assert sorted(tables.seed_table(df)["max_length"]) == [128, 256]


def test_a_run_older_than_a_factor_takes_its_value_from_the_config_its_parent_logged(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    from sma.config import RunConfig, apply_overrides, save_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("old", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp_id).info.run_id
    save_config(apply_overrides(RunConfig(), {"distill.max_length": 192, "distill.neighbor_share": 0.25}),
                tmp_path / "config.json")
    client.log_artifact(parent, str(tmp_path / "config.json"))
    client.set_terminated(parent)
    base = {"criterion": "mechanistic", "dataset": "cacm", "sparsity": 0.5, "seed": 1}
    old = _log(client, exp_id, tmp_path, params=base, metrics=_metrics(0.5, 0.9, 0.9, 2.0),
               per_query_test=dict.fromkeys(QUERIES, 0.5))
    client.set_tag(old, "mlflow.parentRunId", parent)
    new = _log(client, exp_id, tmp_path, params={**base, "seed": 2, "max_length": 128},
               metrics=_metrics(0.5, 0.9, 0.9, 2.0), per_query_test=dict.fromkeys(QUERIES, 0.5))
    client.set_tag(new, "mlflow.parentRunId", parent)  # what a run logged itself is kept
    orphan = _log(client, exp_id, tmp_path, params={**base, "seed": 3}, metrics=_metrics(0.5, 0.9, 0.9, 2.0),
                  per_query_test=dict.fromkeys(QUERIES, 0.5))
    moved_parent = client.create_run(exp_id).info.run_id  # logged its config, then its artifacts moved away
    client.log_artifact(moved_parent, str(tmp_path / "config.json"))
    client.set_terminated(moved_parent)
    moved = _log(client, exp_id, tmp_path, params={**base, "seed": 4, "neighbor_share": 0.25},
                 metrics=_metrics(0.5, 0.9, 0.9, 2.0), per_query_test=dict.fromkeys(QUERIES, 0.5))
    client.set_tag(moved, "mlflow.parentRunId", moved_parent)
    (tmp_path / "artifacts" / moved_parent / "artifacts" / "config.json").unlink()

    with caplog.at_level(logging.WARNING, logger="analysis.runs"):
        df = load_runs("old", uri=uri).set_index("run_id")
    # max_length holds 192, 128 and "None" (unset), so it stays text; neighbor_share is numbers only
    assert df.loc[old, "params.max_length"] == "192" and df.loc[old, "params.neighbor_share"] == 0.25
    assert df.loc[old, "params.pseudo_queries"] == "None"  # the config's default: derived from the collection
    assert df.loc[new, "params.max_length"] == "128"
    assert df.loc[new, "params.neighbor_share"] == 0.25  # missing from the run, so from the parent
    # no config to read (no parent; a parent whose artifacts moved): the defaults, what the run logged kept
    for run in (orphan, moved):
        assert df.loc[run, "params.max_length"] == "None" and df.loc[run, "params.precision"] == "float32"
        assert df.loc[run, "params.gentleness"] == 0.5 and df.loc[run, "params.post_prune_epochs"] == 8
    assert df.loc[orphan, "params.neighbor_share"] == 0.5 and df.loc[moved, "params.neighbor_share"] == 0.25
    warned = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("2 result run(s)") and orphan in warned[0] and moved in warned[0]


def test_a_result_run_logs_every_recipe_param_unset_ones_as_none(tmp_path):
    """So that the report groups a run by its own params, never by a parent's artifacts."""
    from mlflow.tracking import MlflowClient

    from sma.config import RunConfig, apply_overrides
    from sma.config.ablation import RECIPE_PARAMS
    from sma.tracking import Tracking, result_params

    cfg = apply_overrides(RunConfig(), {"distill.max_length": None, "distill.precision": "auto"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rid = Tracking.open(uri, "new").create_run("s0.50", tags={}, params=result_params(cfg, 0.5))
    logged = MlflowClient(tracking_uri=uri).get_run(rid).data.params
    assert set(RECIPE_PARAMS) <= set(logged)
    assert logged["max_length"] == "None" and logged["train_queries"] == "None" and logged["pseudo_queries"] == "None"
    assert logged["precision"] == "auto" and logged["neighbor_share"] == "0.5"


def test_time_table_gives_mean_minutes_per_phase_of_the_runs_that_timed_them(tmp_path):
    import pandas as pd

    df = pd.DataFrame([
        {"collection": "cacm", "params.sparsity": 0.5, "metrics.seconds_recovery": 600.0,
         "metrics.seconds_evaluation": 60.0, "metrics.seconds": 900.0},
        {"collection": "cacm", "params.sparsity": 0.5, "metrics.seconds_recovery": 1200.0,
         "metrics.seconds_evaluation": 120.0, "metrics.seconds": 1500.0},
        {"collection": "cacm", "params.sparsity": 0.5, "metrics.seconds": 7000.0},  # an older run, not timed
        {"collection": "cranfield", "params.sparsity": 0.3, "metrics.seconds_recovery": 30.0,
         "metrics.seconds_evaluation": 6.0, "metrics.seconds": 60.0},
    ])
    table = tables.time_table(df)
    assert list(table["Collection"]) == ["cacm", "cranfield"] and list(table["Runs"]) == [2, 1]
    assert list(table["recovery"]) == [15.0, 0.5] and list(table["evaluation"]) == [1.5, 0.1]
    assert list(table["total"]) == [20.0, 1.0]
    assert tables.time_table(df.drop(columns=["metrics.seconds_recovery", "metrics.seconds_evaluation"])).empty
    # a param that differs among the timed runs (the untimed run's value does not count) splits the rows
    df["params.precision"] = ["float32", "bfloat16", "float16", "float32"]
    table = tables.time_table(df)
    assert list(table["precision"]) == ["bfloat16", "float32", "float32"] and list(table["Runs"]) == [1, 1, 1]
    assert list(table["recovery"]) == [20.0, 10.0, 0.5] and list(table["total"]) == [25.0, 15.0, 1.0]
    from analysis import plots

    assert plots.time_plot(table, tmp_path / "time.png").stat().st_size > 0  # config columns are labels, not bars
    df["params.precision"] = ["float32", "float32", "float16", "float32"]  # only the untimed run differs
    assert "precision" not in tables.time_table(df).columns


def test_collection_table_has_a_row_per_collection_and_cut():
    import pandas as pd

    def run(collection: str, docs: int, past: float, length: str, derived: float | None = None) -> dict:
        return {"collection": collection, "metrics.documents": docs, "metrics.train_queries": 20.0,
                "metrics.doc_tokens_median": 28.0, "metrics.docs_over_distill_length": past,
                "params.max_length": length, "metrics.distill_length": derived}

    df = pd.DataFrame([run("cacm", 3204, 0.2, "128"), run("cacm", 3204, 0.2, "None", 128.0),
                       run("cacm", 3204, 0.05, "256"), run("cranfield", 1400, 0.29, "None", 256.0),
                       {"collection": "old"}])
    table = tables.collection_table(df)
    assert list(table["Collection"]) == ["cacm", "cacm", "cranfield"]  # cacm under two distillation lengths
    assert list(table["Distill length"]) == [128, 256, 256]  # set (logged as a param) or derived (a metric)
    assert list(table["Docs past distill length"]) == ["20%", "5%", "29%"]
    assert list(table["Documents"]) == [3204, 3204, 1400]
    assert tables.collection_table(pd.DataFrame([{"collection": "old"}])).empty


def test_recovery_curves_take_every_per_epoch_metric_once_per_step(tmp_path, monkeypatch):
    """Per-epoch rows (steps 1-3) and the final metrics logged again at the last epoch's step: each curve has one
    point per epoch, the label-free ones too; a metric logged once (no epochs) draws no curve."""
    from mlflow.tracking import MlflowClient

    from analysis import plots, report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("cv", artifact_location=(tmp_path / "artifacts").as_uri())
    rid = client.create_run(exp_id).info.run_id
    for step, (dev, cosine) in enumerate([(0.9, 0.80), (0.95, 0.85), (0.97, 0.9)], start=1):
        client.log_metric(rid, "dev_retention", dev, step=step)
        client.log_metric(rid, "corpus_cosine", cosine, step=step)
    client.log_metric(rid, "corpus_cosine", 0.9, step=3)  # the final metrics, again at the last epoch
    client.log_metric(rid, "dev_top10_overlap", 0.7, step=3)  # logged once: no curve
    drawn, real = {}, plots.curves_plot
    monkeypatch.setattr(plots, "curves_plot", lambda curves, labels, path: drawn.update(curves) or path)
    df = pd.DataFrame({"run_id": [rid], tables.SPARSITY: [0.5]})
    (section,) = report._curves_section(df, uri, tmp_path)
    assert list(drawn) == [report.CURVES["dev_retention"], report.CURVES["corpus_cosine"]]
    for label, values in ((report.CURVES["dev_retention"], [0.9, 0.95, 0.97]),
                          (report.CURVES["corpus_cosine"], [0.80, 0.85, 0.9])):
        assert drawn[label].sort_values("step")["value"].tolist() == pytest.approx(values)
    assert section.images == (tmp_path / "recovery.png",)
    assert real(drawn, {}, tmp_path / "drawn.png").stat().st_size > 0  # two panels, really drawn


def test_results_table_shows_int8_retention_over_the_seeds_that_measured_it():
    df = _two_collections()
    assert "Retention int8" not in tables.results_table(df).columns  # nothing measured: no int8 columns
    # cacm seed 2 measured int8 (bench.int8): 0.96 retention at 4.2x; seed 1 did not
    df["metrics.test_retention_int8"] = [None, 0.96, None, None, None, None]
    df["metrics.speedup_int8"] = [None, 4.2, None, None, None, None]
    table = tables.results_table(df).set_index("Collection")
    assert table.loc["cacm", "Retention int8"] == "96.00%" and table.loc["cacm", "Speedup int8"] == 4.2
    assert table.loc["cacm", "int8 seeds"] == 1 and table.loc["cacm", "Seeds"] == 2
    assert table.loc["cacm", "int8 loss (points)"] == 1.0  # seed 2's float32 0.97 - int8 0.96
    assert pd.isna(table.loc["cranfield", "Retention int8"])
    assert "int8 loss 95% CI (queries)" not in table.columns  # no per-query numbers of the int8 copies


def test_the_int8_loss_interval_is_over_the_queries_of_the_seeds_that_measured_it():
    df = _two_collections()
    df["metrics.test_retention_int8"] = [0.95, 0.95, None, None, None, None]  # both cacm seeds measured it
    # cacm per-query means over seeds: float32 a 0.45, b 0.8; int8 a 0.35, b 0.8; dense a 1.0, b 0.8 (a seed
    # alone would give other means). Paired resamples lose 0.1 / 1.0, 0.1 / 1.8 or 0: interval 0 to 10 points
    pruned = {"r0": {"a": 0.4, "b": 0.8}, "r1": {"a": 0.5, "b": 0.8}}
    int8 = {"r0": {"a": 0.2, "b": 0.8}, "r1": {"a": 0.5, "b": 0.8}}
    dense = {r: {"a": 1.0, "b": 0.8} for r in ("r0", "r1")}
    table = tables.results_table(df, pruned, dense, int8=int8, resamples=4000).set_index("Collection")
    # the loss column itself: mean over the seeds of float32 - int8 test retention, (0.99 - 0.95 + 0.97 - 0.95) / 2
    assert table.loc["cacm", "int8 loss (points)"] == 3.0
    assert table.loc["cacm", "int8 loss 95% CI (queries)"] == "0.00 to 10.00"
    del int8["r1"]  # one seed without its int8 per-query numbers: no interval
    table = tables.results_table(df, pruned, dense, int8=int8, resamples=4000).set_index("Collection")
    assert "int8 loss 95% CI (queries)" not in table.columns and table.loc["cacm", "int8 loss (points)"] == 3.0


def test_results_table_gives_the_paired_query_interval_of_retention_over_seed_means():
    df = _two_collections()
    assert "95% CI (queries)" not in tables.results_table(df).columns  # no per-query numbers: no columns
    # cacm (r0, r1): per-query means over the seeds are a 0.9, b 0.18 against the dense 1.0 and 0.2, so every
    # paired resample of queries keeps exactly 90 %; the first seed alone would give 80-90 %
    pruned = {"r0": {"a": 0.8, "b": 0.18}, "r1": {"a": 1.0, "b": 0.18}, "r4": {"a": 0.5}, "r5": {"a": 0.5}}
    dense = {r: {"a": 1.0, "b": 0.2} for r in ("r0", "r1")} | {"r4": {"a": 0.6}}  # r5 has no dense numbers
    table = tables.results_table(df, pruned, dense, resamples=2000).set_index("Collection")
    assert table.loc["cacm", "95% CI (queries)"] == "90.0-90.0%" and table.loc["cacm", "Test queries"] == 2
    assert pd.isna(table.loc["cranfield", "95% CI (queries)"])  # one of its runs lacks the dense side


def test_the_queries_that_move_a_rows_retention_most_by_hand():
    df = _two_collections()
    # cacm (r0, r1): per-query means over seeds a 0.9, b 0.25, c 0.5 against the dense 1.0, 0.2, 0.5
    pruned = {"r0": {"a": 0.8, "b": 0.2, "c": 0.5}, "r1": {"a": 1.0, "b": 0.3, "c": 0.5}}
    dense = {r: {"a": 1.0, "b": 0.2, "c": 0.5} for r in ("r0", "r1")}
    rows = tables.row_queries(tables.results_table(df, pruned, dense, resamples=100), pruned, dense)
    assert [(c, s) for c, s, _ in rows] == [("cacm", "50%")]  # cranfield's runs have no per-query numbers
    frame = rows[0][2].set_index("query")
    # effect = 100 * (pruned - dense) / (1.0 + 0.2 + 0.5): a -10 / 1.7, b +5 / 1.7, c 0; they add up to
    # retention - 100 = 100 * 1.65 / 1.7 - 100
    assert frame["effect"].to_dict() == pytest.approx({"a": -1000 / 170, "b": 500 / 170, "c": 0.0})
    assert frame["effect"].sum() == pytest.approx(100 * 1.65 / 1.7 - 100)
    top = tables.query_effect_table(rows, top=2)
    assert list(top["Query"]) == ["a", "b"] and list(top["Effect (points)"]) == [-5.88, 2.94]
    assert list(top["Retention"]) == ["97.06%", "97.06%"]
    assert list(top["Without it"]) == ["107.14%", "93.33%"]  # 0.75 / 0.7 and 1.4 / 1.5
