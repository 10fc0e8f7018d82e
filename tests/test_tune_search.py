"""``sma tune`` end to end on a real local Ray cluster (2 CPUs), real SQLite Optuna studies and real MLflow
(a SQLite store, and an ``mlflow server`` on 127.0.0.1), running the real pipeline on the tiny offline assets.

One Ray cluster serves the module; the resume test's drivers are subprocesses connected to it, so killing
one is a driver dying on a live cluster (as with ``ray job submit``)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.trial import TrialState
from servers import local_ray, start_mlflow, stop_group

from sma.config import RunConfig, SearchConfig, apply_overrides
from sma.config.options import smoke_run
from sma.layout import trial_run_name
from tune.search import search
from tune.studies import INTERRUPTED_ATTR, rdb_storage, study_name, trials

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FINAL_METRICS = ("dev_retention", "test_retention", "test_ndcg_at_10", "speedup", "memory_ratio", "actual_sparsity")
TAGS = ("experiment", "study", "sparsity", "optuna_trial", "criterion", "git_commit", "mlflow.parentRunId")


@pytest.fixture(scope="module")
def ray_address():
    with local_ray() as address:
        yield address


def smoke_search(tmp: Path, *, experiment: str, sparsity: tuple[float, ...], trials_per_study: int,
                 **overrides) -> SearchConfig:
    run = smoke_run(RunConfig(output_dir=str(tmp / "results"), cache_dir=str(tmp / "cache"), experiment=experiment))
    cfg = SearchConfig(run=apply_overrides(run, {"sparsity": sparsity}), trials_per_study=trials_per_study)
    return apply_overrides(cfg, {"space.post_prune_epochs": "0 1", **overrides})


def mlflow_runs(uri: str, experiment: str, role: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], filter_string=f"tags.role = '{role}'"))


def test_two_studies_of_two_trials_share_one_baseline(ray_address, tmp_path):
    cfg = smoke_search(tmp_path, experiment="grid", sparsity=(0.3, 0.5), trials_per_study=2)
    started = time.time()
    results = search(cfg)
    print(f"2 studies x 2 trials: {time.time() - started:.0f} s")
    assert [(r.progress.complete, r.progress.failed) for r in results] == [(2, 0), (2, 0)]
    storage = rdb_storage(cfg.optuna_url())
    assert cfg.optuna_url() == f"sqlite:///{tmp_path}/results/grid/tune/optuna.db"
    per_trial = []
    for s in (0.3, 0.5):
        ts = trials(storage, study_name("grid", s))
        assert [t.state for t in ts] == [TrialState.COMPLETE] * 2
        for t in ts:
            m = t.user_attrs["metrics"]
            assert m["dev_retention"] == pytest.approx(t.value)  # the objective is dev retention
            assert abs(m["actual_sparsity"] - s) < 0.05 and set(FINAL_METRICS) <= set(m)
            per_trial.append(m)
    # shared work: the driver computed the baseline once, every trial found it in the cache
    prepared = [json.loads(line) for line in (cfg.tune_dir / "prepare.jsonl").read_text().splitlines()]
    assert [p["baseline_computed"] for p in prepared] == [True]
    assert [m["baseline_computed"] for m in per_trial] == [0.0] * 4
    cached = [f for f in (tmp_path / "cache").rglob("*") if f.is_file() and "smoke" not in f.parts]
    assert {f.parts[len((tmp_path / "cache").parts)] for f in cached} >= {"teacher", "analysis"}
    assert max(f.stat().st_mtime for f in cached) <= prepared[0]["finished_at"]  # trials wrote nothing there
    overhead = [m["ray_overhead_seconds"] for m in per_trial]
    pipeline = [m["pipeline_seconds"] for m in per_trial]
    print(f"per trial: Ray overhead {min(overhead):.1f}-{max(overhead):.1f} s, "
          f"pipeline {min(pipeline):.1f}-{max(pipeline):.1f} s")
    # MLflow: one parent run per study, one child run per trial
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    parents = mlflow_runs(uri, "grid", "study")
    children = mlflow_runs(uri, "grid", "trial")
    assert sorted(p.data.tags["study"] for p in parents) == ["grid-s0.30", "grid-s0.50"]
    assert all(p.info.status == "FINISHED" and "best_dev_retention" in p.data.metrics for p in parents)
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    parent_ids = {p.info.run_id for p in parents}
    for c in children:
        assert set(TAGS) <= set(c.data.tags) and c.data.tags["mlflow.parentRunId"] in parent_ids
        assert set(FINAL_METRICS) <= set(c.data.metrics)
        assert {"alpha", "gentleness", "post_prune_epochs"} <= set(c.data.params)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert {"plan.json", "metrics.json", "structures.json"} <= {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert "best_model" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert (Path(cfg.ray_storage()) / "grid-s0.30").is_dir()
    # the report of this real search: each sparsity's best dev trial, and each study's Optuna section
    from analysis.report import build_report

    report = build_report("grid", uri=uri, results_dir=tmp_path / "results" / "grid", resamples=1000)
    table = pd.read_csv(report / "results.csv")
    for s, row in zip((0.3, 0.5), table.itertuples(), strict=True):
        done = trials(storage, study_name("grid", s))
        top = max(t.value for t in done)  # two trials may tie (both keep 100 % of dev): either is the best
        best = {t.user_attrs["mlflow_run_id"]: t for t in done if t.value == top}
        assert row.Sparsity == f"{100 * s:.0f}%" and row.run_id in best
        assert row.Pruned == pytest.approx(best[row.run_id].user_attrs["metrics"]["test_ndcg_at_10"])
        study_trials = pd.read_csv(report / f"trials_grid-s{s:.2f}.csv")
        assert sorted(study_trials["number"]) == [0, 1] and set(study_trials["state"]) == {"COMPLETE"}
    assert "## Search: grid-s0.30" in (report / "report.md").read_text()


# -- resume after SIGKILL of the driver -------------------------------------------------------------------

def _states(db: Path) -> dict[int, str]:
    if not db.is_file():
        return {}
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return dict(con.execute("SELECT number, state FROM trials ORDER BY number").fetchall())
    except sqlite3.OperationalError:  # tables not created yet, or locked
        return {}


def test_resume_after_the_driver_is_killed(ray_address, tmp_path):
    cmd = [sys.executable, "-m", "sma.cli", "tune", "--smoke-test", "--experiment", "resume", "--sparsity", "0.5",
           "--trials", "3", "--output-dir", str(tmp_path / "results"), "--set", f"run.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "RAY_ADDRESS": ray_address, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    db = tmp_path / "results" / "resume" / "tune" / "optuna.db"
    log1 = (tmp_path / "driver1.log").open("w")
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT)
    deadline = time.time() + 400
    while not {"COMPLETE", "RUNNING"} <= set(_states(db).values()):  # one trial done, another one running
        assert driver.poll() is None, (tmp_path / "driver1.log").read_text()[-3000:]
        assert time.time() < deadline, "no trial completed while another ran"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    running = {n for n, state in _states(db).items() if state == "RUNNING"}
    assert running  # the driver died with a trial in flight
    driver.wait()
    storage = rdb_storage(f"sqlite:///{db}")
    done_before = {t.number: (t.datetime_complete, t.user_attrs["mlflow_run_id"])
                   for t in trials(storage, "resume-s0.50") if t.state == TrialState.COMPLETE}
    result_files = {t.number: Path(t.user_attrs["checkpoint"]) / "result.json"
                    for t in trials(storage, "resume-s0.50") if t.number in done_before}
    stamps = {n: p.stat().st_mtime_ns for n, p in result_files.items()}
    print("killed with", _states(db))
    assert done_before

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = trials(storage, "resume-s0.50")
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    interrupted = {t.number for t in after if t.user_attrs.get(INTERRUPTED_ATTR)}
    assert len(complete) == 3 and len(after) == 3 + len(interrupted)  # exactly N finished, each extra replaced one
    assert all(t.state == TrialState.COMPLETE or t.number in interrupted for t in after)  # no zombie
    # the trial in flight was either finished by the restored Ray experiment (same Optuna trial) or marked
    # interrupted and replaced by a new one
    assert running <= {t.number for t in complete} | interrupted and interrupted <= running
    # completed trials were not rerun: same completion time, same MLflow run, same result files
    assert {t.number: (t.datetime_complete, t.user_attrs["mlflow_run_id"]) for t in complete
            if t.number in done_before} == done_before
    assert {n: p.stat().st_mtime_ns for n, p in result_files.items()} == stamps
    for t in complete:  # each kept its files; the one restarted after the kill in a Train run of its own
        checkpoint = Path(t.user_attrs["checkpoint"])
        assert (checkpoint / "result.json").is_file() and (checkpoint / "model").is_dir()
        assert checkpoint.parent.name == trial_run_name(t.number, 2 if t.number in running else 1)
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    children = mlflow_runs(uri, "resume", "trial")
    by_trial = {int(c.data.tags["optuna_trial"]): c.info.status for c in children}
    assert len(children) == len(by_trial)  # one child run per Optuna trial, none duplicated by the rerun
    assert by_trial == {t.number: "FINISHED" if t.state == TrialState.COMPLETE else "KILLED"
                        for t in after if t.number in by_trial}
    assert [r.info.status for r in mlflow_runs(uri, "resume", "study")] == ["FINISHED"]


# -- a failing trial, and a trial on 2 DDP workers, logged to an MLflow server ------------------------------

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server, url = start_mlflow(tmp_path_factory.mktemp("mlflow-server"))
    yield url
    stop_group(server)


@pytest.fixture(scope="module")
def two_worker_search(ray_address, mlflow_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = smoke_search(tmp, experiment="ddp", sparsity=(0.5,), trials_per_study=2, fail_on_trial=0,
                       **{"run.workers.num_workers": 2, "run.mlflow_tracking_uri": mlflow_server})
    started = time.time()
    results = search(cfg)
    print(f"2 trials on 2 workers (one failing): {time.time() - started:.0f} s")
    return cfg, results


def test_a_failing_trial_is_failed_in_optuna_and_mlflow_and_the_others_complete(two_worker_search):
    cfg, results = two_worker_search
    assert (results[0].progress.complete, results[0].progress.failed) == (1, 1)
    states = {t.number: t for t in trials(rdb_storage(cfg.optuna_url()), "ddp-s0.50")}
    assert states[0].state == TrialState.FAIL and not states[0].user_attrs.get(INTERRUPTED_ATTR)
    assert states[1].state == TrialState.COMPLETE
    children = {int(c.data.tags["optuna_trial"]): c for c in mlflow_runs(cfg.run.mlflow_tracking_uri, "ddp", "trial")}
    assert children[0].info.status == "FAILED" and "raises on purpose" in children[0].data.tags["error"]
    assert children[1].info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.run.mlflow_tracking_uri)
    error_txt = client.download_artifacts(children[0].info.run_id, "error.txt", str(cfg.tune_dir))
    assert "raises on purpose" in Path(error_txt).read_text()  # the traceback, through the server


def test_a_two_worker_trial_prunes_the_same_units_on_both_ranks(two_worker_search):
    cfg, _ = two_worker_search
    done = [t for t in trials(rdb_storage(cfg.optuna_url()), "ddp-s0.50") if t.state == TrialState.COMPLETE]
    assert len(done) == 1
    metrics = done[0].user_attrs["metrics"]
    assert metrics["world_size"] == 2 and metrics["ranks_agree"] == 1
    structures = json.loads((Path(done[0].user_attrs["checkpoint"]) / "structures.json").read_text())
    assert len(structures) == 2 and structures[0] == structures[1]
    assert sum(layer["heads"] for layer in structures[0]) < 2 * 4  # pruned: the tiny BERT has 2 x 4 heads
    assert (Path(done[0].user_attrs["checkpoint"]) / "model").is_dir()
