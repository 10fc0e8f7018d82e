"""A submitted search keeps its state where the user and the next job find it, never in the job's copy.

``ray job submit --working-dir .`` runs the entrypoint inside Ray's copy of the directory
(``<session>/runtime_resources/working_dir_files/_ray_pkg_<hash>/``). A relative results root, Optuna
database, MLflow store, Ray storage or cache lands there: invisible to the user, gone with the cluster, and a
resubmission after any code change (a new hash, a new copy) cannot find the studies to resume.
:func:`check_storage_root` refuses such a search before it starts (``cluster/submit.sh`` passes an absolute
``--output-dir`` from ``$SMA_STORAGE_ROOT``); outside a Ray job it checks nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from sma.cache import cache_root
from sma.config import ConfigError, RunConfig, SearchConfig
from sma.config.ablation import AblationConfig

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor for a job's entrypoint: the job's runtime env (with its ``working_dir``)."""
COPIES_DIR = "working_dir_files"
"""Ray unpacks each uploaded working directory under ``.../runtime_resources/working_dir_files/``."""
LOCAL_SCHEMES = ("sqlite:///", "file://")


def job_config(environ: Mapping[str, str]) -> dict:
    """The config Ray's job supervisor gives a submitted job's entrypoint (``runtime_env``, ``metadata`` with
    the ``job_submission_id``); empty outside a submitted job."""
    return json.loads(environ.get(JOB_CONFIG_ENV) or "{}")


def job_working_copy(cwd: Path, environ: Mapping[str, str]) -> Path | None:
    """The uploaded working-directory copy this process runs in as a Ray job's entrypoint, else ``None``."""
    for parent in (cwd, *cwd.parents):
        if parent.parent.name == COPIES_DIR:
            return parent
    runtime_env = job_config(environ).get("runtime_env") or {}
    return cwd if runtime_env.get("working_dir") else None


def local_path(location: str | None) -> str | None:
    """The filesystem path of a folder or of a ``sqlite:///`` / ``file://`` URL; ``None`` for a server or
    a cloud URI (nothing to check) and for an unset location."""
    if not location:
        return None
    for scheme in LOCAL_SCHEMES:
        if location.startswith(scheme):
            return location.removeprefix(scheme) or "."
    return None if "://" in location else location


def stored_places(cfg: SearchConfig | AblationConfig | RunConfig) -> dict[str, str | None]:
    """What a search, an ablation or a run on Ray workers writes to, as configured (relative paths are relative
    to the working directory). The default MLflow store, Optuna database and Ray storage lie under ``output_dir``."""
    run = cfg if isinstance(cfg, RunConfig) else cfg.run
    return {
        "output_dir": run.output_dir,
        "optuna_storage": local_path(getattr(cfg, "optuna_storage", None)),
        "storage_path": local_path(getattr(cfg, "storage_path", None)),
        "mlflow_tracking_uri": local_path(run.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")),
        "cache_dir": str(cache_root(run.cache_dir)),
    }


def misplaced(places: Mapping[str, str | None], copy: Path, cwd: Path) -> dict[str, Path]:
    """The places that resolve inside ``copy`` (relative ones against ``cwd``)."""
    root = copy.resolve()
    out = {}
    for name, place in places.items():
        if place is None:
            continue
        path = (cwd / Path(place).expanduser()).resolve()
        if path == root or root in path.parents:
            out[name] = path
    return out


def check_storage_root(cfg: SearchConfig | AblationConfig | RunConfig, *, cwd: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`~sma.config.ConfigError` (one line) when ``cfg`` runs as a Ray job and would keep any of
    its state inside the job's copy of the working directory."""
    cwd = Path.cwd() if cwd is None else cwd
    copy = job_working_copy(cwd, os.environ if environ is None else environ)
    if copy is None:
        return
    bad = misplaced(stored_places(cfg), copy, cwd)
    if bad:
        listed = ", ".join(f"{name}={path}" for name, path in bad.items())
        raise ConfigError(
            f"this Ray job would keep {listed} inside its copy of the working directory ({copy}), which goes "
            "with the cluster and which a resubmission cannot resume from: give an absolute --output-dir on "
            "storage that outlives the job (cluster/submit.sh: SMA_STORAGE_ROOT=/shared/path) and absolute "
            "or server locations for the others")
