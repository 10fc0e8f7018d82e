"""Faults lose nothing: a trial whose worker process dies, a trial whose loss turns NaN, trials a scheduler stops
early, and an MLflow server that goes away mid-search. The searches run like ``tests/test_tune_search.py``'s: a real
local Ray (2 CPUs, one per trial's single worker), real SQLite Optuna studies and MLflow, the tiny offline assets.
Faults are injected through :func:`tune.search.search`'s test hook ``faults`` (see :data:`tune.worker.FAULTS`)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState
from servers import local_ray, start_mlflow, stop_group
from test_tune_search import FINAL_METRICS, _states, mlflow_runs, smoke_search

import sma
from sma.config import DistillConfig, TrainConfig
from sma.data import load_beir_folder
from sma.distill import DistillTexts, distill_epochs
from sma.model import BiEncoder
from sma.train import NonFiniteLoss, train_baseline
from tune.search import TrackingError, search
from tune.studies import ERROR_ATTR, INTERRUPTED_ATTR, TRACKING_ERROR_ATTR, rdb_storage, trials

slow = pytest.mark.slow
QUICK_MLFLOW_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""MLflow gives up on an unreachable server at once (it retries 7 times with backoff by default): the driver and
the Ray workers (they inherit the environment of the ``ray.init`` below) all read these."""


@pytest.fixture(scope="module")
def ray_address():
    with local_ray(QUICK_MLFLOW_FAILURE) as address:
        yield address


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# -- a non-finite loss stops training with where it happened -----------------------------------------------

def test_distillation_raises_on_a_non_finite_loss_naming_the_epoch_and_step(tiny_model_dir):
    student = BiEncoder.from_pretrained(str(tiny_model_dir))
    texts = tuple(f"wing lift {w} flow" for w in ("shock", "heat", "drag", "plate", "cone", "jet", "nozzle", "shell"))
    data = DistillTexts(texts=texts, teacher=torch.nn.functional.normalize(torch.randn(8, 32), dim=-1))
    # an infinite learning rate: the first step makes every weight NaN, the second batch's loss is NaN
    cfg = DistillConfig(batch_size=4, max_length=8, learning_rate=float("inf"), neighbor_share=0.0, warmup_ratio=0.0)
    with pytest.raises(NonFiniteLoss, match=r"^s=0.50 post-prune: the loss is nan at epoch 1, step 2 "):
        distill_epochs(student, data, cfg, epochs=3, seed=0, show_progress=False, desc="s=0.50 post-prune")
    fine = DistillConfig(batch_size=4, max_length=8, learning_rate=1e-3, neighbor_share=0.0)
    assert len(distill_epochs(BiEncoder.from_pretrained(str(tiny_model_dir)), data, fine, epochs=2, seed=0,
                              show_progress=False)) == 2


def test_baseline_training_raises_on_a_non_finite_loss(tiny_model_dir, tiny_beir):
    model = BiEncoder.from_pretrained(str(tiny_model_dir))
    corpus, queries, qrels = load_beir_folder(tiny_beir).split("train")
    cfg = TrainConfig(baseline_epochs=2, batch_size=4, learning_rate=float("inf"), warmup_ratio=0.0,
                      hard_negatives="none")
    with pytest.raises(NonFiniteLoss, match=r"^baseline training: the loss is nan at epoch 1, step 2 "):
        train_baseline(model, corpus, queries, qrels, cfg, seed=0, show_progress=False)


# -- a dying worker fails its trial after Tune's retry; the search goes on -------------------------------------

