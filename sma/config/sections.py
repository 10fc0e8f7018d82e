"""The run configuration: one frozen dataclass per section, nested in :class:`RunConfig`.

Every section checks its own values on construction (a bad value fails before any work, with a
:class:`ConfigError` naming the key); closed sets of values come from :mod:`sma.config.choices`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from sma.config.choices import (
    ABLATIONS,
    ALLOCATIONS,
    CPU_RUNTIMES,
    CRITERIA,
    DEVICE_PATTERN,
    DTYPES,
    HARD_NEGATIVES,
    INT8_ACTIVATIONS,
    INT8_ENGINES,
    INT8_RUNTIMES,
    LR_SCHEDULES,
    METHODS,
    NEGATIVE_SOURCES,
    POOLINGS,
    PRECISIONS,
    SPLITS,
)
from sma.config.coerce import ConfigError


def check(ok: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` ``"<key>: <message>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def check_choice(value: Any, choices: Iterable[Any], key: str) -> None:
    choices = tuple(choices)
    check(value in choices, key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_at_least(section: Any, low: float, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value is not None:
            check(value >= low, prefix + name, f"must be at least {low}, got {value}")


def check_device_name(name: str, *, key: str = "device") -> None:
    check(bool(DEVICE_PATTERN.fullmatch(name)), key, f"must be auto, cpu, mps, cuda or cuda:N, got {name!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cranfield"
    """A BEIR folder path, a folder name under ``$SMA_DATA_DIR``, an embedded collection, or a BEIR name on
    the HF hub."""
    max_samples: int | None = None
    """Seeded subset: at most this many queries per split, all their judged docs plus sampled others."""
    distractor_ratio: float = 4.0
    """With ``max_samples``: unjudged documents kept per judged document (seeded sample)."""
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    train_queries: int | None = None
    """Seeded subset of that many judged queries of ``train_split`` (drawn with the run's seed; dev, test and the
    corpus untouched): how a recipe holds on a collection with few labelled queries. ``None`` = all."""

    def __post_init__(self) -> None:
        check(bool(self.dataset.strip()), "data.dataset", "must not be empty")
        check_at_least(self, 1, "data.", "max_samples", "train_queries")
        check_at_least(self, 0, "data.", "distractor_ratio")
        check(self.dev_split != self.test_split, "data.dev_split",
              f"must differ from data.test_split ({self.test_split!r}): configurations chosen on the test split "
              f"make its numbers optimistic")


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

    def __post_init__(self) -> None:
        check_choice(self.pooling, POOLINGS, "model.pooling")
        check_at_least(self, 1, "model.", "query_max_length", "doc_max_length")


@dataclass(frozen=True)
class TrainConfig:
    """Optional contrastive fine-tuning of the dense teacher before anything is pruned."""

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

    def __post_init__(self) -> None:
        check_at_least(self, 0, "train.", "baseline_epochs", "weight_decay")
        check_at_least(self, 1, "train.", "baseline_batches_per_epoch", "batch_size", "gradient_accumulation")
        check(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.temperature > 0, "train.temperature", f"must be > 0, got {self.temperature}")
        check(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check_choice(self.hard_negatives, HARD_NEGATIVES, "train.hard_negatives")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64
    metrics: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100", "AP")
    """ir-measures names; ``RR@10`` is MRR@10 and ``AP`` is MAP. nDCG@10 is required (retention)."""
    show_progress: bool = True

    def __post_init__(self) -> None:
        check_at_least(self, 1, "eval.", "batch_size")
        check("nDCG@10" in self.metrics, "eval.metrics", f"must include nDCG@10, got {list(self.metrics)}")


PSEUDO_QUERY_WORDS = (6, 20)
"""Length range (words) of a pseudo-query: a span cut from a document (see :func:`sma.distill.pseudo_queries`)."""


@dataclass(frozen=True)
class AnalysisConfig:
    """The mechanistic analysis of the dense teacher (unit importance and circuits)."""

    probe_splits: tuple[str, ...] = ("train",)
    """Splits the probe queries come from: training queries only by default, so that dev stays an unbiased
    estimate for choosing hyperparameters (the units kept are chosen on the probe). Never the test split."""
    probe_queries: int = 125
    """Probe queries sampled (seeded) from ``probe_splits``; fewer if the splits hold fewer."""
    probe_pseudo_queries: bool = False
    """When ``probe_splits`` hold fewer judged queries than ``probe_queries``, top the probe up with label-free
    pseudo-queries: a span of ``PSEUDO_QUERY_WORDS`` words cut from a seeded random document, that document its
    one positive (cacm: 20 training queries + 105 pseudo-queries)."""
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
        check(not unknown and bool(self.methods), "analysis.methods",
              f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        check_choice(self.ablation, ABLATIONS, "analysis.ablation")
        check_choice(self.negative_source, NEGATIVE_SOURCES, "analysis.negative_source")
        check("test" not in self.probe_splits, "analysis.probe_splits", "the probe must not use the test split")
        check(0.0 < self.circuit_share <= 1.0, "analysis.circuit_share",
              f"must be in (0, 1], got {self.circuit_share}")
        check(0.0 <= self.attribution_sparsity < 1.0, "analysis.attribution_sparsity",
              f"must be in [0, 1), got {self.attribution_sparsity}")
        check_at_least(self, 1, "analysis.", "probe_queries", "positives_per_query", "ablation_queries",
                       "neuron_group_size", "attribution_steps", "batch_size", "query_max_length",
                       "doc_max_length")
        check_at_least(self, 0, "analysis.", "negatives_per_query")


@dataclass(frozen=True)
class PruneConfig:
    """Which units go (criterion, circuits) and how gradually (gentleness -> schedule)."""

    criterion: str = "mechanistic"
    """``mechanistic`` (attribution scores, their circuit protected), ``attribution``, ``ablation``,
    ``magnitude`` (non-mechanistic comparison) or ``random`` (control)."""
    gentleness: float = 0.5
    """0 = one shot; 1 = ``max_steps`` steps on a cubic schedule (see :mod:`sma.schedule`)."""
    max_steps: int = 4
    step_epochs: float = 1.0
    """Distillation epochs between two pruning steps."""
    protect_circuits: bool = True
    """Keep the named circuit's units (criterion ``mechanistic`` only: the other criteria are its scores without
    protection, or the comparisons)."""
    allocation: str = "per_layer"
    """``per_layer`` (every layer loses the target share; uniform shapes) or ``global``."""
    split: str = "proportional"
    """``proportional`` (each layer loses the target share of its heads, rounded to whole heads, and of its
    neurons) or ``joint`` (heads and neurons compete by score per parameter; on MiniLM this strips heads
    first: 6 of 12 heads gone at 30 % sparsity)."""
    min_heads_per_layer: int = 0
    neuron_multiple: int = 1
    """Each layer keeps a multiple of this many FFN neurons (the nearest; halved until 16 of it fit in the
    layer, :func:`sma.prune.plan.layer_multiple`), so the sparsity lands near the target, not on it: matrix
    kernels run faster on such widths (64: CPU float32 and GPU bfloat16). 1 = exactly the target."""
    whole_layers: int = 0
    """Depth: empty up to this many whole layers first (every head and neuron; least important layer by total
    score per parameter first, circuit-holding layers last), as many as each step's target holds; the other
    layers share the rest of the target. 0 = width only."""

    def __post_init__(self) -> None:
        check_choice(self.criterion, CRITERIA, "prune.criterion")
        check_choice(self.allocation, ALLOCATIONS, "prune.allocation")
        check_choice(self.split, SPLITS, "prune.split")
        check(0.0 <= self.gentleness <= 1.0, "prune.gentleness", f"must be in [0, 1], got {self.gentleness}")
        check_at_least(self, 1, "prune.", "max_steps", "neuron_multiple")
        check_at_least(self, 0, "prune.", "step_epochs", "min_heads_per_layer", "whole_layers")
        check(not (self.whole_layers and self.min_heads_per_layer), "prune.whole_layers",
              f"empties layers, which prune.min_heads_per_layer={self.min_heads_per_layer} forbids")

    @property
    def protects_circuit(self) -> bool:
        """Whether the plan keeps the circuit: the ``mechanistic`` criterion with ``protect_circuits``."""
        return self.criterion == "mechanistic" and self.protect_circuits


@dataclass(frozen=True)
class DistillConfig:
    """Recovery after pruning: loss = alpha * KD(teacher) + (1 - alpha) * contrastive task loss."""

    alpha: float = 1.0
    """1 = pure label-free distillation; 0 = task loss only (``--no-distill``)."""
    post_prune_epochs: int = 8
    """Distillation epochs after the last pruning step; each costs one pass over the distillation texts."""
    temperature: float = 0.05
    learning_rate: float = 1e-4
    lr_schedule: str = "linear"
    """``linear`` (warm up, then decay to zero by the end of each distillation phase) or ``constant``."""
    warmup_ratio: float = 0.1
    """Share of each distillation phase's steps spent warming the learning rate up from zero."""
    batch_size: int = 32
    gradient_accumulation: int = 1
    """Batches whose gradients are summed before each optimizer step (effective batch = ``batch_size`` x this)."""
    max_length: int | None = None
    """Tokens each distillation text is cut at. ``None`` = derived from the collection
    (:func:`sma.collection_profile.derived_distill_length`): the evaluation length ``model.doc_max_length`` where
    most documents are longer than 128 tokens, so that the student learns the same document the teacher embeds
    at evaluation; else 128."""
    precision: str = "float32"
    """``bfloat16`` runs the student's forward and backward passes of every distillation batch (pruning steps
    and recovery) under ``torch.autocast`` in bfloat16: matrix products in bfloat16, while weights, gradients,
    optimizer state, the losses and every evaluation stay float32. About twice as fast on CPUs with native
    bfloat16 (AVX512-BF16, AMX) and on recent GPUs; slower on CPUs without it (a run warns). ``auto`` is
    ``bfloat16`` where the device runs it natively and ``float32`` elsewhere (:func:`sma.model.resolve_precision`;
    ``sma run --fast`` sets it)."""
    freeze_word_embeddings: bool = False
    """Keep the student's token embedding table (never pruned) at the teacher's values: its dense gradient,
    clipping and AdamW update are a sixth to a quarter of a bfloat16 distillation step on short texts, at a little
    agreement with the teacher (:func:`sma.distill.freeze_word_embeddings`)."""
    train_queries: bool = True
    """Add the training queries to the unlabeled distillation texts (documents are always used)."""
    max_texts: int | None = None
    """Seeded subset of that many distillation texts (documents, training queries and pseudo-queries drawn
    together); ``None`` = all. Bounds the cost of an epoch on a large corpus; the quick test uses it."""
    pseudo_queries: int | None = None
    """Random word spans cut from each document and added as short, query-like texts (no labels used), per
    document. ``None`` = derived from the collection (:func:`sma.collection_profile.derived_pseudo_queries`):
    one per document when the training split has fewer than 50 judged queries, so that
    label-free query-like texts carry the query side of recovery where labelled queries are few; none otherwise."""
    pseudo_query_words: tuple[int, int] = PSEUDO_QUERY_WORDS
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
        check(0.0 <= self.alpha <= 1.0, "distill.alpha", f"must be in [0, 1], got {self.alpha}")
        check_choice(self.lr_schedule, LR_SCHEDULES, "distill.lr_schedule")
        check_choice(self.precision, PRECISIONS, "distill.precision")
        check(0.0 <= self.warmup_ratio < 1.0, "distill.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(0.0 <= self.neighbor_share <= 1.0, "distill.neighbor_share",
              f"must be in [0, 1], got {self.neighbor_share}")
        check(self.learning_rate > 0, "distill.learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.temperature > 0, "distill.temperature", f"must be > 0, got {self.temperature}")
        check_at_least(self, 0, "distill.", "post_prune_epochs", "hidden_weight", "pseudo_queries")
        check_at_least(self, 1, "distill.", "batch_size", "gradient_accumulation", "max_length", "max_texts",
                       "neighbors")
        lo, hi = self.pseudo_query_words
        check(1 <= lo <= hi, "distill.pseudo_query_words", f"need 1 <= low <= high, got {self.pseudo_query_words}")


@dataclass(frozen=True)
class BenchConfig:
    """Dense vs pruned speed and memory, measured side by side in one process."""

    enabled: bool = True
    seq_len: int = 256
    batch_size: int = 32
    repeats: int = 10
    warmup: int = 2
    threads: int = 2
    device: str = "cpu"
    """Where dense and pruned are timed side by side: ``cpu`` (with ``threads``; the speedups the README
    reports) or an accelerator (``auto``, ``cuda``, ...), independent of the device the run trains on."""
    dtypes: tuple[str, ...] = ()
    """``sma bench`` only: dtypes timed; empty = float32 on CPU, float32 bfloat16 float16 on CUDA; ``int8``
    times the pruned model with int8 linear layers against the dense float32 one (CPU)."""
    int8: bool = False
    """``sma run``: also evaluate and time the pruned model with dynamic int8 linear layers on the CPU
    (metrics ``*_int8``: retention, speedup over the dense float32 model, memory)."""
    neuron_multiples: tuple[int, ...] = ()
    """``sma bench`` only: time the shapes of the plan at each of these ``prune.neuron_multiple`` values side by
    side, in one interleaved loop with the dense model (e.g. ``1 64``: exact target against kernel-friendly
    widths); empty = ``prune.neuron_multiple`` alone."""
    int8_float_layers: int = 0
    """``sma run`` with ``int8``, ``sma bench`` with the ``int8`` or ``onnx-int8`` dtype (each timed with and
    without them): linear layers the int8 model keeps in
    float32, those whose int8 copy alone moves the embeddings of 128 sample documents of ``data.dataset`` furthest
    (:func:`sma.quantize.plan_int8`; no labels). 0 = all int8."""
    int8_activations: str = "auto"
    """PyTorch int8 linear layers quantize their input per batch to ``full`` 8 bits or PyTorch's ``reduced``
    7 bits; ``auto`` = full on CPUs with VNNI int8 instructions, reduced elsewhere (``INT8_ACTIVATIONS``)."""
    int8_engine: str = "auto"
    """PyTorch's quantized engine that packs the int8 layers' weights (``INT8_ENGINES``): ``auto`` = ``onednn``
    on CPUs with AMX int8 or AVX512-VNNI, PyTorch's default engine elsewhere."""
    int8_runtime: str = "pytorch"
    """``sma run`` / ``sma evaluate`` with ``int8``: the int8 copy evaluated and timed, PyTorch's int8 linear
    layers or the ONNX model in ONNX Runtime with int8 matrix multiplications (``INT8_RUNTIMES``); the same
    ``int8_float_layers`` stay float32 in either."""

    def __post_init__(self) -> None:
        check_device_name(self.device, key="bench.device")
        check_at_least(self, 1, "bench.", "seq_len", "batch_size", "repeats", "threads")
        check_at_least(self, 0, "bench.", "warmup", "int8_float_layers")
        for multiple in self.neuron_multiples:
            check(multiple >= 1, "bench.neuron_multiples", f"must be at least 1 each, got {multiple}")
        check(len(set(self.neuron_multiples)) == len(self.neuron_multiples), "bench.neuron_multiples",
              f"lists a value twice: {list(self.neuron_multiples)}")
        for dtype in self.dtypes:
            check_choice(dtype, DTYPES, "bench.dtypes")
        check_choice(self.int8_activations, INT8_ACTIVATIONS, "bench.int8_activations")
        check_choice(self.int8_engine, INT8_ENGINES, "bench.int8_engine")
        check_choice(self.int8_runtime, INT8_RUNTIMES, "bench.int8_runtime")
        check(self.int8_runtime != "onnxruntime" or find_spec("onnxruntime") is not None, "bench.int8_runtime",
              "onnxruntime is not installed: pip install 'sma[export]'")
        for cpu_only in CPU_RUNTIMES:
            check(cpu_only not in self.dtypes or self.device == "cpu", "bench.dtypes",
                  f"{cpu_only} is timed on the CPU: drop it or set bench.device=cpu (not {self.device!r})")
        check(not self.int8 or self.device == "cpu", "bench.int8",
              f"int8 is timed on the CPU: set bench.device=cpu (not {self.device!r})")


@dataclass(frozen=True)
class WorkersConfig:
    """The Ray Train workers that run one pipeline: a search trial, an ablation cell, or ``sma run`` itself
    when it has more than one worker or any GPU per worker (otherwise ``sma run`` runs in its own process)."""

    num_workers: int = 1
    """DDP over the workers when > 1 (gloo on CPUs, nccl on GPUs)."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        check_at_least(self, 1, "workers.", "num_workers")
        check_at_least(self, 0, "workers.", "cpus_per_worker", "gpus_per_worker")

    @property
    def on_ray(self) -> bool:
        """Whether ``sma run`` goes through Ray Train (a TorchTrainer of these workers)."""
        return self.num_workers > 1 or self.gpus_per_worker > 0


@dataclass(frozen=True)
class RunConfig:
    experiment: str = "default"
    output_dir: str = "results"
    seed: int = 42
    deterministic: bool = False
    sparsity: tuple[float, ...] = (0.3, 0.5, 0.7)
    """Target encoder sparsities, each in (0, 1); empty = evaluate the dense model only."""
    device: str = "auto"
    """``auto`` (the CUDA device when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    Under Ray Train, ``auto`` is the device Ray assigned to the worker."""
    threads: int | None = None
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass of every training phase (teacher fine-tuning
    and recovery): activation memory of one layer instead of all, for about a third more compute. For large
    encoders or long texts on a small GPU; results do not change."""
    cache_dir: str | None = None
    """Where shared work is cached by content hash; default ``$SMA_CACHE_DIR`` or ~/.cache/sma."""
    mlflow_tracking_uri: str | None = None
    """Where runs are logged: ``None`` = ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<output_dir>/mlflow.db``."""
    track: bool = True
    """Log every run to MLflow (``sma run``: a parent run per invocation, a child per sparsity)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)

    def __post_init__(self) -> None:
        check_device_name(self.device)
        check(bool(self.experiment.strip()) and "/" not in self.experiment, "experiment",
              f"must be a non-empty name without '/', got {self.experiment!r}")
        for s in self.sparsity:
            check(0.0 < s < 1.0, "sparsity", f"each value must be in (0, 1), got {s}")
        check(len(set(self.sparsity)) == len(self.sparsity), "sparsity", f"repeats a value: {list(self.sparsity)}")
        check_at_least(self, 1, "", "threads")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment
