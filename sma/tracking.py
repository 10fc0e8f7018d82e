"""MLflow, shared by ``sma run`` and ``sma tune``: one experiment per experiment name, parent and child runs.

``sma tune`` logs a parent run per sparsity study (role ``study``) and a child run per trial (``trial``);
``sma run`` logs a parent run per invocation (``run``) and a child run per sparsity (``sparsity``). Every
child is a *result run* tagged ``result=1`` whose params and tags come from :func:`result_params` and
:func:`result_tags`, so an analysis reads trials and runs as rows of one table.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no fluent global state), so the
driver and concurrent trial processes can log at once. Search runs are found again by their tags, so a
resumed search reuses its parent runs and the child run of a retried trial instead of creating new ones.
Nothing here imports :mod:`tune`; the module imports MLflow, so import it lazily where start-up time counts.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.entities import Metric, Param, RunStatus, ViewType
from mlflow.tracking import MlflowClient

from sma.config import RunConfig, params_of
from sma.config.ablation import recipe_params
from sma.provenance import git_commit, invocation
from sma.tracking_ui import log_collection, mark_training_experiment

log = logging.getLogger(__name__)

PARENT, CHILD = "study", "trial"
"""Roles of the search's runs."""
RUN, SPARSITY = "run", "sparsity"
"""Roles of ``sma run``'s runs."""
RESULT_TAG = "result"
"""``result=1`` on every run that measures one pruned model (trial, sparsity, ablation cell)."""


def resolve_tracking_uri(configured: str | None, output_dir: str | Path) -> str:
    """Config, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<output_dir>/mlflow.db`` (absolute)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


@contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """``mlflow``'s fluent functions (``search_runs``, ``pyfunc.log_model``) against ``uri``; afterwards MLflow's
    global URI and ``$MLFLOW_TRACKING_URI`` are exactly as they were. ``mlflow.set_tracking_uri`` also sets the
    variable, and restoring "the previous URI" with it would pin the default store for every later caller."""
    from mlflow.tracking._tracking_service import utils

    previous, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    utils.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = previous
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


COMMAND_TAG = "command"
"""The ``sma ...`` command line, on the top-level runs a command creates (a report shows how to rerun it)."""


def result_params(cfg: RunConfig, sparsity: float) -> dict[str, Any]:
    """Params of a result run (a search trial, an ablation cell or a ``sma run`` sparsity): the searched values,
    every ablation factor's value (:func:`~sma.config.ablation.recipe_params`; an unset one, such as a length
    derived from the collection, as ``"None"``, so every result run names its whole recipe) and the setting."""
    recipe = {name: "None" if value is None else value for name, value in recipe_params(cfg).items()}
    return {**params_of(cfg), **recipe, "sparsity": sparsity, "model": cfg.model.name,
            "dataset": cfg.data.dataset, "seed": cfg.seed}


def result_tags(cfg: RunConfig, sparsity: float, *, role: str, commit: str | None = None) -> dict[str, str]:
    """Tags of a result run; ``commit`` defaults to this checkout's :func:`git_commit`."""
    return {"experiment": cfg.experiment, "sparsity": str(sparsity), "criterion": cfg.prune.criterion,
            "git_commit": commit or git_commit(), "role": role, RESULT_TAG: "1"}


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextmanager
def first_open_lock(uri: str) -> Iterator[None]:
    """Holds ``<db>.lock`` while a process opens a local SQLite store: the first MLflow client of a process
    creates or migrates the tables, and two runs started at once on a new store would both do it (one fails
    with ``table _alembic_tmp_experiments already exists``). A server store needs no lock."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        yield


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Local backends keep artifacts next to the database (MLflow's default is ``./mlruns`` of the cwd)."""
    db = _sqlite_path(uri)
    return (db.resolve().parent / "mlartifacts" / experiment).as_uri() if db is not None else None


