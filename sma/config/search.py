"""What a search varies and how it runs: the one table of searched hyperparameters and the search config.

Add a searched hyperparameter by adding a row to :data:`SEARCHED` (and using its config key in the pipeline):
the search space section, its checks, Optuna's sampling, the MLflow params and the trial configs all derive
from the table. Example YAML (``cluster/search.yaml``)::

    trials_per_study: 20
    space: {alpha: [0.0, 1.0], gentleness: [0.0, 1.0], post_prune_epochs: [0, 8]}
    run: {experiment: nfcorpus-search, sparsity: [0.3, 0.5, 0.7], data: {dataset: nfcorpus},
          workers: {num_workers: 1, gpus_per_worker: 1}}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sma.config.choices import SCHEDULERS
from sma.config.coerce import ConfigError, apply_overrides, get_key
from sma.config.sections import RunConfig, check, check_at_least, check_choice


@dataclass(frozen=True)
class Searched:
    """One searched hyperparameter: Optuna samples ``name`` in ``[low, high]`` and sets ``key`` in the trial."""

    name: str
    key: str
    """Dotted :class:`~sma.config.RunConfig` key the sampled value sets (its section checks the range)."""
    kind: type
    """``float`` (uniform) or ``int`` (every integer in the range)."""
    low: float
    high: float
    help: str


SEARCHED: tuple[Searched, ...] = (
    Searched("alpha", "distill.alpha", float, 0.0, 1.0,
             "distillation weight: 1 = pure distillation from the dense teacher, 0 = task loss only"),
    Searched("gentleness", "prune.gentleness", float, 0.0, 1.0,
             "schedule gentleness: 0 = one-shot pruning, 1 = the most gradual schedule"),
    Searched("post_prune_epochs", "distill.post_prune_epochs", int, 0, 8,
             "distillation epochs after the last pruning step"),
)
SEARCHED_BY_NAME = {p.name: p for p in SEARCHED}
SEARCHED_BY_KEY = {p.key: p for p in SEARCHED}


def _space_check(space: Any) -> None:
    for p in SEARCHED:
        low, high = getattr(space, p.name)
        check(low <= high, f"space.{p.name}", f"must be [low, high] with low <= high, got {[low, high]}")
        for bound in (low, high):  # the section that owns the key says what is valid
            try:
                apply_overrides(RunConfig(), {p.key: bound})
            except ConfigError as exc:
                raise ConfigError(f"space.{p.name}: bound {bound} is invalid ({exc})") from None


SearchSpace = dataclasses.make_dataclass(
    "SearchSpace",
    [(p.name, tuple[p.kind, p.kind], field(default=(p.kind(p.low), p.kind(p.high)))) for p in SEARCHED],
    namespace={"__post_init__": _space_check, "__doc__": "Inclusive [low, high] of each searched hyperparameter "
               "(one row of :data:`SEARCHED` each; the same space for every sparsity)."},
    frozen=True,
)
SearchSpace.__module__ = __name__


def space_bounds(space: Any) -> dict[str, tuple[float, float]]:
    return {p.name: tuple(getattr(space, p.name)) for p in SEARCHED}


def sample(space: Any, trial: Any) -> dict[str, float]:
    """Optuna define-by-run sampling of every searched hyperparameter within ``space``."""
    out = {}
    for p in SEARCHED:
        low, high = getattr(space, p.name)
        suggest = trial.suggest_int if p.kind is int else trial.suggest_float
        out[p.name] = suggest(p.name, low, high)
    return out


def with_params(run: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The trial's run config: ``run`` with each searched value set at its config key."""
    return apply_overrides(run, {p.key: params[p.name] for p in SEARCHED})


def params_of(run: RunConfig) -> dict[str, Any]:
    """The searched hyperparameters' values in ``run`` (for MLflow params and reports)."""
    return {p.name: get_key(run, p.key) for p in SEARCHED}


@dataclass(frozen=True)
class SearchConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """The pipeline every trial runs; ``run.experiment`` names the search, ``run.sparsity`` its studies."""
    space: SearchSpace = field(default_factory=SearchSpace)  # type: ignore[valid-type]
    trials_per_study: int = 20
    """Finished trials (COMPLETE or FAIL) each study ends with; interrupted ones are retried."""
    sampler_seed: int | None = None
    """Seed of Optuna's TPE sampler; ``None`` uses ``run.seed``."""
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
    max_failures: int = 0
    """Ray Tune retries of a failing trial before it counts as failed."""
    fail_on_trial: int | None = None
    """Test hook: the trial with this Optuna number raises inside its Ray Train worker."""

    def __post_init__(self) -> None:
        check_at_least(self, 1, "", "trials_per_study", "max_concurrent_trials", "asha_grace_period")
        check_at_least(self, 0, "", "max_failures")
        check_choice(self.scheduler, SCHEDULERS, "scheduler")
        check(bool(self.run.sparsity), "run.sparsity", "must list at least one sparsity")

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
