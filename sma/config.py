"""Frozen configuration dataclasses, loadable from JSON/YAML and overridable by dotted keys.

Every section is one frozen dataclass. ``RunConfig`` nests them. Unknown keys are errors everywhere:
in files, in ``--set section.key=value`` overrides and in ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
"""Accepted ``RunConfig.device`` / ``BenchConfig.device`` names (resolved by :func:`sma.device.resolve_device`)."""


def check_device_name(name: str, *, key: str = "device") -> None:
    """Raise ``ValueError`` unless ``name`` is a device name SMA can resolve."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"{key} must be auto, cpu, mps, cuda or cuda:N, got {name!r}")


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cranfield"
    """A BEIR folder path, a folder name under ``$SMA_DATA_DIR``, or a BEIR name on the HF hub."""
    max_samples: int | None = None
    """Seeded subset: at most this many queries per split, all their judged docs plus sampled others."""
    distractor_ratio: float = 4.0
    """With ``max_samples``: unjudged documents kept per judged document (seeded sample)."""
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "sentence-transformers/all-MiniLM-L6-v2"
    """HF hub name or local directory of a BERT-family encoder."""
    pooling: str = "mean"
    """``mean`` (masked mean over tokens) or ``cls``."""
    query_max_length: int = 64
    doc_max_length: int = 256
    normalize: bool = True
    """Cosine similarity (L2-normalised embeddings) when true, dot product otherwise."""


@dataclass(frozen=True)
class TrainConfig:
    """Baseline contrastive fine-tuning (the seed's ``baseline_*`` knobs)."""

    baseline_epochs: int = 0
    """0 keeps the pretrained encoder as it is."""
    baseline_batches_per_epoch: int | None = None
    """Cap on optimizer batches per epoch; ``None`` uses every training pair once."""
    batch_size: int = 32
    gradient_accumulation: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    temperature: float = 0.05
    hard_negatives: str = "none"
    """``none`` (in-batch negatives only), ``bm25`` or ``dense``: one mined negative per pair."""
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64
    metrics: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100", "AP")
    """ir-measures names; ``RR@10`` is MRR@10 and ``AP`` is MAP."""
    show_progress: bool = True


METHODS = ("ablation", "attribution", "magnitude", "random")
"""Importance methods, mechanistic first; ``magnitude`` is the baseline and ``random`` the control."""


