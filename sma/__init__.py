"""SMA: Sparse Mechanistic Analysis for neural retrieval encoders."""

from sma.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
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
from sma.evaluate import EvalResult, evaluate, metric_key, retrieve, score_run
from sma.model import BiEncoder, ModelNotFoundError, resolve_model_path

__version__ = "0.1.0"

__all__ = [
    "BiEncoder", "ConfigError", "DataConfig", "DataError", "EvalConfig", "EvalResult", "ModelConfig",
    "ModelNotFoundError", "RetrievalData", "RunConfig", "TrainConfig", "apply_overrides", "doc_text",
    "evaluate", "from_dict", "load_beir_folder", "load_config", "load_data", "metric_key", "resolve_dataset",
    "resolve_model_path", "retrieve", "save_config", "score_run", "subsample", "to_dict",
]
