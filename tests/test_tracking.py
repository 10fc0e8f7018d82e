"""``sma run`` in MLflow: a parent run per invocation, a result run per sparsity, the same fields as a trial's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_pipeline import _cfg

import sma.pipeline
from sma.config import apply_overrides
from sma.pipeline import run

ROW_ONLY = ("artifacts", "schedule", "structure")
"""Entries of a results.json row that are not numbers (everything else is an MLflow metric)."""


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # recorded, so that teardown restores the caller's value
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the default store under output_dir


def _runs(uri: str, experiment: str, filter_string: str) -> list:
    """What an analysis finds with ``mlflow.search_runs`` (through a client: ``mlflow.set_tracking_uri``
    would leave ``$MLFLOW_TRACKING_URI`` set for the tests that run after)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], filter_string=filter_string))


def _artifact_json(uri: str, run_id: str, name: str, dst: Path) -> dict:
    from mlflow.tracking import MlflowClient

    dst.mkdir(parents=True, exist_ok=True)
    return json.loads(Path(MlflowClient(tracking_uri=uri).download_artifacts(run_id, name, str(dst))).read_text())


def test_run_logs_a_parent_and_a_result_run_per_sparsity(tiny_model_dir, tiny_beir, tmp_path, capsys,
                                                         monkeypatch):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path)
    monkeypatch.setattr("sys.argv", ["/venv/bin/sma", "run", "--set", "prune.split=a b"])
    results = run(cfg)
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    assert results["mlflow"]["tracking_uri"] == uri
    on_disk = json.loads((tmp_path / "results" / "e" / "results.json").read_text())
    assert on_disk["mlflow"] == results["mlflow"]
    [parent] = _runs(uri, "e", "tags.role = 'run'")
    assert parent.info.run_id == results["mlflow"]["run_id"] and parent.info.status == "FINISHED"
    assert parent.data.tags["command"] == "sma run --set 'prune.split=a b'"  # how to make it again
    assert f"MLflow: run {parent.info.run_id}" in capsys.readouterr().out
    assert {"alpha", "gentleness", "post_prune_epochs", "model", "dataset", "seed"} <= set(parent.data.params)
    assert _artifact_json(uri, parent.info.run_id, "config.json", tmp_path / "dl")["sparsity"] == [0.3, 0.5]
    children = _runs(uri, "e", "tags.result = '1'")
    assert len(children) == 2
    by_sparsity = {float(c.data.params["sparsity"]): c for c in children}
    for row in results["sparsities"]:
        child = by_sparsity[row["sparsity"]]
        assert child.info.status == "FINISHED" and child.data.tags["role"] == "sparsity"
        assert "command" not in child.data.tags
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        numeric = {k: v for k, v in row.items() if k not in ROW_ONLY}
        assert child.data.metrics == pytest.approx({k: float(v) for k, v in numeric.items()})
        assert {"test_retention", "speedup", "dev_retention", "actual_sparsity"} <= set(child.data.metrics)
        assert {"alpha", "gentleness", "post_prune_epochs", "sparsity"} <= set(child.data.params)
        assert child.data.params["alpha"] == str(cfg.distill.alpha)
        logged = _artifact_json(uri, child.info.run_id, "metrics.json", tmp_path / "dl" / child.info.run_id)
        local = json.loads(Path(row["artifacts"]["metrics"]).read_text())
        ndcg = {q: m["ndcg_at_10"] for q, m in logged["per_query"]["test"].items()}
        assert ndcg == {q: m["ndcg_at_10"] for q, m in local["per_query"]["test"].items()}
        assert sum(ndcg.values()) / len(ndcg) == pytest.approx(row["test_ndcg_at_10"])
        files = {a.path for a in _client(uri).list_artifacts(child.info.run_id)}
        assert {"plan.json", "metrics.json"} <= files
    _trial_has_the_same_fields(cfg, uri, by_sparsity[0.3])


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _trial_has_the_same_fields(cfg, uri: str, run_child) -> None:
    """A search trial's child run, built by the trial's own code, has the params and tags of a run's child."""
    from sma.tracking import Tracking, git_commit
    from tune.trainable import TrialContext, trial_tags_params

    tracking = Tracking.open(uri, "e")
    study = "e-s0.30"
    ctx = TrialContext(run=cfg, study=study, sparsity=0.3, optuna_url="", tracking=tracking, parent_run_id="",
                       train_storage="", tags={"experiment": "e", "git_commit": git_commit(),
                                               "criterion": cfg.prune.criterion, "study": study})
    tags, params = trial_tags_params(ctx, cfg)
    parent = tracking.parent_run(study=study, tags=ctx.tags, params={})
    trial_id = tracking.child_run(parent_id=parent, study=study, number=0, tags=tags, params=params)
    [trial] = _runs(uri, "e", f"tags.role = 'trial' AND tags.result = '1' AND attributes.run_id = '{trial_id}'")
    assert set(trial.data.params) == set(run_child.data.params)
    own = {"study", "optuna_trial"}  # what identifies a trial in its study
    assert set(trial.data.tags) - own == set(run_child.data.tags)
    for key in ("experiment", "sparsity", "criterion", "git_commit", "result"):
        assert trial.data.tags[key] == run_child.data.tags[key]


