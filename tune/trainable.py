"""One trial: a Tune *function* trainable that builds and fits a Ray Train ``TorchTrainer``.

Ray 2.60 runs Train V2, where a ``TorchTrainer`` cannot be handed to a ``Tuner`` directly: the trial is a
function that fits the trainer with ``ray.train.RunConfig(callbacks=[TuneReportCallback()])``, and the
workers' ``ray.train.report`` calls reach Tune through that callback (rank 0's metrics).

Workers (:func:`worker_loop`) run :func:`sma.pipeline.run_sparsity` with the trial's hyperparameters. Under
more than one worker, Ray Train has initialised torch.distributed (gloo on CPU, nccl on GPU) and the
pipeline makes each pruning plan on rank 0, broadcasts it and re-wraps DDP after every step. Rank 0 puts
the trial's files (plan, per-query metrics, pruned model, per-epoch rows, every rank's pruned structure)
in the final report's checkpoint, which Ray persists under the search's ``storage_path``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow.exceptions import MlflowException

from sma.config import SEARCHED, RunConfig, SearchSpace, sample, with_params
from sma.layout import TRIAL_ARTIFACTS, TRIAL_CHECKPOINT_DIR, TRIAL_RESULT_FILE, trial_run_name
from sma.metrics import OBJECTIVE
from sma.tracking import CHILD, Tracking, result_params, result_tags
from tune.studies import finished_trial, rdb_storage, record_error
from tune.worker import FINAL_REPORT, setup_logging, worker_loop

log = logging.getLogger(__name__)

TRIAL_KEY = "optuna_trial"
CHECKPOINT_TAG = "checkpoint"
"""On a trial's MLflow run: its newest checkpoint, the final result folder or, for a trial stopped early, its
last epoch's (each holds ``model/``, for ``sma.load_pruned``)."""
ATTEMPTS_TAG = "attempts"
"""MLflow tag of a trial's child run: how many times the trial started (Ray Tune retries failed trials)."""


@dataclass(frozen=True)
class DefineSpace:
    """Optuna define-by-run space: samples the hyperparameters and hands the trial number to the trial."""

    space: SearchSpace  # type: ignore[valid-type]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        sample(self.space, trial)
        return {TRIAL_KEY: trial.number}


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one study needs besides its hyperparameters (passed with ``tune.with_parameters``)."""

    run: RunConfig
    """The trial's base run config (absolute paths); the searched values are set per trial."""
    study: str
    sparsity: float
    optuna_url: str
    tracking: Tracking
    parent_run_id: str
    train_storage: str
    """Where the TorchTrainer runs of this study persist (``<storage_path>/<study>/train``)."""
    faults: Mapping[int, str] = field(default_factory=dict)
    """Test hooks: trial number -> what goes wrong in its worker (one of :data:`tune.worker.FAULTS`)."""
    tags: dict[str, str] = field(default_factory=dict)


def trial_config(ctx: TrialContext, params: dict[str, Any]) -> RunConfig:
    return with_params(ctx.run, params)