@dataclass(frozen=True)
class AnalysisConfig:
    probe_splits: tuple[str, ...] = ("train",)
    """Splits the probe queries come from: training queries only by default, so that dev stays an unbiased
    estimate for choosing hyperparameters (the units kept are chosen on the probe). Never the test split."""
    probe_queries: int = 125
    """Probe queries sampled (seeded) from ``probe_splits``; fewer if the splits hold fewer."""
    positives_per_query: int = 4
    """Relevant documents kept per probe query (most relevant first, seeded among ties)."""
    negatives_per_query: int = 4
    """Hard negatives per probe query: top-ranked unjudged documents of ``negative_source``."""
    negative_source: str = "bm25"
    """``bm25`` (the ``bm25s`` library over the whole corpus) or ``dense`` (the analysed model)."""
    methods: tuple[str, ...] = METHODS
    ablation: str = "mean"
    """``mean`` (replace a unit's activation by its mean over the probe tokens) or ``zero``."""
    ablation_queries: int = 32
    """Probe queries (the first ones of the seeded probe) used by the one-unit-at-a-time ablations."""
    neuron_group_size: int = 128
    """Neurons ablated together by the ablation method (1 = one by one)."""
    attribution_steps: int = 4
    """Attribution rounds: after each round the least important units up to ``attribution_sparsity``
    (spread evenly over the rounds) are ablated and the rest re-scored. 1 = a single backward pass."""
    attribution_sparsity: float = 0.5
    """Share of each layer's heads and neurons ablated by the last attribution round."""
    circuit_share: float = 0.9
    """A circuit keeps this share of the probe objective's margin over the fully ablated model."""
    temperature: float = 0.05
    query_max_length: int = 64
    doc_max_length: int = 128
    batch_size: int = 32
    seed: int = 42

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"unknown analysis method(s) {unknown}; choose from {', '.join(METHODS)}")
        if self.ablation not in ("mean", "zero"):
            raise ValueError(f"ablation must be 'mean' or 'zero', got {self.ablation!r}")
        if self.negative_source not in ("bm25", "dense"):
            raise ValueError(f"negative_source must be 'bm25' or 'dense', got {self.negative_source!r}")
        if "test" in self.probe_splits:
            raise ValueError("the probe must not use the test split")
        if not 0.0 < self.circuit_share <= 1.0:
            raise ValueError(f"circuit_share must be in (0, 1], got {self.circuit_share}")
        if not 0.0 <= self.attribution_sparsity < 1.0:
            raise ValueError(f"attribution_sparsity must be in [0, 1), got {self.attribution_sparsity}")
        for name in ("probe_queries", "positives_per_query", "ablation_queries", "neuron_group_size",
                     "attribution_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True)
class PruneConfig:
    """Which units go (criterion, circuits) and how gradually (gentleness -> schedule)."""

    criterion: str = "mechanistic"
    """``mechanistic`` (causal ablation + attribution, circuits protected), ``attribution``, ``ablation``,
    ``magnitude`` (non-mechanistic baseline) or ``random`` (control)."""
    gentleness: float = 0.5
    """0 = one shot; 1 = ``max_steps`` steps on a cubic schedule (see :mod:`sma.schedule`)."""
    max_steps: int = 4
    step_epochs: float = 1.0
    """Distillation epochs between two pruning steps."""
    protect_circuits: bool = True
    allocation: str = "per_layer"
    """``per_layer`` (every layer loses the target share; uniform shapes) or ``global``."""
    split: str = "proportional"
    """``proportional`` (each layer loses the target share of its heads, rounded to whole heads, and of its
    neurons) or ``joint`` (heads and neurons compete by score per parameter; on MiniLM this strips heads
    first: 6 of 12 heads gone at 30% sparsity, 95.5% vs 97.2% test retention there, one seed)."""
    min_heads_per_layer: int = 0
    reestimate: bool = False
    """Re-score importance (attribution) on the pruned student before each later step."""


LR_SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class DistillConfig:
    """Recovery after pruning: loss = alpha * KD(teacher) + (1 - alpha) * contrastive task loss."""

    alpha: float = 1.0
    """1 = pure label-free distillation; 0 = task loss only (``--no-distill``)."""
    post_prune_epochs: int = 8
    """Distillation epochs after the last pruning step. Recovery is far from saturated at 3: 8 gained most at
    high sparsity (the README's measurements); each epoch costs one pass over the distillation texts."""
    temperature: float = 0.05
    learning_rate: float = 1e-4
    lr_schedule: str = "linear"
    """``linear`` (warm up, then decay to zero by the end of each distillation phase) or ``constant``."""
    warmup_ratio: float = 0.1
    """Share of each distillation phase's steps spent warming the learning rate up from zero."""
    batch_size: int = 32
    max_length: int = 128
    train_queries: bool = True
    """Add the training queries to the unlabeled distillation texts (documents are always used)."""
    max_texts: int | None = None
    """Seeded subset of that many distillation texts (documents, training queries and pseudo-queries drawn
    together); ``None`` = all. Bounds the cost of an epoch on a large corpus; the quick test uses it."""
    pseudo_queries: int = 0
    """Random word spans cut from each document and added as short, query-like texts (no labels used)."""
    pseudo_query_words: tuple[int, int] = (6, 20)
    """Length range (words) of those spans."""
    neighbor_share: float = 0.5
    """Share of each batch made of groups of a text and its nearest texts by teacher embedding (the rest
    random): the in-batch KL then ranks hard neighbours as the teacher does. 0 = random batches."""
    neighbors: int = 7
    """Texts per group besides the anchor, drawn from its ``2 * neighbors`` nearest."""
    hidden_weight: float = 0.0
    """Weight of layer-wise distillation inside KD: every layer's token states pulled to the dense teacher's
    (mean squared error per hidden unit). 0 = off; costs a teacher forward per batch."""
    eval_every_epoch: bool = False
    """Evaluate dev retention after every post-prune epoch (for schedulers); costs a corpus encoding each."""

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.neighbor_share <= 1.0 or self.neighbors < 1:
            raise ValueError(f"need 0 <= neighbor_share <= 1 and neighbors >= 1, got {self.neighbor_share}, "
                             f"{self.neighbors}")
        if self.hidden_weight < 0:
            raise ValueError(f"hidden_weight must be >= 0, got {self.hidden_weight}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.max_texts is not None and self.max_texts < 1:
            raise ValueError(f"max_texts must be at least 1 (or null for all), got {self.max_texts}")
        lo, hi = self.pseudo_query_words
        if self.pseudo_queries < 0 or not 1 <= lo <= hi:
            raise ValueError(f"need pseudo_queries >= 0 and 1 <= pseudo_query_words[0] <= [1], got "
                             f"{self.pseudo_queries}, {self.pseudo_query_words}")


@dataclass(frozen=True)
class BenchConfig:
    enabled: bool = True
    seq_len: int = 256
    batch_size: int = 32
    repeats: int = 5
    threads: int = 2
    device: str = "cpu"
    """Where dense and pruned are timed side by side: ``cpu`` (with ``threads``; the speedups the README
    reports) or an accelerator (``auto``, ``cuda``, ...), independent of the device the run trains on."""

    def __post_init__(self) -> None:
        check_device_name(self.device, key="bench.device")


@dataclass(frozen=True)
class RunConfig:
    experiment: str = "default"
    output_dir: str = "results"
    seed: int = 42
    deterministic: bool = False
    quick_test: bool = False
    sparsity: tuple[float, ...] = (0.3, 0.5, 0.7)
    device: str = "auto"
    """``auto`` (the CUDA device when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    Under Ray Train, ``auto`` is the device Ray assigned to the worker."""
    threads: int | None = None
    cache_dir: str | None = None
    """Where baselines and analyses are cached by content hash; default ``$SMA_CACHE_DIR`` or ~/.cache/sma."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self) -> None:
        check_device_name(self.device)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from JSON, YAML or a CLI string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: cannot read {value!r} as {tp}: {'; '.join(errors)}")
    if _is_dataclass_type(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip().strip("[]()").replace(",", " ").split() if v]  # "0.3,0.5", "[0.3 0.5]", "[]"
        if not isinstance(value, (list, tuple)):
            value = [value]
        if args and args[-1] is not Ellipsis:  # fixed length, e.g. tuple[int, int]
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build ``cls`` from a (nested) mapping; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys in {prefix or 'the top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready nested dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def override(cfg: T, key: str, value: Any) -> T:
    """Return ``cfg`` with the dotted ``key`` set to ``value`` (coerced to the field's type)."""
    head, _, rest = key.partition(".")
    hints = typing.get_type_hints(type(cfg))
    if head not in hints:
        names = ", ".join(sorted(f.name for f in dataclasses.fields(cfg)))
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {names}")
    if rest:
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{head} is not a section; cannot set {key!r}")
        return dataclasses.replace(cfg, **{head: override(child, rest, value)})
    return dataclasses.replace(cfg, **{head: _coerce(value, hints[head], key)})


def apply_overrides(cfg: T, overrides: dict[str, Any]) -> T:
    for key, value in overrides.items():
        cfg = override(cfg, key, value)
    return cfg


def load_config(path: str | Path, cls: type[T] = RunConfig) -> T:  # type: ignore[assignment]
    """Load a JSON or YAML config file; missing keys keep their defaults."""
    path = Path(path)
    text = path.read_text()
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
