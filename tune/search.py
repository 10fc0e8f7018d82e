"""The search driver: for each sparsity, one Optuna study searched through Ray Tune, logged to MLflow.

Per study the driver (1) reopens or creates the MLflow parent run, (2) restores the study's Ray experiment
if one exists (Ray finishes the trials it had started: ``Tuner.restore(..., resume_unfinished=True)``),
(3) marks trials that nobody will finish (left RUNNING by a killed driver) FAIL in Optuna and KILLED in
MLflow, and (4) runs a new Tuner round for whatever the study still lacks, so that it ends with exactly
``trials_per_study`` finished trials and no completed trial is ever run twice.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from sma.atomic import write_json
from sma.cache import cache_root
from sma.config import SEARCHED, ConfigError, RunConfig, SearchConfig, save_config, to_dict
from sma.config.search import space_bounds
from sma.layout import PHASE1_DIR
from sma.metrics import OBJECTIVE, RETENTION, direction
from sma.registry import TRIAL_RUN_TAG, encoding_config, register_best
from sma.tracking import Tracking, git_commit, resolve_tracking_uri
from sma.tracking_ui import log_study_plot, runs_url
from tune.studies import (
    TRACKING_ERROR_ATTR,
    StudyProgress,
    delete,
    mark_interrupted,
    progress,
    rdb_storage,
    study_name,
    trials,
)
from tune.trainable import DefineSpace, TrialContext, run_trial

log = logging.getLogger(__name__)

MODES = ("auto", "resume", "fresh")
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20}
PRUNED_TAG = "pruned"
"""``pruned=1`` on the MLflow run of a trial the scheduler stopped early."""
MAX_ROUNDS = 3
"""Tuner rounds per study and invocation: a restore, then top-ups for trials Ray lost track of."""


@dataclass(frozen=True)
class StudyResult:
    study: str
    sparsity: float
    progress: StudyProgress
    best: dict[str, Any] | None
    parent_run_id: str


class TrackingError(RuntimeError):
    """MLflow failed during the search: what it did not record is named, and Optuna keeps every result."""


def search(cfg: SearchConfig, *, mode: str = "auto", faults: Mapping[int, str] | None = None) -> list[StudyResult]:
    """Run (or resume, or restart with ``mode="fresh"``) the search described by ``cfg``.

    ``faults`` is a test hook: Optuna trial number -> what goes wrong in that trial's worker (one of
    :data:`tune.worker.FAULTS`); ``cfg.fail_on_trial`` adds ``raise``. An MLflow failure (after MLflow's own
    HTTP retries) fails the trial that met it and raises :class:`TrackingError` once the study's Tune run is
    over; an unreachable tracking server fails the search at once. Either way the error names the tracking URI.
    """
    uri = resolve_tracking_uri(cfg.run.mlflow_tracking_uri, cfg.run.output_dir)
    try:
        return _search(cfg, mode=mode, faults={**({cfg.fail_on_trial: "raise"} if cfg.fail_on_trial is not None
                                                   else {}), **(faults or {})}, uri=uri)
    except MlflowException as exc:
        raise TrackingError(f"MLflow tracking at {uri} failed: {exc}\nOptuna keeps every finished trial: rerun "
                            "the search once the tracking server is back to resume it.") from exc


def _search(cfg: SearchConfig, *, mode: str, faults: Mapping[int, str], uri: str) -> list[StudyResult]:
    import ray

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    run = resolve_run(cfg.run)
    cfg = replace(cfg, run=run)
    tune_dir = cfg.tune_dir
    tune_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, tune_dir / "search.json")
    storage = rdb_storage(cfg.optuna_url())
    names = [study_name(cfg.experiment, s) for s in run.sparsity]
    if mode == "resume" and not any(trials(storage, n) for n in names):
        raise ConfigError(f"--resume: no study of experiment {cfg.experiment!r} in {cfg.optuna_url()}")
    tracking = Tracking.open(uri, cfg.experiment)
    if url := runs_url(tracking.uri, tracking.experiment_id):
        print(f"MLflow UI: {url}", flush=True)
    if mode == "fresh":
        for name in names:
            _forget(cfg, storage, tracking, name)
    if not ray.is_initialized():
        from tune.ray_connect import connect
        connect()
    started = time.time()
    from sma.pipeline import prepare

    warn_if_driver_lacks_gpus(run)
    prepared = prepare(run, analysis_dir=run.run_dir / PHASE1_DIR)
    prep_info = {"baseline_computed": prepared.teacher_computed, "baseline_key": prepared.teacher.key,
                 "seconds": round(time.time() - started, 1), "finished_at": time.time()}
    log.info("shared work (data, baseline, importance): %s", prep_info)
    with (tune_dir / "prepare.jsonl").open("a") as fh:
        fh.write(json.dumps(prep_info) + "\n")
    tags = {"experiment": cfg.experiment, "git_commit": git_commit(), "criterion": run.prune.criterion}
    results = []
    for sparsity, name in zip(run.sparsity, names, strict=True):
        ctx = TrialContext(
            run=run, study=name, sparsity=sparsity, optuna_url=cfg.optuna_url(), tracking=tracking,
            parent_run_id="", train_storage=f"{cfg.ray_storage()}/{name}-train", faults=faults, tags={**tags, "study": name})
        results.append(run_study(cfg, ctx, storage=storage))
    write_json(tune_dir / "summary.json", [_summary_row(r) for r in results])
    print(format_summary(results))
    return results


def warn_if_driver_lacks_gpus(run: RunConfig) -> None:
    """The driver computes the shared work (baseline, analysis) itself: say so when the trials get GPUs and
    the driver has none (a job submitted without entrypoint GPUs runs on a CPU head)."""
    import torch

    if run.workers.gpus_per_worker > 0 and run.device == "auto" and not torch.cuda.is_available():
        log.warning("trials use GPUs but this driver sees none: the shared work (baseline, analysis) runs on "
                    "its CPU; give the job a GPU (cluster/submit.sh: SMA_ENTRYPOINT_NUM_GPUS=1)")


def absolute_if_local(name: str) -> str:
    """A dataset or model argument that names a local folder, made absolute (trials run elsewhere); else as is."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def resolve_run(run: RunConfig, *, eval_every_epoch: bool = True) -> RunConfig:
    """Absolute paths (trials run elsewhere), per-epoch dev retention (for schedulers), quiet progress bars,
    and the threads a worker owns."""
    changes: dict[str, Any] = {"output_dir": str(Path(run.output_dir).resolve()),
                               "cache_dir": str(cache_root(run.cache_dir).resolve())}
    data = replace(run.data, dataset=absolute_if_local(run.data.dataset))
    model = replace(run.model, name=absolute_if_local(run.model.name))
    # Every report to Tune carries the objective (Tune rejects a result without it), and ASHA stops
    # trials on it: trials evaluate dev retention after each post-prune epoch.
    distill = replace(run.distill, eval_every_epoch=eval_every_epoch or run.distill.eval_every_epoch)
    return replace(run, **changes, data=data, model=model, distill=distill,
                   eval=replace(run.eval, show_progress=False),
                   threads=run.threads or max(1, int(run.workers.cpus_per_worker)))