def trial_tags_params(ctx: TrialContext, cfg: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's MLflow tags (the study's, then those of every result run) and params (every result run's)."""
    tags = {**ctx.tags, **result_tags(cfg, ctx.sparsity, role=CHILD, commit=ctx.tags.get("git_commit"))}
    return tags, result_params(cfg, ctx.sparsity)


def run_trial(config: dict[str, Any], *, ctx: TrialContext) -> None:
    """The Tune trainable: fit one TorchTrainer, log the trial to MLflow and Optuna, then report its final
    metrics to Tune (the workers' per-epoch reports reach Tune as they come, through
    :class:`tune.reports.EpochReportCallback`, and the driver logs them to MLflow).

    Any error fails the trial: the MLflow run FAILED with the error, the error as the Optuna trial's ``error``
    attribute (``tracking_error`` when MLflow itself failed), and raised to Tune (which retries the trial up
    to ``max_failures`` times, then tells Optuna FAIL)."""
    from ray import tune

    entered = time.time()
    setup_logging()
    number = int(config[TRIAL_KEY])
    params = {p.name: config[p.name] for p in SEARCHED}
    storage = rdb_storage(ctx.optuna_url)
    done = finished_trial(storage, ctx.study, number)
    if done is not None:
        # Ray re-runs a trial whose result reached Optuna just before the driver died: never rerun it.
        log.info("%s trial %d is already COMPLETE in Optuna: reporting its stored result", ctx.study, number)
        tune.report({**done.user_attrs.get("metrics", {}), OBJECTIVE: done.value, "rerun_skipped": True,
                     FINAL_REPORT: 1.0})
        return
    cfg = trial_config(ctx, params)
    run_id = None
    try:
        run_id, attempt = _open_child_run(ctx, cfg, storage, number)
        log.info("%s trial %d: %s (mlflow run %s, start %d)", ctx.study, number, params, run_id, attempt)
        final = _fit_and_log(ctx, cfg, storage, number, run_id=run_id, attempt=attempt, entered=entered)
        ctx.tracking.finish(run_id)
    except BaseException as exc:
        record_error(storage, ctx.study, number, f"{type(exc).__name__}: {exc}",
                     tracking=isinstance(exc, MlflowException))
        if run_id is not None:
            ctx.tracking.end_with(run_id, exc)
        raise
    tune.report({**{k: v for k, v in final.items() if isinstance(v, (int, float))}, FINAL_REPORT: 1.0})


def _open_child_run(ctx: TrialContext, cfg: RunConfig, storage, number: int) -> tuple[str, int]:
    """The trial's MLflow child run (reopened on a retry, its ``attempts`` tag counting the starts), also named
    in the Optuna trial's ``mlflow_run_id`` attribute from the start. Returns the run and this start's count."""
    tags, run_params = trial_tags_params(ctx, cfg)
    tracking = ctx.tracking
    run_id = tracking.child_run(parent_id=ctx.parent_run_id, study=ctx.study, number=number, tags=tags,
                                params=run_params)
    attempts = int(tracking.client.get_run(run_id).data.tags.get(ATTEMPTS_TAG, "0")) + 1
    tracking.client.set_tag(run_id, ATTEMPTS_TAG, str(attempts))
    storage.set_trial_user_attr(_trial_id(storage, ctx.study, number), "mlflow_run_id", run_id)
    return run_id, attempts


def _fit_and_log(ctx: TrialContext, cfg: RunConfig, storage, number: int, *, run_id: str, attempt: int,
                 entered: float) -> dict[str, Any]:
    """Fit the trial's TorchTrainer; log its final metrics and files to MLflow and keep them with the Optuna
    trial. Returns the final metrics."""
    fit_started = time.time()
    result = fit_trainer(ctx, cfg, number, attempt=attempt, report_final=False)
    fitted = time.time()
    files = checkpoint_files(result)
    final = json.loads((files / TRIAL_RESULT_FILE).read_text())
    final.update(timings(final, entered=entered, fit_started=fit_started, fitted=fitted))
    for key in [k for k in final if k.endswith("_at")]:
        del final[key]  # wall-clock stamps, not metrics
    log.info("%s trial %d: dev retention %.4f; %.1f s in the trial, %.1f s of them in the pipeline",
             ctx.study, number, final.get(OBJECTIVE, float("nan")), final["trial_seconds"], final["pipeline_seconds"])
    # the per-epoch rows are already in MLflow: the driver logs them as Tune receives them
    ctx.tracking.log_result(run_id, epochs=[], final=final, step=cfg.distill.post_prune_epochs,
                            files=[files / n for n in TRIAL_ARTIFACTS])
    checkpoint = f"{ctx.train_storage}/{trial_run_name(number, attempt)}/{TRIAL_CHECKPOINT_DIR}"
    ctx.tracking.client.set_tag(run_id, CHECKPOINT_TAG, checkpoint)
    _store_in_optuna(storage, ctx.study, number, final, checkpoint=checkpoint)
    return final


def fit_trainer(ctx: TrialContext, cfg: RunConfig, number: int, *, attempt: int, report_final: bool = True):
    """Fit the TorchTrainer of trial ``number``'s ``attempt``-th start; its workers' reports reach Tune, all of
    them, or with ``report_final=False`` all but the final one (see :mod:`tune.reports`)."""
    import ray.train
    from ray.tune.integration.ray_train import TuneReportCallback

    from tune.reports import EpochReportCallback
    from tune.run_on_ray import torch_trainer

    trainer = torch_trainer(
        worker_loop,
        {"run": cfg, "sparsity": ctx.sparsity, "fault": ctx.faults.get(number), "trial": number},
        cfg.workers,
        run_config=ray.train.RunConfig(name=trial_run_name(number, attempt), storage_path=ctx.train_storage,
                                       # the newest only: per-epoch models, then the final result
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                       callbacks=[TuneReportCallback() if report_final else EpochReportCallback()]),
    )
    return trainer.fit()


def timings(final: dict[str, Any], *, entered: float, fit_started: float, fitted: float) -> dict[str, float]:
    """Where a trial's wall time went (from the trial function's start to the end of ``fit``)."""
    return {
        "trial_seconds": fitted - entered,
        "pipeline_seconds": final["pipeline_seconds"],
        "ray_overhead_seconds": (fitted - entered) - final["pipeline_seconds"],
        "ray_worker_start_seconds": final["worker_started_at"] - fit_started,
        "worker_import_seconds": final["pipeline_started_at"] - final["worker_started_at"],
        "ray_teardown_seconds": fitted - final["pipeline_ended_at"],
    }


def checkpoint_files(result) -> Path:
    if result.checkpoint is None:
        raise RuntimeError("the trial's workers finished without reporting their result checkpoint")
    path = Path(result.checkpoint.path)
    if not path.is_dir():  # remote storage: bring the small files here
        path = Path(result.checkpoint.to_directory())
    return path


def _trial_id(storage, study: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study), number)


def _store_in_optuna(storage, study: str, number: int, final: dict[str, Any], *, checkpoint: str) -> None:
    """Keep the final metrics with the Optuna trial (before Tune tells Optuna the trial is complete)."""
    tid = _trial_id(storage, study, number)
    metrics = {k: v for k, v in final.items() if isinstance(v, (int, float))}
    storage.set_trial_user_attr(tid, "metrics", metrics)
    storage.set_trial_user_attr(tid, "checkpoint", checkpoint)
