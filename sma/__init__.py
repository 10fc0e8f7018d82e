"""SMA: Sparse Mechanistic Analysis for neural retrieval encoders.

The public API: configs (:mod:`sma.config`), data and models, IR evaluation and agreement, the physical
pruning engine (:mod:`sma.prune`), the speed/memory benchmark, and the whole pipeline (:func:`run`,
:func:`run_sparsity`). Mechanistic analysis lives in :mod:`sma.circuits`.

Names are imported on first use (PEP 562), so ``import sma`` and ``sma --help`` cost no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    "sma.config": ("AnalysisConfig", "BenchConfig", "ConfigError", "DataConfig", "DistillConfig", "EvalConfig",
                   "ModelConfig", "PruneConfig", "RunConfig", "SearchConfig", "TrainConfig", "apply_overrides",
                   "from_dict", "load_config", "save_config", "to_dict"),
    "sma.data": ("DataError", "RetrievalData", "doc_text", "load_beir_folder", "load_data", "resolve_dataset",
                 "subsample"),
    "sma.device": ("resolve_device",),
    "sma.distill": ("BatchSampler", "distill_epochs", "hidden_loss", "kd_loss"),
    "sma.evaluate": ("Agreement", "EvalResult", "agreement", "evaluate", "metric_key", "retrieve", "score_run",
                     "top_k_overlap"),
    "sma.bench": ("BenchResult", "benchmark"),
    "sma.model": ("BiEncoder", "ModelNotFoundError", "resolve_model_path"),
    "sma.pipeline": ("run", "run_sparsity"),
    "sma.prune": ("PruningPlan", "apply_plan", "encoder_sparsity", "load_pruned", "masked", "plan_for_sparsity",
                  "save_pruned"),
    "sma.schedule": ("sparsity_schedule",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sma' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
