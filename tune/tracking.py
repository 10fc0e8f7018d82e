"""MLflow side of the search: one experiment per search, a parent run per study, a child run per trial.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no fluent global state), so the
driver and concurrent trial processes can log at once. Runs are found again by their tags, so a resumed
search reuses its parent runs and the child run of a retried trial instead of creating new ones.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, ViewType
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PARENT, CHILD = "study", "trial"


def resolve_tracking_uri(configured: str | None, output_dir: str | Path) -> str:
    """Config, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<output_dir>/mlflow.db`` (absolute)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Local backends keep artifacts next to the database (MLflow's default is ``./mlruns`` of the cwd)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment).as_uri()
    return None


@dataclass(frozen=True)
class Tracking:
    """Where a search logs: picklable, so trials receive it and open their own client."""

    uri: str
    experiment_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    @classmethod
    def open(cls, uri: str, experiment: str) -> Tracking:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
        return cls(uri=uri, experiment_id=exp_id)

    # -- finding and creating runs -------------------------------------------------------------------

    def _find(self, filter_string: str) -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                            run_view_type=ViewType.ACTIVE_ONLY, max_results=1000))

    def parent_run(self, *, study: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        """The study's parent run (created, or reopened on resume)."""
        found = self._find(f"tags.role = '{PARENT}' AND tags.study = '{study}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=study,
                                     tags={**_str(tags), "role": PARENT, "study": study})
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def child_run(self, *, parent_id: str, study: str, number: int, tags: Mapping[str, Any],
                  params: Mapping[str, Any]) -> str:
        """The child run of Optuna trial ``number`` (created, or reopened when the trial is retried)."""
        found = self._find(f"tags.role = '{CHILD}' AND tags.study = '{study}' AND tags.optuna_trial = '{number}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id, run_name=f"{study}-trial-{number:03d}",
            tags={**_str(tags), "role": CHILD, "study": study, "optuna_trial": str(number),
                  "mlflow.parentRunId": parent_id})
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    def children(self, study: str, *, status: str | None = None) -> list:
        query = f"tags.role = '{CHILD}' AND tags.study = '{study}'"
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

    def close_stale_children(self, study: str, *, reason: str) -> list[str]:
        """Child runs still RUNNING after their driver is gone -> KILLED with ``reason``."""
        closed = []
        for run in self.children(study, status="RUNNING"):
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

