"""What an ablation varies: the one table of the method's choices and their alternative levels, and the
ablation config (a reference recipe plus how to run its cells).

The default design is one factor at a time: the reference recipe, then each factor's alternatives with
everything else at the reference. ``factorial`` crosses every level of every factor. Each cell runs at every
sparsity of ``run.sparsity`` with ``seeds`` seeds (``run.seed``, ``run.seed + 1``, ...), on each collection of
``datasets``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from sma.config.coerce import apply_overrides, get_key
from sma.config.sections import RunConfig, check, check_at_least
from sma.data import collection_name


@dataclass(frozen=True)
class Factor:
    name: str
    key: str
    """Dotted :class:`~sma.config.RunConfig` key the factor sets."""
    levels: tuple[Any, ...]
    """Alternatives to the reference recipe's value."""
    label: str


FACTORS: tuple[Factor, ...] = (
    # attribution (the mechanistic scores, unprotected) is the protect_circuits=False cell: not a level here
    Factor("criterion", "prune.criterion", ("magnitude", "random"), "how units are chosen"),
    Factor("distill", "distill.alpha", (0.0,), "distillation off (alpha 0: task loss only)"),
    Factor("protect_circuits", "prune.protect_circuits", (False,), "circuit protection off"),
    Factor("gentleness", "prune.gentleness", (0.0,), "one-shot pruning instead of the schedule"),
    Factor("post_prune_epochs", "distill.post_prune_epochs", (0,), "no recovery epochs after the last step"),
    # what may not transfer from one collection to another (cluster/generalization.yaml)
    Factor("distill_length", "distill.max_length", (128, 256),
           "distillation texts cut at 128 or 256 tokens whatever the documents' lengths"),
    Factor("pseudo_queries", "distill.pseudo_queries", (0, 1),
           "no pseudo-queries / a pseudo-query per document among the texts (default: by training queries)"),
    Factor("neighbors", "distill.neighbor_share", (0.0,), "random distillation batches (no teacher neighbours)"),
    Factor("probe_pseudo_queries", "analysis.probe_pseudo_queries", (True,),
           "probe topped up with pseudo-queries when judged ones are few"),
    Factor("few_labels", "data.train_queries", (25,),
           "25 judged training queries (a seeded share; dev, test and corpus untouched)"),
    # what recovery extreme sparsity needs (cluster/frontier.yaml)
    Factor("whole_layers", "prune.whole_layers", (2,), "up to two whole layers emptied first (depth)"),
    Factor("long_recovery", "distill.post_prune_epochs", (16,), "twice the recovery epochs"),
    Factor("layer_distill", "distill.hidden_weight", (1.0,), "every layer's token states distilled too"),
    # shapes the matrix kernels like: each layer's FFN neurons at the nearest multiple of 64, not the exact target
    Factor("neuron_multiple", "prune.neuron_multiple", (64,), "FFN neurons rounded to multiples of 64"),
    # what makes a run cheaper at the same recipe
    Factor("bfloat16", "distill.precision", ("bfloat16",), "distillation passes in bfloat16 autocast"),
    Factor("frozen_embeddings", "distill.freeze_word_embeddings", (True,),
           "the word embedding table kept at the teacher's (no gradient, no AdamW update)"),
)
FACTORS_BY_NAME = {f.name: f for f in FACTORS}


def param_name(key: str) -> str:
    """The MLflow param a factor's value is logged as: its key's last part (``distill.max_length`` ->
    ``max_length``)."""
    return key.rsplit(".", 1)[-1]


RECIPE_PARAMS = tuple(dict.fromkeys(param_name(f.key) for f in FACTORS))
"""Params that, with the searched hyperparameters, tell two result runs' recipes apart (the seed aside)."""


def recipe_params(run: RunConfig) -> dict[str, Any]:
    """Every factor's value in ``run``, by :func:`param_name`: logged with each result run."""
    return {param_name(f.key): get_key(run, f.key) for f in FACTORS}


REFERENCE = "reference"


@dataclass(frozen=True)
class Cell:
    """One configuration of the design: its name (``reference`` or ``factor=value,...``) and overrides."""

    name: str
    overrides: tuple[tuple[str, Any], ...]

    def config(self, run: RunConfig, *, sparsity: float, seed: int) -> RunConfig:
        return apply_overrides(run, {**dict(self.overrides), "sparsity": (sparsity,), "seed": seed})


def _name(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items()) or REFERENCE


def cells(run: RunConfig, factors: tuple[str, ...], *, factorial: bool) -> list[Cell]:
    """The design's cells; levels equal to the reference recipe's value are skipped."""
    chosen = [FACTORS_BY_NAME[n] for n in factors]
    alternatives = {f.name: [v for v in f.levels if v != get_key(run, f.key)] for f in chosen}
    out = [Cell(REFERENCE, ())]
    if factorial:
        grid = [[None, *alternatives[f.name]] for f in chosen]
        for combo in itertools.product(*grid):
            values = {f.name: v for f, v in zip(chosen, combo, strict=True) if v is not None}
            if values:
                out.append(Cell(_name(values), tuple((FACTORS_BY_NAME[k].key, v) for k, v in values.items())))
        return out
    for f in chosen:
        out += [Cell(_name({f.name: v}), ((f.key, v),)) for v in alternatives[f.name]]
    return out


@dataclass(frozen=True)
class AblationConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """The reference recipe; ``run.experiment`` names the ablation, ``run.sparsity`` its sparsities."""
    factors: tuple[str, ...] = tuple(f.name for f in FACTORS)
    factorial: bool = False
    datasets: tuple[str, ...] = ()
    """Collections every cell runs on (each as ``run.data.dataset``); empty = ``run.data.dataset`` only. The
    report keeps them apart: a results row, a Pareto front and paired tests per collection."""
    seeds: int = 3
    max_concurrent_trials: int | None = None
    storage_path: str | None = None
    """Ray results; ``None`` = ``<results>/<experiment>/ablate/ray``."""
    max_failures: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.factors) - set(FACTORS_BY_NAME))
        check(not unknown, "factors", f"unknown factor(s) {unknown}; choose from {', '.join(FACTORS_BY_NAME)}")
        check_at_least(self, 1, "", "seeds", "max_concurrent_trials")
        check_at_least(self, 0, "", "max_failures")
        check(bool(self.run.sparsity), "run.sparsity", "must list at least one sparsity")
        names = [collection_name(d) for d in self.datasets]
        check(all(names) and len(set(names)) == len(names), "datasets",
              f"need distinct collection names (the last part of each), got {list(self.datasets)}")

    def cells(self) -> list[Cell]:
        return cells(self.run, self.factors, factorial=self.factorial)

    def dataset_list(self) -> tuple[str, ...]:
        return self.datasets or (self.run.data.dataset,)

    def seed_list(self) -> list[int]:
        return [self.run.seed + i for i in range(self.seeds)]
