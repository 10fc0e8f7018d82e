"""The runs of one MLflow experiment as one DataFrame, and the per-query metrics their artifacts hold.

Every pruned model SMA measures is an MLflow run tagged ``result=1``: a ``sma run`` sparsity (role
``sparsity``), a search trial (``trial``), an ablation cell (``cell``). :func:`load_runs` reads them with
``mlflow.search_runs`` into one frame (``run_id``, ``status``, ``params.*`` made numeric where they are,
``metrics.*``, ``tags.*``, and :data:`COLLECTION`; recipe params an older run did not log come from its parent's
config, or the defaults where that cannot be read). :func:`per_query` downloads a run's ``metrics.json``
once into a local cache and returns one split's per-query values.
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from sma.config import ConfigError, RunConfig, from_dict
from sma.config.ablation import RECIPE_PARAMS, recipe_params
from sma.data import collection_name
from sma.tracking import COMMAND_TAG
from sma.tracking import fluent_tracking_uri as tracking_uri

log = logging.getLogger(__name__)

RESULT_FILTER = "tags.result = '1'"
METRICS_ARTIFACT = "metrics.json"
CONFIG_ARTIFACT = "config.json"
"""The run config a ``sma run`` logs on its parent run."""
PARENT = "tags.mlflow.parentRunId"
COLLECTION = "collection"
"""Column of :func:`load_runs`: the collection a run measured, by name (``params.dataset`` may be a folder
path, a name under ``$SMA_DATA_DIR`` or a hub name: ``../data/cacm`` and ``cacm`` are one collection)."""


def _numeric_params(df: pd.DataFrame) -> pd.DataFrame:
    for col in [c for c in df.columns if c.startswith("params.")]:
        converted = pd.to_numeric(df[col], errors="coerce")
        if converted.notna().sum() == df[col].notna().sum():  # every logged value is a number
            df[col] = converted
    return df


def _logged_recipe(uri: str, run_id: str) -> dict[str, Any] | None:
    """Every factor's value in the config logged on ``run_id`` (:data:`CONFIG_ARTIFACT`); ``None`` when the run
    has none or it no longer parses."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = MlflowClient(tracking_uri=uri).download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
            return recipe_params(from_dict(RunConfig, json.loads(Path(path).read_text())))
        except (MlflowException, OSError, ValueError, ConfigError):
            return None


def _fill_recipe_params(df: pd.DataFrame, uri: str) -> pd.DataFrame:
    """Recipe params a result run did not log (it predates a factor, or an unset value was not logged) taken
    from the config its parent run logged, so that it groups with the runs of the same recipe. Options added
    since that config was written take their default, which is the behaviour before they existed; so does
    every param of a run whose parent config cannot be read (no parent, or its artifacts moved away from the
    experiment's artifact location), with a warning naming those runs."""
    columns = [f"params.{name}" for name in RECIPE_PARAMS]
    present = df.reindex(columns=columns)
    missing = present.isna().any(axis=1)
    if not missing.any():
        return df
    parents = df[PARENT] if PARENT in df.columns else pd.Series(None, index=df.index, dtype=object)
    unread = missing.copy()
    for parent in parents[missing].dropna().unique():
        logged = _logged_recipe(uri, parent)
        if logged is not None:
            rows = missing & (parents == parent)
            _fill(df, rows, logged)
            unread &= ~rows
    if unread.any():
        log.warning("%d result run(s) lack recipe params and their parent's config.json cannot be read (%s): "
                    "taking the defaults for them", int(unread.sum()), ", ".join(df.loc[unread, "run_id"][:5]))
        _fill(df, unread, recipe_params(RunConfig()))
    return df


def _fill(df: pd.DataFrame, rows: pd.Series, values: dict[str, Any]) -> None:
    """Set each ``params.<name>`` of ``values`` on ``rows`` where it is missing, as MLflow logs a param."""
    for name, value in values.items():
        column = f"params.{name}"
        if column not in df.columns:
            df[column] = None
        df.loc[rows & df[column].isna(), column] = str(value)


def load_runs(experiment: str, *, uri: str, filter_string: str = RESULT_FILTER,
              statuses: Iterable[str] = ("FINISHED",)) -> pd.DataFrame:
    """Runs of ``experiment`` matching ``filter_string`` (default: every result run) in ``statuses``.

    Raises ``LookupError`` naming the experiment when it does not exist in the store."""
    import mlflow

    with tracking_uri(uri):
        if mlflow.get_experiment_by_name(experiment) is None:
            raise LookupError(f"no MLflow experiment {experiment!r} at {uri}")
        df = mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string,
                                output_format="pandas")
    if df.empty:
        return df
    df = df[df["status"].isin(tuple(statuses))].reset_index(drop=True)
    dataset = df["params.dataset"] if "params.dataset" in df.columns else pd.Series("", index=df.index)
    df[COLLECTION] = dataset.map(collection_name)
    return _numeric_params(_fill_recipe_params(df, uri))


def commands(experiment: str, *, uri: str, parents: Iterable[str] = ()) -> list[str]:
    """The command lines that made the experiment's runs (the ``command`` tag of its top-level runs), oldest
    first, each once. A command whose run was stopped or failed is left out unless it is among ``parents`` (the
    parent runs of the results shown: a run stopped after some sparsities finished made those)."""
    import mlflow

    with tracking_uri(uri):
        df = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.{COMMAND_TAG} LIKE '%'",
                                order_by=["attributes.start_time ASC"], output_format="pandas")
    if df.empty:
        return []
    made = df["status"].isin(("FINISHED", "RUNNING")) | df["run_id"].isin(set(parents))
    return list(dict.fromkeys(df.loc[made, f"tags.{COMMAND_TAG}"].dropna()))