def run_study(cfg: SearchConfig, ctx: TrialContext, *, storage) -> StudyResult:
    from ray import tune

    name = ctx.study
    tracking = ctx.tracking
    parent_id = tracking.parent_run(
        study=name, tags=ctx.tags | {"sparsity": ctx.sparsity},
        params={"sparsity": ctx.sparsity, "trials_per_study": cfg.trials_per_study,
                **{f"space.{k}": list(v) for k, v in space_bounds(cfg.space).items()},
                "model": cfg.run.model.name, "dataset": cfg.run.data.dataset, "num_workers": cfg.run.workers.num_workers})
    tracking.client.log_dict(parent_id, to_dict(cfg), "search.json")
    ctx = replace(ctx, parent_run_id=parent_id)
    # The trial function only waits on its TorchTrainer: it holds no CPU (Ray needs a non-empty bundle).
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), TRIAL_DRIVER_RESOURCES)
    exp_root = cfg.ray_storage()
    for round_ in range(MAX_ROUNDS):
        known = {t.number for t in trials(storage, name) if t.state.is_finished()}
        before = progress(storage, name)
        log.info("study %s: %s", name, _fmt(before, cfg.trials_per_study))
        restorable = _latest_round(exp_root, name)
        if restorable is not None and round_ == 0:
            log.info("study %s: restoring the Ray experiment %s", name, restorable)
            tuner = tune.Tuner.restore(restorable, trainable, resume_unfinished=True, resume_errored=False)
            tuner.fit()
        else:
            mark_interrupted(storage, name)
            tracking.close_stale_children(name, reason="interrupted (driver gone); retried as a new trial")
            remaining = cfg.trials_per_study - progress(storage, name).finished
            if remaining <= 0:
                break
            path_name = name if restorable is None else f"{name}-r{_round_index(exp_root, name) + 1}"
            log.info("study %s: launching %d trial(s) in %s/%s", name, remaining, exp_root, path_name)
            _new_tuner(cfg, ctx, trainable, path_name=path_name, num_samples=remaining, storage=storage).fit()
        mark_interrupted(storage, name)
        _close_pruned(tracking, storage, name)
        tracking.close_stale_children(name, reason="interrupted")
        _raise_tracking_errors(tracking, storage, name, known)
    final = progress(storage, name)
    log.info("study %s done: %s", name, _fmt(final, cfg.trials_per_study))
    best = _finish_parent(tracking, parent_id, storage, name, encoding=encoding_config(cfg.run.model))
    return StudyResult(study=name, sparsity=ctx.sparsity, progress=final, best=best, parent_run_id=parent_id)


