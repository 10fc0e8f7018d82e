"""The search configuration: a nested :class:`~sma.config.RunConfig` plus how to search it.

Loadable from YAML/JSON with :func:`load_search_config`; unknown keys are errors (``sma.config.from_dict``).
Example (``cluster/search.yaml``)::

    trials_per_study: 20
    space: {alpha: [0.0, 1.0], gentleness: [0.0, 1.0], post_prune_epochs: [0, 8]}
    num_workers: 1
    gpus_per_worker: 1
    run: {experiment: nfcorpus-search, sparsity: [0.3, 0.5, 0.7], data: {dataset: nfcorpus}}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sma.config import ConfigError, RunConfig, load_config

SCHEDULERS = ("none", "asha")

# Searched name -> the RunConfig key it sets in every trial.
SEARCHED_KEYS = {
    "alpha": "distill.alpha",
    "gentleness": "prune.gentleness",
    "post_prune_epochs": "distill.post_prune_epochs",
}


@dataclass(frozen=True)
class SearchSpace:
    """Inclusive bounds of the searched hyperparameters (same space for every sparsity)."""

    alpha: tuple[float, ...] = (0.0, 1.0)
    """Distillation weight: 1 = pure distillation from the dense teacher, 0 = task loss only."""
    gentleness: tuple[float, ...] = (0.0, 1.0)
    """Schedule gentleness: 0 = one-shot pruning, 1 = the most gradual schedule."""
    post_prune_epochs: tuple[int, ...] = (0, 8)
    """Distillation epochs after the last pruning step: an integer in [low, high]."""

    def bounds(self) -> dict[str, tuple[float, float]]:
        return {name: (getattr(self, name)[0], getattr(self, name)[1]) for name in SEARCHED_KEYS}


@dataclass(frozen=True)
class SearchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """The pipeline every trial runs; ``run.experiment`` names the search, ``run.sparsity`` its studies."""
    space: SearchSpace = field(default_factory=SearchSpace)
    trials_per_study: int = 20
    """Finished trials (COMPLETE or FAIL) each study ends with; interrupted ones are retried."""
    sampler_seed: int | None = None
    """Seed of Optuna's TPE sampler; ``None`` uses ``run.seed``."""
    num_workers: int = 1
    """Ray Train workers per trial (DDP over them when > 1)."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int | None = None
    """``None``: as many as the cluster's CPUs and GPUs hold at once."""
    scheduler: str = "none"
    """``none`` or ``asha`` (stops trials early on per-epoch dev retention)."""
    asha_grace_period: int = 1
    """ASHA: reports (epochs) a trial runs before it can be stopped."""
    optuna_storage: str | None = None
    """SQLAlchemy URL of the Optuna storage; ``None`` = ``sqlite:///<results>/<experiment>/tune/optuna.db``."""
    storage_path: str | None = None
    """Ray results (local folder or cloud URI such as ``s3://bucket/sma``); ``None`` = ``<results>/<experiment>/tune/ray``."""
    mlflow_tracking_uri: str | None = None
    """``None`` = ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<results>/mlflow.db``."""
    max_failures: int = 0
    """Ray Tune retries of a failing trial before it counts as failed."""
    fail_on_trial: int | None = None
    """Test hook: the trial with this Optuna number raises inside its Ray Train worker."""

    def __post_init__(self) -> None:
        if self.trials_per_study < 1:
            raise ConfigError("trials_per_study must be at least 1")
        if self.num_workers < 1:
            raise ConfigError("num_workers must be at least 1")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError("max_concurrent_trials must be at least 1 (or null for automatic)")
        for name, (low, high) in self.space.bounds().items():
            if len(getattr(self.space, name)) != 2 or low > high:
                raise ConfigError(f"space.{name} must be [low, high] with low <= high")
        if not (0.0 <= self.space.alpha[0] and self.space.alpha[1] <= 1.0):
            raise ConfigError("space.alpha must lie in [0, 1]")
        if not (0.0 <= self.space.gentleness[0] and self.space.gentleness[1] <= 1.0):
            raise ConfigError("space.gentleness must lie in [0, 1]")
        if self.space.post_prune_epochs[0] < 0:
            raise ConfigError("space.post_prune_epochs must be >= 0")
        if not self.run.sparsity:
            raise ConfigError("run.sparsity must list at least one sparsity")

    @property
    def experiment(self) -> str:
        return self.run.experiment

    @property
    def tune_dir(self) -> Path:
        """``results/<experiment>/tune``: Optuna DB, default Ray results, the resolved search config."""
        return (Path(self.run.output_dir) / self.run.experiment / "tune").resolve()

    @property
    def seed(self) -> int:
        return self.run.seed if self.sampler_seed is None else self.sampler_seed

    def optuna_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.tune_dir / 'optuna.db'}"

    def ray_storage(self) -> str:
        """Where Ray Tune and Ray Train persist: a URI as given, a local path made absolute."""
        if self.storage_path and "://" in self.storage_path:
            return self.storage_path.rstrip("/")
        return str(Path(self.storage_path).expanduser().resolve()) if self.storage_path else str(self.tune_dir / "ray")


def load_search_config(path: str | Path) -> SearchConfig:
    return load_config(path, SearchConfig)


def replace_run(cfg: SearchConfig, run: RunConfig) -> SearchConfig:
    return dataclasses.replace(cfg, run=run)