def test_tracking_only_observes_and_can_be_off(tiny_model_dir, tiny_beir, tmp_path):
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path, **{"sparsity": "0.5", "bench.enabled": False})
    tracked = run(cfg)
    untracked = run(apply_overrides(cfg, {"track": False, "output_dir": str(tmp_path / "off")}))
    assert (tmp_path / "results" / "mlflow.db").is_file()
    assert not (tmp_path / "off" / "mlflow.db").exists() and "mlflow" not in untracked
    assert not list((tmp_path / "off").rglob("mlartifacts"))
    for a, b in zip(tracked["sparsities"], untracked["sparsities"], strict=True):
        def same(row: dict) -> dict:  # wall times and file paths differ between two runs
            return {k: v for k, v in row.items() if not k.startswith("seconds") and k != "artifacts"}

        assert same(a) == same(b)


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_sparsity_that_raises_fails_its_run_and_the_parent(tiny_model_dir, tiny_beir, tmp_path, monkeypatch,
                                                             error, status):
    def broken(cfg, sparsity, **_):
        if sparsity == 0.5:
            raise error("boom")
        return {"sparsity": sparsity, "test_retention": 0.9}

    shared = SimpleNamespace(profile=SimpleNamespace(to_dict=dict))  # the fake sparsity needs no analysis
    monkeypatch.setattr(sma.pipeline, "prepare", lambda *a, **k: shared)
    monkeypatch.setattr(sma.pipeline, "run_sparsity", broken)
    cfg = _cfg(tiny_model_dir, tiny_beir, tmp_path)
    with pytest.raises(error, match="boom"):
        run(cfg)
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    [parent] = _runs(uri, "e", "tags.role = 'run'")
    children = {float(c.data.params["sparsity"]): c for c in _runs(uri, "e", "tags.role = 'sparsity'")}
    assert parent.info.status == status and children[0.5].info.status == status
    assert children[0.3].info.status == "FINISHED" and children[0.3].data.metrics["test_retention"] == 0.9
    saved = json.loads((cfg.run_dir / "results.json").read_text())  # the finished sparsity, marked incomplete
    assert saved["complete"] is False and [r["sparsity"] for r in saved["sparsities"]] == [0.3]
    if status == "FAILED":
        assert children[0.5].data.tags["error"] == "RuntimeError: boom"
        assert parent.data.tags["error"] == "RuntimeError: boom"


OPEN_STORE = """
import sys
from sma.tracking import Tracking
Tracking.open(sys.argv[1], "e")
"""


