"""``sma ablate``: every cell of the design (:mod:`sma.config.ablation`) at every sparsity and seed, as a grid of
Ray Tune trials that each fit a Ray Train ``TorchTrainer`` running the pipeline (the search's trial machinery,
a grid instead of Optuna). Each unit (cell, sparsity, seed) is an MLflow child run tagged ``role=cell``,
``result=1``, ``cell=<name>`` under one ``role=ablation`` parent. The shared work (teacher, each criterion's
analysis, distillation targets) is prepared once by the driver. Rerun the same command to resume: units whose
run is FINISHED are kept, runs left RUNNING by a killed driver are closed as KILLED, the rest run again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sma.atomic import write_json
from sma.config import RunConfig, save_config, to_dict
from sma.config.ablation import AblationConfig, Cell
from sma.config.coerce import apply_overrides
from sma.data import collection_name
from sma.layout import PHASE1_DIR, TRIAL_ARTIFACTS, TRIAL_EPOCHS_FILE, TRIAL_RESULT_FILE
from sma.tracking import Tracking, git_commit, resolve_tracking_uri, result_params, result_tags
from tune.trainable import TrialContext, checkpoint_files, fit_trainer, timings
from tune.worker import setup_logging

log = logging.getLogger(__name__)

PARENT_ROLE, CELL_ROLE = "ablation", "cell"
DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20}


@dataclass(frozen=True)
class Unit:
    """One run of the ablation: a cell on one collection at one sparsity with one seed."""

    number: int
    cell: str
    overrides: tuple[tuple[str, Any], ...]
    dataset: str
    sparsity: float
    seed: int

    @property
    def key(self) -> str:
        return f"{collection_name(self.dataset)}|{self.cell}|s{self.sparsity:.2f}|seed{self.seed}"

    def config(self, run: RunConfig) -> RunConfig:
        cfg = Cell(self.cell, self.overrides).config(run, sparsity=self.sparsity, seed=self.seed)
        return apply_overrides(cfg, {"data.dataset": self.dataset})


def units(cfg: AblationConfig, run: RunConfig) -> list[Unit]:
    out = []
    for dataset in cfg.dataset_list():
        for cell in cfg.cells():
            for sparsity in run.sparsity:
                for seed in cfg.seed_list():
                    out.append(Unit(len(out), cell.name, cell.overrides, dataset, sparsity, seed))
    return out


def _parent_run(tracking: Tracking, study: str, cfg: AblationConfig, run: RunConfig) -> str:
    """The ablation's parent run: reopened when the same command runs again, else created."""
    return tracking.parent_run(study=study, role=PARENT_ROLE,
                               tags={"experiment": run.experiment, "git_commit": git_commit()},
                               params={"factors": ",".join(cfg.factors), "factorial": cfg.factorial,
                                       "seeds": cfg.seeds, "sparsity": list(run.sparsity),
                                       "datasets": list(cfg.dataset_list())})


def _finished(tracking: Tracking, study: str) -> set[str]:
    return {r.data.tags["unit"] for r in tracking.children(study, status="FINISHED", role=CELL_ROLE)}


def _close_stale(tracking: Tracking, study: str) -> None:
    tracking.close_stale_children(study, reason="interrupted (driver gone); run again", role=CELL_ROLE)


def _prepare_once(run: RunConfig, todo: list[Unit], *, several_collections: bool) -> None:
    """Teacher, analysis and distillation targets of every distinct collection, criterion, analysis and
    distillation setting, computed once into the cache."""
    from sma.pipeline import prepare

    seen = set()
    for unit in todo:
        cfg = unit.config(run)
        shared = (unit.dataset, cfg.prune.criterion, cfg.analysis, cfg.distill)
        if shared not in seen:
            seen.add(shared)
            folder = run.run_dir / collection_name(unit.dataset) if several_collections else run.run_dir
            prepare(replace(cfg, seed=run.seed), analysis_dir=folder / PHASE1_DIR)


def resolved(cfg: AblationConfig) -> AblationConfig:
    """``cfg`` as its trials need it (they run elsewhere): the run resolved like a search's, and every
    collection, the run's own included, by an absolute path where it is a local folder."""
    from tune.search import absolute_if_local, resolve_run

    return replace(cfg, run=resolve_run(cfg.run, eval_every_epoch=False),
                   datasets=tuple(absolute_if_local(d) for d in cfg.datasets))