@dataclass(frozen=True)
class Tracking:
    """Where runs are logged: picklable, so trials receive it and open their own client."""

    uri: str
    experiment_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    @classmethod
    def open(cls, uri: str, experiment: str) -> Tracking:
        with first_open_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
            else:
                exp_id = exp.experiment_id
                if exp.lifecycle_stage == "deleted":
                    client.restore_experiment(exp_id)
            mark_training_experiment(client, exp_id)
        return cls(uri=uri, experiment_id=exp_id)

    # -- finding and creating runs -------------------------------------------------------------------

    def _find(self, filter_string: str) -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                            run_view_type=ViewType.ACTIVE_ONLY, max_results=1000))

    def create_run(self, name: str, *, tags: Mapping[str, Any], params: Mapping[str, Any],
                   parent_id: str | None = None, command: str | None = None) -> str:
        """A new RUNNING run (a child of ``parent_id`` if given) with ``tags`` and ``params``."""
        # a child names its parent; a top-level run, the command line that made it (this process's by default)
        links = {"mlflow.parentRunId": parent_id} if parent_id else {COMMAND_TAG: command or invocation()}
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**_str(tags), **_str(links)})
        self.client.log_batch(run.info.run_id, params=_params(params))
        if params.get("dataset"):
            log_collection(self.client, run.info.run_id, str(params["dataset"]))
        return run.info.run_id

    def parent_run(self, *, study: str, tags: Mapping[str, Any], params: Mapping[str, Any],
                   role: str = PARENT) -> str:
        """The study's parent run (created, or reopened on resume); ``role`` ``ablation`` for an ablation."""
        found = self._find(f"tags.role = '{role}' AND tags.study = '{study}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        return self.create_run(study, tags={**tags, "role": role, "study": study}, params=params)

    def child_run(self, *, parent_id: str, study: str, number: int, tags: Mapping[str, Any],
                  params: Mapping[str, Any]) -> str:
        """The child run of Optuna trial ``number`` (created, or reopened when the trial is retried)."""
        found = self.children(study, number=number)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        return self.create_run(f"{study}-trial-{number:03d}", parent_id=parent_id, params=params,
                               tags={**tags, "role": CHILD, "study": study, "optuna_trial": str(number)})

    def children(self, study: str, *, status: str | None = None, role: str = CHILD,
                 number: int | None = None) -> list:
        """Child runs of ``study`` (of ``role``), optionally only those in ``status`` / of Optuna trial ``number``."""
        query = f"tags.role = '{role}' AND tags.study = '{study}'"
        if number is not None:
            query += f" AND tags.optuna_trial = '{number}'"
        if status:
            query += f" AND attributes.status = '{status}'"
        return self._find(query)

    # -- logging ---------------------------------------------------------------------------------------

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in _numeric(metrics).items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i:i + 500])

    def log_epochs(self, run_id: str, epochs: Iterable[Mapping[str, Any]]) -> None:
        """Per-epoch reports, each at ``step = epoch``."""
        for row in epochs:
            step = int(row.get("epoch", 0))
            self.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=step)

    def log_result(self, run_id: str, *, epochs: Iterable[Mapping[str, Any]], final: Mapping[str, Any],
                   step: int, files: Iterable[str | Path]) -> None:
        """A result run's per-epoch rows, its final numeric metrics (at ``step``) and its files that exist."""
        self.log_epochs(run_id, epochs)
        self.log_metrics(run_id, final, step=step)
        for path in files:
            if Path(path).is_file():
                self.client.log_artifact(run_id, str(path))

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, status="FINISHED")

    def fail(self, run_id: str, exc: BaseException) -> None:
        """FAILED, with the error as a tag and the traceback as ``error.txt``."""
        text = "".join(traceback.format_exception(exc))
        try:
            self.client.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:4000])
            self.client.log_text(run_id, text, "error.txt")
        finally:
            self.client.set_terminated(run_id, status="FAILED")

    def end_with(self, run_id: str, exc: BaseException) -> None:
        """Close ``run_id`` after ``exc``: KILLED on an interrupt, FAILED otherwise. Never raises, so that the
        caller re-raises ``exc`` itself, not an error of the tracking store."""
        try:
            if isinstance(exc, KeyboardInterrupt):
                self.client.set_tag(run_id, "stopped", "KeyboardInterrupt")
                self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.KILLED))
            else:
                self.fail(run_id, exc)
        except Exception as err:  # noqa: BLE001 - the run's own error matters more
            log.warning("could not mark MLflow run %s as ended by %s: %s", run_id, type(exc).__name__, err)

    def close_stale_children(self, study: str, *, reason: str, role: str = CHILD) -> list[str]:
        """Child runs (of ``role``) still RUNNING after their driver is gone -> KILLED with ``reason``."""
        closed = []
        for run in self.children(study, status="RUNNING", role=role):
            self.client.set_tag(run.info.run_id, "stopped", reason)
            self.client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
            closed.append(run.info.run_id)
        return closed

    def delete_study_runs(self, study: str) -> int:
        """``--fresh``: delete the study's parent and child runs (recoverable from MLflow's trash)."""
        runs = self._find(f"tags.study = '{study}'")
        for run in runs:
            self.client.delete_run(run.info.run_id)
        return len(runs)