def _new_tuner(cfg: SearchConfig, ctx: TrialContext, trainable, *, path_name: str, num_samples: int, storage):
    from ray import tune

    from tune.searcher import EpochLogger

    searcher = study_searcher(cfg, ctx.study, storage)
    scheduler = None
    if cfg.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric=OBJECTIVE, mode=direction(OBJECTIVE), grace_period=cfg.asha_grace_period,
                                  max_t=cfg.space.post_prune_epochs[1] + 1)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=cluster_concurrency(cfg),
                                    # keep a trial's process (and its imports) for the next trial; not under
                                    # a scheduler, whose stopped trials must take their TorchTrainer down
                                    reuse_actors=scheduler is None),
        run_config=tune.RunConfig(name=path_name, storage_path=cfg.ray_storage(), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                  callbacks=[EpochLogger(ctx.tracking, ctx.study, ctx.optuna_url)]),
    )


def study_searcher(cfg: SearchConfig, study: str, storage):
    """Optuna through Ray Tune for one round of ``study``. The sampler's seed moves on with the trials the
    study already holds: a round after a resume must not draw the first round's points again."""
    from tune.searcher import StudySearch

    seed = cfg.seed + len(trials(storage, study))
    return StudySearch(space=DefineSpace(cfg.space), metric=OBJECTIVE, mode=direction(OBJECTIVE),
                       study_name=study, storage=storage, seed=seed)