def ablate(cfg: AblationConfig) -> dict[str, Any]:
    """Run (or resume) the ablation; returns a summary (units done, failed, the MLflow parent run)."""
    from tune.search import warn_if_driver_lacks_gpus

    cfg = resolved(cfg)
    run = cfg.run
    root = run.run_dir / "ablate"
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "ablation.json")
    study = f"{run.experiment}-ablation"
    tracking = Tracking.open(resolve_tracking_uri(run.mlflow_tracking_uri, run.output_dir), run.experiment)
    parent = _parent_run(tracking, study, cfg, run)
    _close_stale(tracking, study)
    all_units = units(cfg, run)
    done = _finished(tracking, study)
    todo = [u for u in all_units if u.key not in done]
    log.info("ablation %s: %d collections x %d cells x %d sparsities x %d seeds = %d units, %d finished before, "
             "%d to run", study, len(cfg.dataset_list()), len(cfg.cells()), len(run.sparsity), cfg.seeds,
             len(all_units), len(done), len(todo))
    if todo:
        warn_if_driver_lacks_gpus(run)
        _prepare_once(run, todo, several_collections=len(cfg.dataset_list()) > 1)
        _run_units(cfg, run, todo, tracking=tracking, parent=parent, study=study, root=root)
    _close_stale(tracking, study)
    finished = _finished(tracking, study)
    summary = {"study": study, "units": len(all_units), "finished": len(finished & {u.key for u in all_units}),
               "mlflow_parent_run": parent, "tracking_uri": tracking.uri}
    write_json(root / "summary.json", summary)
    status = "FINISHED" if summary["finished"] == summary["units"] else "FAILED"
    tracking.client.set_terminated(parent, status=status)
    return summary


def _run_units(cfg: AblationConfig, run: RunConfig, todo: list[Unit], *, tracking: Tracking, parent: str,
               study: str, root: Path) -> None:
    """One Ray Tune grid over ``todo``; a Ray started here is shut down here, whatever happens."""
    import ray
    from ray import tune

    from tune.search import cluster_concurrency

    started_ray = not ray.is_initialized()
    if started_ray:
        from tune.ray_connect import connect
        connect()
    try:
        ctx = TrialContext(run=run, study=study, sparsity=0.0, optuna_url="", tracking=tracking,
                           parent_run_id=parent, train_storage=f"{_storage(cfg, root)}/{study}-train",
                           tags={"experiment": run.experiment, "git_commit": git_commit(), "study": study})
        trainable = tune.with_resources(tune.with_parameters(run_cell, ctx=ctx), DRIVER_RESOURCES)
        tune.Tuner(trainable, param_space={"unit": tune.grid_search([to_dict(u) for u in todo])},
                   tune_config=tune.TuneConfig(max_concurrent_trials=cluster_concurrency(cfg)),
                   run_config=tune.RunConfig(name=f"{study}-{int(time.time())}", storage_path=_storage(cfg, root),
                                             verbose=1,
                                             failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
                   ).fit()
    finally:
        if started_ray:
            ray.shutdown()


def _storage(cfg: AblationConfig, root: Path) -> str:
    if cfg.storage_path and "://" in cfg.storage_path:
        return cfg.storage_path.rstrip("/")
    return str(Path(cfg.storage_path).expanduser().resolve()) if cfg.storage_path else str(root / "ray")


def run_cell(config: dict[str, Any], *, ctx: TrialContext) -> None:
    """The Tune trainable of one unit: fit a TorchTrainer running the pipeline, log the unit to MLflow."""
    entered = time.time()
    setup_logging()
    unit = Unit(**{**config["unit"], "overrides": tuple(tuple(o) for o in config["unit"]["overrides"])})
    cfg = unit.config(ctx.run)
    tags = {**ctx.tags, **result_tags(cfg, unit.sparsity, role=CELL_ROLE, commit=ctx.tags.get("git_commit")),
            "cell": unit.cell, "unit": unit.key}
    tracking = ctx.tracking
    run_id = tracking.create_run(f"{unit.cell} s{unit.sparsity:.2f} seed{unit.seed}", tags=tags,
                                 params=result_params(cfg, unit.sparsity), parent_id=ctx.parent_run_id)
    try:
        fit_started = time.time()
        # this unit's runs so far, this one included: each start fits a Train run of its own
        attempt = sum(r.data.tags.get("unit") == unit.key for r in tracking.children(ctx.study, role=CELL_ROLE))
        result = fit_trainer(replace(ctx, sparsity=unit.sparsity), cfg, unit.number, attempt=attempt)
        files = checkpoint_files(result)
        final = json.loads((files / TRIAL_RESULT_FILE).read_text())
        final.update(timings(final, entered=entered, fit_started=fit_started, fitted=time.time()))
        final = {k: v for k, v in final.items() if not k.endswith("_at")}
        tracking.log_result(run_id, epochs=json.loads((files / TRIAL_EPOCHS_FILE).read_text()), final=final,
                            step=cfg.distill.post_prune_epochs, files=[files / n for n in TRIAL_ARTIFACTS])
    except BaseException as exc:
        tracking.end_with(run_id, exc)
        raise
    tracking.finish(run_id)


def run_cli(args, cfg: AblationConfig) -> int:
    summary = ablate(cfg)
    print(f"ablation {summary['study']}: {summary['finished']}/{summary['units']} units finished "
          f"(MLflow parent run {summary['mlflow_parent_run']}); next: sma report --experiment {cfg.run.experiment}")
    return 0 if summary["finished"] == summary["units"] else 1