@contextmanager
def closing_run(tracking: Tracking, run_id: str) -> Iterator[str]:
    """FINISHED when the block ends, KILLED on an interrupt, FAILED on any other error (re-raised)."""
    try:
        yield run_id
    except BaseException as exc:
        tracking.end_with(run_id, exc)
        raise
    tracking.finish(run_id)


@dataclass(frozen=True)
class RunTracking:
    """``sma run``'s parent run (role ``run``) and its result runs, one per sparsity (role ``sparsity``)."""

    tracking: Tracking
    cfg: RunConfig
    run_id: str
    commit: str

    @classmethod
    @contextmanager
    def start(cls, cfg: RunConfig, config_file: str | Path, *, command: str | None = None,
              commit: str | None = None, tags: Mapping[str, str] | None = None) -> Iterator[RunTracking]:
        """Open the store, create the parent run and close it when the block ends (see :func:`closing_run`).

        ``command``, ``commit`` and ``tags`` are for a run made elsewhere (``sma log``): by default the parent
        run gets this process's command line and this checkout's commit."""
        tracking = Tracking.open(resolve_tracking_uri(cfg.mlflow_tracking_uri, cfg.output_dir), cfg.experiment)
        commit = commit or git_commit()
        run_id = tracking.create_run(
            cfg.experiment, tags={**(tags or {}), "experiment": cfg.experiment, "criterion": cfg.prune.criterion,
                                  "git_commit": commit, "role": RUN},
            params={**params_of(cfg), "model": cfg.model.name, "dataset": cfg.data.dataset, "seed": cfg.seed},
            command=command)
        with closing_run(tracking, run_id):
            tracking.client.log_artifact(run_id, str(config_file))
            print(f"MLflow: run {run_id} (experiment {cfg.experiment!r}) at {tracking.uri}", flush=True)
            yield cls(tracking=tracking, cfg=cfg, run_id=run_id, commit=commit)

    @property
    def info(self) -> dict[str, str]:
        """What ``results.json`` records of the parent run."""
        return {"tracking_uri": self.tracking.uri, "run_id": self.run_id}

    @contextmanager
    def sparsity(self, sparsity: float) -> Iterator[str]:
        """The child run of one sparsity, closed like the parent (see :func:`closing_run`)."""
        cfg = self.cfg
        run_id = self.tracking.create_run(
            f"{cfg.experiment}-s{sparsity:.2f}", parent_id=self.run_id, params=result_params(cfg, sparsity),
            tags=result_tags(cfg, sparsity, role=SPARSITY, commit=self.commit))
        with closing_run(self.tracking, run_id):
            yield run_id

    def log_sparsity(self, run_id: str, result: Mapping[str, Any], files: Iterable[str | Path]) -> None:
        """A sparsity's per-epoch rows (if any), final metrics and files (plan, per-query metrics)."""
        self.tracking.log_result(run_id, epochs=result.get("history") or [], final=result,
                                 step=self.cfg.distill.post_prune_epochs, files=files)


def _str(tags: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in tags.items() if v is not None}


def _params(params: Mapping[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:6000]) for k, v in params.items() if v is not None]


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Finite numbers only (bools as 0/1); nested values and strings are not metrics."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out