def test_runs_started_at_once_on_a_new_store_all_open_it(tmp_path):
    """Three processes open one new SQLite store at the same moment (two ``sma run`` started together on a new
    machine): each creates MLflow's tables unless they take turns, and all but one then failed with
    ``table _alembic_tmp_experiments already exists``."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        errors = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(errors)[-2000:]
    assert [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()].count("e") == 1


def test_artifacts_of_a_store_reached_through_a_link_go_beside_the_real_file(tmp_path):
    """A results folder whose ``mlflow.db`` links to a shared store (a git worktree using the main checkout's
    results) keeps the experiment's artifacts beside the real database, not inside the folder of the link."""
    from sma.tracking import Tracking

    (tmp_path / "shared").mkdir()
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / "mlflow.db").symlink_to(tmp_path / "shared" / "mlflow.db")
    tracking = Tracking.open(f"sqlite:///{tmp_path / 'wt' / 'mlflow.db'}", "e")
    location = tracking.client.get_experiment(tracking.experiment_id).artifact_location
    assert location == (tmp_path / "shared" / "mlartifacts" / "e").resolve().as_uri()


def test_sma_log_gives_an_untracked_run_the_runs_a_tracked_one_gets(tiny_model_dir, tiny_beir, tmp_path,
                                                                    monkeypatch):
    """A run made with track=false (a GPU node without the tracking server), then ``sma log``: the same parent
    and result runs, params and metrics as the same run tracked, with the command and commit of the run."""
    from sma.cli import main
    from sma.provenance import git_commit

    tracked = apply_overrides(_cfg(tiny_model_dir, tiny_beir, tmp_path / "a"), {"experiment": "e"})
    monkeypatch.setattr("sys.argv", ["sma", "run", "--seed", "42"])
    run(tracked)
    untracked = apply_overrides(_cfg(tiny_model_dir, tiny_beir, tmp_path / "b"), {"track": False})
    results = run(untracked)
    assert "mlflow" not in results and not (tmp_path / "b" / "results" / "mlflow.db").exists()
    assert (results["command"], results["git_commit"]) == ("sma run --seed 42", git_commit())
    run_dir = tmp_path / "b" / "results" / "e"
    results_file = run_dir / "results.json"
    on_disk = json.loads(results_file.read_text())
    on_disk["git_commit"] = "0123abc"  # the commit of the machine that ran it, not this checkout's
    results_file.write_text(json.dumps(on_disk))
    monkeypatch.setattr("sys.argv", ["sma", "log", str(run_dir)])
    uri = f"sqlite:///{tmp_path / 'a' / 'results' / 'mlflow.db'}"  # beside the tracked run
    assert main(["log", str(run_dir), "--mlflow-tracking-uri", uri]) == 0
    parents = {p.data.tags.get("source_results") is not None: p for p in _runs(uri, "e", "tags.role = 'run'")}
    assert set(parents) == {False, True}
    mine, theirs = parents[True], parents[False]
    assert mine.data.tags["command"] == "sma run --seed 42" and mine.data.tags["git_commit"] == "0123abc"
    assert mine.data.params == theirs.data.params and mine.info.status == "FINISHED"
    children = {}
    for c in _runs(uri, "e", "tags.result = '1'"):
        children[c.data.tags["mlflow.parentRunId"], float(c.data.params["sparsity"])] = c
    assert len(children) == 4
    for row in on_disk["sparsities"]:
        s = row["sparsity"]
        logged, direct = children[mine.info.run_id, s], children[theirs.info.run_id, s]
        assert logged.data.params == direct.data.params
        assert set(logged.data.metrics) == set(direct.data.metrics)
        assert logged.data.metrics["test_retention"] == pytest.approx(row["test_retention"])
        assert {k: v for k, v in logged.data.tags.items() if k not in ("mlflow.parentRunId", "git_commit", "mlflow.runName")} \
            == {k: v for k, v in direct.data.tags.items() if k not in ("mlflow.parentRunId", "git_commit", "mlflow.runName")}
        assert logged.data.tags["git_commit"] == "0123abc"
        assert {a.path for a in _client(uri).list_artifacts(logged.info.run_id)} >= {"plan.json", "metrics.json"}
    # again: nothing new; a folder that is not a run: one line, before MLflow is opened
    assert main(["log", str(run_dir), "--mlflow-tracking-uri", uri]) == 0
    assert len(_runs(uri, "e", "tags.role = 'run'")) == 2
    assert main(["log", str(tmp_path), "--mlflow-tracking-uri", uri]) == 2
