"""``sma log RUN_DIR``: log a finished ``sma run`` folder, made without tracking, to MLflow.

A run made with ``--set track=false`` (on a GPU node that cannot reach the tracking server, say) writes the
same folder as a tracked one: ``config.json``, ``results.json`` and, per sparsity, ``phase2/sXX/metrics.json``
and ``plan.json``. This logs it as ``sma run`` would have: a parent run (role ``run``) with the run's config,
command line and commit, and a result run per finished sparsity with its metrics, per-epoch rows and files, so
``sma report`` and the MLflow UI treat it like any other run. Logging the same ``results.json`` twice is a
no-op: the parent run carries its SHA-256 (tag ``source_results``).

    sma log results/frontier                  # into results/mlflow.db (or --mlflow-tracking-uri)
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sma.config import ConfigError, RunConfig, load_config
from sma.layout import CONFIG_FILE, METRICS_FILE, PLAN_FILE, RESULTS_FILE, sparsity_dir

SOURCE_TAG = "source_results"
"""On a logged parent run: the SHA-256 of the ``results.json`` it was logged from."""


def log_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a run's folder, results/<experiment>/ of the sma run that wrote it (config.json, results.json)")


@dataclass(frozen=True)
class RunDir:
    """What ``sma log`` reads of a run's folder, once."""

    path: Path
    cfg: RunConfig
    results: dict[str, Any]
    rows: list[dict[str, Any]]
    """The full metrics (``metrics.json``) of each finished sparsity."""
    digest: str
    """SHA-256 of ``results.json``."""


def read_run_dir(run_dir: Path) -> RunDir:
    """The run's config, its ``results.json`` and the full metrics of each finished sparsity; one line naming
    the file and what is wrong otherwise."""
    for name in (CONFIG_FILE, RESULTS_FILE):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir}: no {name}; RUN_DIR must be the results/<experiment>/ folder of a sma run")
    cfg = load_config(run_dir / CONFIG_FILE, RunConfig)
    try:
        raw = (run_dir / RESULTS_FILE).read_bytes()
        results = json.loads(raw)
        rows = [json.loads((sparsity_dir(run_dir, row["sparsity"]) / METRICS_FILE).read_text())
                for row in results["sparsities"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{run_dir}: unreadable run ({type(exc).__name__}: {exc})") from None
    return RunDir(run_dir, cfg, results, rows, hashlib.sha256(raw).hexdigest())


def logged_parent(uri: str, experiment: str, digest: str) -> str | None:
    """The parent run already logged from a ``results.json`` with this SHA-256, if any."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.{SOURCE_TAG} = '{digest}'",
                               run_view_type=ViewType.ACTIVE_ONLY, max_results=1)
    return found[0].info.run_id if found else None


def log_run_dir(run: RunDir, *, tracking_uri: str) -> tuple[str, bool]:
    """Log ``run`` to ``tracking_uri``; returns the parent run's id and whether it was logged now (``False``:
    this ``results.json`` was logged before)."""
    from sma.tracking import RunTracking

    if (existing := logged_parent(tracking_uri, run.cfg.experiment, run.digest)) is not None:
        return existing, False
    cfg = replace(run.cfg, mlflow_tracking_uri=tracking_uri)
    command = run.results.get("command") or f"sma run --config {run.path / CONFIG_FILE}"
    with RunTracking.start(cfg, run.path / CONFIG_FILE, command=command,
                           commit=run.results.get("git_commit") or "unknown",
                           tags={SOURCE_TAG: run.digest, "logged_from": str(run.path)}) as tracked:
        for metrics in run.rows:
            folder = sparsity_dir(run.path, metrics["sparsity"])
            with tracked.sparsity(metrics["sparsity"]) as child:
                tracked.log_sparsity(child, metrics, [folder / PLAN_FILE, folder / METRICS_FILE])
        return tracked.run_id, True


def run_cli(args: argparse.Namespace, cfg: RunConfig) -> int:
    from sma.tracking import resolve_tracking_uri

    run = read_run_dir(Path(args.run_dir))  # bad input fails before MLflow is opened
    uri = resolve_tracking_uri(cfg.mlflow_tracking_uri, cfg.output_dir)
    if not run.results.get("complete"):
        print(f"{run.path}: the run did not finish; logging its {len(run.rows)} finished sparsities")
    run_id, new = log_run_dir(run, tracking_uri=uri)
    if new:
        print(f"logged {run.path} ({len(run.rows)} sparsities) as run {run_id} at {uri}")
    else:
        print(f"{run.path} was logged before, as run {run_id} at {uri}: nothing to do")
    return 0
