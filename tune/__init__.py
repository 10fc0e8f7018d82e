"""Distributed hyperparameter search for SMA: Ray Tune + Ray Train workers, Optuna studies, MLflow runs.

``sma tune --config search.yaml`` runs :func:`tune.search.search`; see ``cluster/README.md``.
"""

from tune.config import SearchConfig, SearchSpace, load_search_config
from tune.search import search
from tune.studies import study_name

__all__ = ["SearchConfig", "SearchSpace", "load_search_config", "search", "study_name"]
