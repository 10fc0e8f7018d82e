"""Configuration: the run config's sections (:mod:`.sections`), the search config and its table of searched
hyperparameters (:mod:`.search`), closed sets of values (:mod:`.choices`), typed loading and overrides
(:mod:`.coerce`) and the command-line front door (:mod:`.options`)."""

from sma.config.choices import CRITERIA, LR_SCHEDULES, METHODS
from sma.config.coerce import (
    ConfigError,
    apply_overrides,
    from_dict,
    get_key,
    load_config,
    override,
    save_config,
    to_dict,
)
from sma.config.search import SEARCHED, SearchConfig, Searched, SearchSpace, params_of, sample, with_params
from sma.config.sections import (
    AnalysisConfig,
    BenchConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
    PruneConfig,
    RunConfig,
    TrainConfig,
    check_device_name,
)

__all__ = [
    "CRITERIA", "LR_SCHEDULES", "METHODS", "SEARCHED", "AnalysisConfig", "BenchConfig", "ConfigError",
    "DataConfig", "DistillConfig", "EvalConfig", "ModelConfig", "PruneConfig", "RunConfig", "SearchConfig",
    "SearchSpace", "Searched", "TrainConfig", "apply_overrides", "check_device_name", "from_dict", "get_key",
    "load_config", "override", "params_of", "sample", "save_config", "to_dict", "with_params",
]