def concurrency(cfg: SearchConfig, resources: dict[str, float], held: dict[str, float] | None = None) -> int:
    """``max_concurrent_trials``: configured, else as many trials as the cluster's CPUs (and GPUs) hold once
    ``held`` (what this driver's job keeps for itself, :func:`tune.ray_connect.driver_reservation`) is taken
    out. A trial started beyond that would only wait for its workers' placement group, retrying every minute."""
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    held = held or {}
    w = cfg.run.workers
    n = int((resources.get("CPU", 1) - held.get("CPU", 0)) // (w.num_workers * w.cpus_per_worker))
    if w.gpus_per_worker > 0:
        n = min(n, int((resources.get("GPU", 0) - held.get("GPU", 0)) // (w.num_workers * w.gpus_per_worker)))
    return max(1, n)


def cluster_concurrency(cfg: SearchConfig) -> int:
    """:func:`concurrency` on the connected cluster, logged."""
    import ray

    from tune.ray_connect import driver_reservation

    resources, held = ray.cluster_resources(), driver_reservation()
    n = concurrency(cfg, resources, held)
    log.info("at most %d trial(s) at a time (cluster: %g CPU, %g GPU; this driver's job holds %g CPU, %g GPU)", n,
             resources.get("CPU", 0), resources.get("GPU", 0), held.get("CPU", 0), held.get("GPU", 0))
    return n


def _rounds(exp_root: str, name: str) -> list[str]:
    """Ray experiment paths of a study (``<name>``, ``<name>-r1``, ...) that Tune can restore."""
    from ray import tune

    paths = [f"{exp_root}/{name}"] + [f"{exp_root}/{name}-r{i}" for i in range(1, 100)]
    found = []
    for p in paths:
        if not tune.Tuner.can_restore(p):
            break
        found.append(p)
    return found


def _latest_round(exp_root: str, name: str) -> str | None:
    found = _rounds(exp_root, name)
    return found[-1] if found else None


def _round_index(exp_root: str, name: str) -> int:
    return len(_rounds(exp_root, name)) - 1


def _close_pruned(tracking: Tracking, storage, name: str) -> None:
    """The MLflow run of each trial the scheduler stopped (PRUNED in Optuna): KILLED, tagged ``pruned=1`` with
    the epochs it ran. Its per-epoch metrics stay (logged as they came); it has no final metrics."""
    from optuna.trial import TrialState

    for t in trials(storage, name):
        run_id = t.user_attrs.get("mlflow_run_id")
        if t.state != TrialState.PRUNED or run_id is None:
            continue
        run = tracking.client.get_run(run_id)
        if run.data.tags.get(PRUNED_TAG) == "1":
            continue
        tracking.client.set_tag(run_id, PRUNED_TAG, "1")
        tracking.client.set_tag(run_id, "stopped", f"stopped early by the scheduler after {t.last_step} report(s)")
        tracking.client.set_terminated(run_id, status="KILLED")


def _raise_tracking_errors(tracking: Tracking, storage, name: str, known: set[int]) -> None:
    """:class:`TrackingError` if MLflow failed for a trial that finished in this Tune run (not in ``known``)."""
    lost = {t.number: t.user_attrs[TRACKING_ERROR_ATTR] for t in trials(storage, name)
            if t.number not in known and TRACKING_ERROR_ATTR in t.user_attrs}
    if lost:
        raise TrackingError(f"study {name}: MLflow at {tracking.uri} failed for trial(s) {sorted(lost)}: "
                            + "; ".join(f"trial {n}: {e}" for n, e in sorted(lost.items()))
                            + "\nOptuna keeps their state; rerun the search once the tracking server is back.")


def _finish_parent(tracking: Tracking, parent_id: str, storage, name: str, *,
                   encoding: Mapping[str, Any]) -> dict[str, Any] | None:
    """Best trial's params and metrics on the parent run, and its pruned model as ``best_model``."""
    from optuna.trial import TrialState

    done = [t for t in trials(storage, name) if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        tracking.client.set_terminated(parent_id, status="FAILED")
        return None
    best = max(done, key=lambda t: t.value)
    metrics = best.user_attrs.get("metrics", {OBJECTIVE: best.value})
    tracking.log_metrics(parent_id, {f"best_{k}": v for k, v in metrics.items()})
    tracking.client.set_tag(parent_id, "best_trial", str(best.number))
    tracking.client.set_tag(parent_id, "best_params", json.dumps(best.params))
    log_study_plot(tracking.client, parent_id, [{"number": t.number, **t.user_attrs.get("metrics", {})} for t in done],
                   best=best.number, title=name)
    model = _checkpoint_dir(best.user_attrs.get("checkpoint"))
    if model is not None and (model / "model").is_dir():
        tracking.client.log_artifacts(parent_id, str(model / "model"), "best_model")
        register_best(tracking.uri, name=name, run_id=parent_id, model_dir=model / "model", encoding=encoding,
                      tags={TRIAL_RUN_TAG: best.user_attrs.get("mlflow_run_id", ""), "study": name,
                            "optuna_trial": str(best.number)})
    tracking.finish(parent_id)
    return {"number": best.number, "params": best.params, **metrics}


def _checkpoint_dir(path: str | None) -> Path | None:
    if not path:
        return None
    if Path(path).is_dir():
        return Path(path)
    try:
        from ray.train import Checkpoint

        return Path(Checkpoint(path).to_directory())
    except Exception as exc:  # noqa: BLE001 - a missing model must not fail a finished search
        log.warning("cannot fetch the best checkpoint %s: %s", path, exc)
        return None


def _forget(cfg: SearchConfig, storage, tracking: Tracking, name: str) -> None:
    """``--fresh``: drop the study, its MLflow runs and its Ray experiments."""
    deleted = delete(storage, name)
    runs = tracking.delete_study_runs(name)
    exp_root = cfg.ray_storage()
    for path in [*_rounds(exp_root, name), f"{exp_root}/{name}-train"]:
        if "://" in path:
            import pyarrow.fs

            fs, inner = pyarrow.fs.FileSystem.from_uri(path)
            try:
                fs.delete_dir(inner)
            except (FileNotFoundError, OSError):
                pass
        else:
            shutil.rmtree(path, ignore_errors=True)
    log.info("--fresh: study %s %s, %d MLflow run(s) deleted, Ray results removed", name,
             "deleted" if deleted else "did not exist", runs)


def _fmt(p: StudyProgress, budget: int) -> str:
    return (f"{p.finished}/{budget} finished ({p.complete} complete, {p.failed} failed, {p.pruned} pruned), "
            f"{p.interrupted} interrupted, {p.running} running")


def _summary_row(r: StudyResult) -> dict[str, Any]:
    return {"study": r.study, "sparsity": r.sparsity, "complete": r.progress.complete, "failed": r.progress.failed,
            "pruned": r.progress.pruned, "interrupted": r.progress.interrupted, "mlflow_parent_run": r.parent_run_id, "best": r.best}


def format_summary(results: list[StudyResult]) -> str:
    """Per study: trials done, the best trial's dev and test retention, speedup and searched values."""
    names = [p.name for p in SEARCHED]
    widths = [max(8, len(n) + 2) for n in names]
    lines = [f"\n{'Study':<28}{'Done':<7}{'Failed':<8}{'Best dev ret.':<15}{'Test ret.':<11}{'Speedup':<9}"
             + "".join(f"{n:<{w}}" for n, w in zip(names, widths, strict=True))]
    for r in results:
        b = r.best or {}
        p = b.get("params", {})
        lines.append(
            f"{r.study:<28}{r.progress.complete:<7}{r.progress.failed:<8}"
            f"{b.get(OBJECTIVE, float('nan')):<15.4f}{b.get(RETENTION, float('nan')):<11.4f}"
            f"{b.get('speedup', float('nan')):<9.3f}"
            + "".join(f"{_cell(p.get(n)):<{w}}" for n, w in zip(names, widths, strict=True)))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