DATASET_FLAGS = ("--dataset", "--datasets")
TRACKING_FLAG = "--mlflow-tracking-uri"


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "~")) or (len(path) > 2 and path[1] == ":")


def _is_folder_path(arg: str) -> bool:
    return arg.startswith(".") or _is_absolute(arg)  # a hub name is org/name


OUTPUT_FLAGS = {"--output-dir": "results/", "--output": "", "--page": ""}
"""Flags naming where a command writes, and the folder an absolute value is shown under (its last part kept)."""
OUTPUT_KEYS = {"output_dir": "results/"}
"""``--set`` keys naming where a run writes, likewise."""
DROPPED_FLAGS, DROPPED_KEYS = ("--cache-dir",), ("cache_dir",)
"""A cache folder changes no result: an absolute one is left out of the command shown."""


def _portable(folder: str, value: str) -> str:
    """An absolute ``value`` by its last part under ``folder``; a relative one as it is."""
    return folder + Path(value.rstrip("/")).name if _is_absolute(value) else value


def display_command(command: str) -> str:
    """``command`` as a results page shows it: a collection given as a folder path (``--dataset ../data/cacm``)
    by its name (``--dataset cacm``), which ``$SMA_DATA_DIR`` resolves on the reader's machine; a SQLite tracking
    store under the working directory by its relative path (:func:`display_uri`); an absolute output folder or
    file of the machine that ran it (``--output-dir``, ``--output``, ``--page``, ``--set output_dir=``) by its last part under
    ``results/`` (folders) or the working directory (files), and an absolute cache folder (``--cache-dir``,
    ``--set cache_dir=``) left out; hub names and every other argument as they were."""
    words, out = shlex.split(command), []
    naming = store = False
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, value = word.partition("=")
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word.startswith("-"):
            naming = flag in DATASET_FLAGS and not eq
            store = flag == TRACKING_FLAG and not eq
            key, _, setting = nxt.partition("=")
            if (flag in DROPPED_FLAGS and _is_absolute(value if eq else nxt)) or (
                    word == "--set" and key in DROPPED_KEYS and _is_absolute(setting)):
                i += 1 if eq else 2
                continue
            if flag in OUTPUT_FLAGS:
                if eq:
                    word = f"{flag}={_portable(OUTPUT_FLAGS[flag], value)}"
                elif nxt:
                    out.append(word)
                    word, i = _portable(OUTPUT_FLAGS[flag], nxt), i + 1
            elif word == "--set" and key in OUTPUT_KEYS:
                out.append(word)
                word, i = f"{key}={_portable(OUTPUT_KEYS[key], setting)}", i + 1
            elif flag in DATASET_FLAGS and eq and _is_folder_path(value):
                word = f"{flag}={collection_name(value)}"
            elif flag == TRACKING_FLAG and eq:
                word = f"{flag}={display_uri(value)}"
        elif naming and _is_folder_path(word):
            word = collection_name(word)
        elif store:
            word, store = display_uri(word), False
        out.append(word)
        i += 1
    return shlex.join(out)


def display_uri(uri: str, cwd: Path | None = None) -> str:
    """``uri`` as a reader types it: a SQLite store under the working directory by its relative path."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return uri
    path, here = Path(uri.removeprefix(prefix)), (cwd or Path.cwd()).resolve()
    return f"{prefix}{path.relative_to(here)}" if path.is_absolute() and path.is_relative_to(here) else uri


def _artifact(uri: str, run_id: str, name: str, cache_dir: Path) -> Path:
    local = cache_dir / run_id / name
    if not local.is_file():
        from mlflow.tracking import MlflowClient

        (cache_dir / run_id).mkdir(parents=True, exist_ok=True)
        tmp = Path(MlflowClient(tracking_uri=uri).download_artifacts(run_id, name, str(cache_dir / run_id)))
        if tmp != local:
            tmp.replace(local)
    return local


PRUNED, DENSE, INT8 = "per_query", "dense_per_query", "int8_per_query"
"""Keys of a run's ``metrics.json`` holding the per-query metrics of the pruned model, the dense teacher and the
pruned model's int8 copy (runs with ``bench.int8``)."""


def per_query(uri: str, run_ids: Iterable[str], *, split: str = "test", metric: str = "ndcg_at_10",
              cache_dir: Path, progress: bool = True, model: str = PRUNED,
              missing_ok: bool = False) -> dict[str, dict[str, float]]:
    """``{run_id: {query_id: value}}`` from each run's ``metrics.json`` artifact (downloaded once into
    ``cache_dir/<run_id>/``, then read from there). ``model``: :data:`PRUNED`, :data:`DENSE` or :data:`INT8` (runs
    whose file has no such per-query metrics are left out). ``missing_ok``: leave out runs without the file
    instead of raising."""
    from mlflow.exceptions import MlflowException
    from tqdm.auto import tqdm

    out: dict[str, dict[str, float]] = {}
    ids = list(run_ids)
    for run_id in tqdm(ids, desc="per-query metrics", disable=not progress or not ids, unit="run"):
        try:
            blob = json.loads(_artifact(uri, run_id, METRICS_ARTIFACT, cache_dir).read_text())
        except (OSError, MlflowException):
            if not missing_ok:
                raise
            continue
        if model in blob:
            out[run_id] = {q: float(v[metric]) for q, v in blob[model][split].items()}
    return out


def metric_history(uri: str, run_ids: Iterable[str], metric: str) -> pd.DataFrame:
    """``run_id``, ``step``, ``value`` of every logged value of ``metric`` (e.g. per-epoch dev retention)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    rows = [{"run_id": r, "step": m.step, "value": m.value}
            for r in run_ids for m in client.get_metric_history(r, metric)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])
