"""The Model Registry: a study's best pruned model (chosen on dev) as an MLflow model anyone can load.

:func:`register_best` logs the model as a pyfunc (the model code is :mod:`sma.pyfunc_encoder`, which needs
torch and transformers but not SMA) on the study's parent run and registers it as ``<experiment>-s0.50``
(the study's name), one version per search round that found a new best trial. Then::

    model = mlflow.pyfunc.load_model("models:/<experiment>-s0.50/latest")
    queries = model.predict(["what is a wing"], params={"kind": "query"})   # (1, hidden) float32, L2-normalised
    docs = model.predict(["the wing ..."])                                    # kind="document" is the default

gives the embeddings that ``sma.load_pruned`` + :class:`sma.model.BiEncoder` give (same pooling,
normalisation and maximum lengths, recorded as the model's config).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).with_name("pyfunc_encoder.py")
LOADER_CODE = Path(__file__).with_name("stock_encoder.py")
"""Shipped with the model (``code_paths``): the pyfunc rebuilds the pruned encoder with it."""
LOGGED_NAME = "encoder"
TRIAL_RUN_TAG = "best_trial_run_id"
"""Model version tag: the MLflow run of the trial whose model the version holds."""
REQUIREMENTS = ("torch", "transformers", "safetensors", "tokenizers", "numpy", "pandas")


def encoding_config(model: Any) -> dict[str, Any]:
    """The pyfunc's ``model_config`` from a :class:`sma.config.ModelConfig` (pooling, normalise, lengths)."""
    return {"pooling": model.pooling, "normalize": model.normalize, "query_max_length": model.query_max_length,
            "doc_max_length": model.doc_max_length}


def _signature(model_dir: Path):
    from mlflow.models import infer_signature

    cfg = json.loads((model_dir / "config.json").read_text())
    width = int(cfg.get("hidden_size", cfg.get("dim", 0)))
    return infer_signature(["a text"], np.zeros((1, width), dtype=np.float32), params={"kind": "document"})


def _latest(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version), default=None)


def register_best(tracking_uri: str, *, name: str, run_id: str, model_dir: str | Path,
                  encoding: Mapping[str, Any], tags: Mapping[str, str]):
    """Log ``model_dir`` (a ``save_pruned`` directory) as a pyfunc on run ``run_id`` and register it as a new
    version of ``name``; returns the :class:`~mlflow.entities.model_registry.ModelVersion`. When the latest
    version already holds the same trial (``tags[TRIAL_RUN_TAG]``), nothing is logged and that version is
    returned: a resumed search that found no better trial adds no version."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.tracking import MlflowClient

    import mlflow
    from sma.tracking import fluent_tracking_uri

    client = MlflowClient(tracking_uri=tracking_uri)
    latest = _latest(client, name)
    if latest is not None and TRIAL_RUN_TAG in tags and latest.tags.get(TRIAL_RUN_TAG) == tags[TRIAL_RUN_TAG]:
        log.info("model %s version %s already holds trial run %s", name, latest.version, tags[TRIAL_RUN_TAG])
        return latest
    model_dir = Path(model_dir)
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=LOGGED_NAME, source_run_id=run_id,
                                        tags=dict(tags), model_type="text-embedding")
    with fluent_tracking_uri(tracking_uri):
        info = mlflow.pyfunc.log_model(
            name=LOGGED_NAME, python_model=str(MODEL_CODE), code_paths=[str(LOADER_CODE)], artifacts={"encoder": str(model_dir)},
            model_config=dict(encoding), signature=_signature(model_dir), model_id=logged.model_id,
            pip_requirements=[f"{p}=={version(p)}" for p in REQUIREMENTS], registered_model_name=name)
    client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=0)])  # the run's Models column
    registered = client.get_model_version(name, str(info.registered_model_version))
    for key, value in tags.items():
        client.set_model_version_tag(name, registered.version, key, str(value))
    log.info("registered %s version %s (pyfunc, from run %s)", name, registered.version, run_id)
    return client.get_model_version(name, registered.version)
