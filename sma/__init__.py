"""SMA: Sparse Mechanistic Analysis for neural retrieval encoders.

The public API: configs (:mod:`sma.config`), data and models, IR evaluation, the physical pruning engine
(:mod:`sma.prune`), the speed/memory benchmark, and the whole pipeline (:func:`run`, :func:`run_sparsity`).
Mechanistic analysis lives in :mod:`sma.circuits` (imported on demand: it pulls in plotting).
"""

from sma.agreement import Agreement, agreement, top_k_overlap
from sma.bench import BenchResult, benchmark
from sma.config import (
    AnalysisConfig,
    BenchConfig,
    ConfigError,
    DataConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
    PruneConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from sma.data import (
    DataError,
    RetrievalData,
    doc_text,
    load_beir_folder,
    load_data,
    resolve_dataset,
    subsample,
)
from sma.device import resolve_device
from sma.distill import BatchSampler, distill_epochs, hidden_loss, kd_loss
from sma.evaluate import EvalResult, evaluate, metric_key, retrieve, score_run
from sma.model import BiEncoder, ModelNotFoundError, resolve_model_path
from sma.pipeline import run, run_sparsity
from sma.prune import (
    PruningPlan,
    apply_plan,
    encoder_sparsity,
    load_pruned,
    masked,
    plan_for_sparsity,
    save_pruned,
)
from sma.schedule import sparsity_schedule

__version__ = "0.1.0"

__all__ = [
    "Agreement", "AnalysisConfig", "BatchSampler", "BenchConfig", "BenchResult", "BiEncoder", "ConfigError",
    "DataConfig", "DataError", "DistillConfig", "EvalConfig", "EvalResult", "ModelConfig",
    "ModelNotFoundError", "PruneConfig", "PruningPlan", "RetrievalData", "RunConfig", "TrainConfig",
    "agreement", "apply_overrides", "apply_plan", "benchmark", "distill_epochs", "doc_text", "encoder_sparsity",
    "evaluate", "from_dict", "hidden_loss", "kd_loss", "load_beir_folder", "load_config", "load_data",
    "load_pruned", "masked", "metric_key", "plan_for_sparsity", "resolve_dataset", "resolve_device",
    "resolve_model_path", "retrieve", "run", "run_sparsity", "save_config", "save_pruned", "score_run",
    "sparsity_schedule", "subsample", "to_dict", "top_k_overlap",
]