@slow
def test_a_dying_worker_fails_its_trial_after_a_retry_and_the_other_trial_completes(ray_address, tmp_path):
    cfg = smoke_search(tmp_path, experiment="exits", sparsity=(0.5,), trials_per_study=2, max_failures=1)
    started = time.time()
    (result,) = search(cfg, faults={0: "exit"})
    print(f"2 trials, one dying twice: {time.time() - started:.0f} s")
    assert (result.progress.complete, result.progress.failed, result.progress.interrupted) == (1, 1, 0)
    ts = {t.number: t for t in trials(rdb_storage(cfg.optuna_url()), "exits-s0.50")}
    assert (ts[0].state, ts[1].state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert "WorkerGroupError" in ts[0].user_attrs[ERROR_ATTR] and not ts[0].user_attrs.get(INTERRUPTED_ATTR)
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    runs = {int(r.data.tags["optuna_trial"]): r for r in mlflow_runs(uri, "exits", "trial")}
    # max_failures=1: the trial whose worker dies ran twice, in one MLflow run
    assert {n: (r.info.status, r.data.tags["attempts"]) for n, r in runs.items()} == {
        0: ("FAILED", "2"), 1: ("FINISHED", "1")}
    assert "worker" in runs[0].data.tags["error"] and set(FINAL_METRICS) <= set(runs[1].data.metrics)
    assert result.best["number"] == 1


# -- under ASHA: a trial stopped early is PRUNED, a NaN loss FAILs, both count toward the budget ---------------

@slow
def test_asha_stopped_trials_are_pruned_nan_trials_fail_and_both_count_toward_the_budget(ray_address, tmp_path):
    # one trial at a time: trial 0 sets the first rung, trial 1 reports -1 there (ASHA stops it), trial 2 diverges
    cfg = smoke_search(tmp_path, experiment="asha", sparsity=(0.5,), trials_per_study=3, scheduler="asha",
                       max_concurrent_trials=1, **{"space.post_prune_epochs": "2 2"})
    started = time.time()
    (result,) = search(cfg, faults={1: "poor", 2: "diverge"})
    print(f"3 trials under ASHA: {time.time() - started:.0f} s")
    ts = {t.number: t for t in trials(rdb_storage(cfg.optuna_url()), "asha-s0.50")}
    assert [ts[n].state for n in range(3)] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert (result.progress.complete, result.progress.pruned, result.progress.failed) == (1, 1, 1)
    assert ts[1].intermediate_values == {1: -1.0}  # stopped on its first epoch's report
    assert "NonFiniteLoss" in ts[2].user_attrs[ERROR_ATTR] and "at epoch 1, step" in ts[2].user_attrs[ERROR_ATTR]
    uri = f"sqlite:///{tmp_path}/results/mlflow.db"
    runs = {int(r.data.tags["optuna_trial"]): r for r in mlflow_runs(uri, "asha", "trial")}
    assert [runs[n].info.status for n in range(3)] == ["FINISHED", "KILLED", "FAILED"]
    assert runs[1].data.tags.get("pruned") == "1" and "pruned" not in runs[0].data.tags
    history = _client(uri).get_metric_history(runs[1].info.run_id, "dev_retention")
    assert [(m.step, m.value) for m in history] == [(1, -1.0)]  # logged while it ran: the trial never got further
    assert "train_loss" in runs[1].data.metrics and "test_retention" not in runs[1].data.metrics
    # ... and the checkpoint it was judged on: the model after epoch 1, which loads
    stopped_at = Path(runs[1].data.tags["checkpoint"])
    assert stopped_at.name == "epoch-001"
    assert sma.load_pruned(str(stopped_at / "model")).config.num_hidden_layers > 0
    finished_at = Path(runs[0].data.tags["checkpoint"])  # a complete trial: its final result folder, only
    assert finished_at == Path(ts[0].user_attrs["checkpoint"]) and (finished_at / "model").is_dir()
    assert not list(finished_at.parent.glob("epoch-*"))  # only the newest is kept
    assert "the loss is nan at epoch 1" in runs[2].data.tags["error"]
    assert set(FINAL_METRICS) <= set(runs[0].data.metrics)
    assert [m.step for m in _client(uri).get_metric_history(runs[0].info.run_id, "dev_retention")] == [1, 2, 2]
    assert result.best["number"] == 0 and result.best["dev_retention"] == ts[0].value
    (parent,) = mlflow_runs(uri, "asha", "study")
    assert parent.data.tags["best_trial"] == "0" and parent.info.status == "FINISHED"
    assert "best_model" in {a.path for a in _client(uri).list_artifacts(parent.info.run_id)}


# -- the MLflow server goes away mid-search -------------------------------------------------------------------

def _kill_after_first_complete(db: Path, server: subprocess.Popen, stop: threading.Event) -> None:
    while not stop.is_set():
        if "COMPLETE" in _states(db).values():
            os.killpg(server.pid, signal.SIGKILL)
            return
        time.sleep(0.3)


@slow
def test_the_tracking_server_going_away_fails_loudly_and_no_trial_completes_without_its_run(
        ray_address, tmp_path):
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server, url = start_mlflow(root)
    stop = threading.Event()
    cfg = smoke_search(tmp_path, experiment="away", sparsity=(0.5,), trials_per_study=3,
                       **{"run.mlflow_tracking_uri": url})
    killer = threading.Thread(target=_kill_after_first_complete, args=(cfg.tune_dir / "optuna.db", server, stop))
    try:
        killer.start()
        with pytest.raises(TrackingError) as raised:
            search(cfg)
    finally:
        stop.set()
        if killer.is_alive():
            killer.join()
        stop_group(server)
    print(raised.value)
    assert url in str(raised.value)
    ts = trials(rdb_storage(cfg.optuna_url()), "away-s0.50")
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert complete and len(complete) < 3
    assert any(TRACKING_ERROR_ATTR in t.user_attrs for t in ts)  # what MLflow lost is named, not dropped
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in ts)
    store = _client(f"sqlite:///{root}/mlflow.db")  # what the server had stored, read without it
    for t in complete:
        run = store.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and set(FINAL_METRICS) <= set(run.data.metrics)
