"""What a person sees of a search in the MLflow UI: the training-runs view, the collection as each run's
dataset input, and the study's Pareto plot on its parent run.

- :func:`mark_training_experiment` tags an experiment ``mlflow.experimentKind = custom_model_development``.
  MLflow 3.0-3.16 UIs open such an experiment on its runs table instead of the GenAI overview. The 3.17 UI
  ignores the tag: its sidebar switch (GenAI / Model training, remembered per browser) or the URL's
  ``workflowType=machine_learning`` chooses, so :func:`runs_url` is the link to print.
- :func:`log_collection` records the BEIR collection as a dataset input (the runs table's Dataset column).
- :func:`log_study_plot` logs every trial's dev retention against its speedup, the Pareto front of the two
  and the best trial, as ``study_pareto.png`` on the study's parent run.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
"""The experiment kind of a training / tuning experiment (MLflow 3's ``ExperimentKind``)."""
DATASET_CONTEXT_TAG = "mlflow.data.context"
DATASET_CONTEXT = "train"
STUDY_PLOT = "study_pareto.png"
HUB_DATASETS = "https://huggingface.co/datasets/BeIR/"


def mark_training_experiment(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as model training (idempotent)."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)


def runs_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The UI page of the experiment's runs table, for an ``http(s)://`` tracking server; else None."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _listing_digest(folder: Path) -> str:
    """A digest of the folder's file names and sizes: cheap for large collections, changes with any file."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder).as_posix()}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def collection_input(dataset: str) -> DatasetInput:
    """``dataset`` (a BEIR folder, a collection shipped with SMA or a ``BeIR/<name>`` hub name) as an MLflow
    dataset input, metadata only: name, source (folder or hub URL) and digest."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    from sma.data import locate_dataset

    where = locate_dataset(dataset)
    if isinstance(where, Path):
        with warnings.catch_warnings():  # MLflow registers its local artifact source twice and warns about it
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
            source = resolve_dataset_source(str(where.resolve()))
        name, digest = where.name, _listing_digest(where)
    else:
        source, name = HTTPDatasetSource(HUB_DATASETS + where), where
        digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    entity = MetaDataset(source, name=name, digest=digest)._to_mlflow_entity()
    return DatasetInput(entity, tags=[InputTag(DATASET_CONTEXT_TAG, DATASET_CONTEXT)])


def log_collection(client: MlflowClient, run_id: str, dataset: str) -> None:
    """Record the collection as the run's dataset input; a collection that cannot be located is skipped
    with a warning (the run itself reports that error)."""
    try:
        client.log_inputs(run_id, datasets=[collection_input(dataset)])
    except Exception as exc:  # noqa: BLE001 - the UI's Dataset column must not fail a run
        log.warning("could not record dataset %r as an input of run %s: %s", dataset, run_id, exc)


def log_study_plot(client: MlflowClient, run_id: str, trials: Sequence[Mapping[str, float]], *,
                   best: int | None, title: str) -> None:
    """``study_pareto.png``: dev retention (%) against speedup of every trial (``number``,
    ``dev_retention``, ``speedup``), their Pareto front and the best trial (``best``, chosen on dev)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from analysis.pareto import pareto_front

    df = pd.DataFrame(list(trials), columns=["number", "dev_retention", "speedup"]).dropna()
    front = pareto_front(df, "speedup", "dev_retention")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(df["speedup"], 100 * df["dev_retention"], s=18, color="0.6", label="trials")
    ax.plot(front["speedup"], 100 * front["dev_retention"], "o-", color="C0", label="Pareto front")
    for row in df.itertuples():
        ax.annotate(str(int(row.number)), (row.speedup, 100 * row.dev_retention), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    chosen = df[df["number"] == best]
    if not chosen.empty:
        ax.scatter(chosen["speedup"], 100 * chosen["dev_retention"], marker="*", s=160, color="C3", zorder=3,
                   label=f"best on dev (trial {best})")
    ax.set(xlabel="speedup vs dense (x)", ylabel="dev retention (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        client.log_figure(run_id, fig, STUDY_PLOT)
    finally:
        plt.close(fig)
