"""The front door: every ``sma`` command builds its configuration here, in one order.

    defaults < --config FILE < preset (--quick-test / --smoke-test) < flags < --set KEY=VALUE

:data:`FLAGS` maps each command-line flag to the config key(s) it sets and names the commands that offer it;
:data:`PRESETS` holds the small modes. ``sma run``, ``analyze`` and ``bench`` get a
:class:`~sma.config.RunConfig` from :func:`run_config`; ``sma tune`` a :class:`~sma.config.SearchConfig` from
:func:`search_config`. Validation happens on construction, so a bad value fails here, before any work.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from sma.config.ablation import FACTORS_BY_NAME, AblationConfig
from sma.config.choices import (
    ALLOCATIONS,
    CRITERIA,
    DTYPES,
    HARD_NEGATIVES,
    METHODS,
    POOLINGS,
    SCHEDULERS,
    SPLITS,
)
from sma.config.coerce import ConfigError, apply_overrides, get_key, load_config
from sma.config.search import SEARCHED_BY_KEY, SearchConfig
from sma.config.sections import RunConfig

PIPELINE = ("run", "tune", "ablate")
"""Commands that prune (the pipeline's flags)."""
MODELLED = (*PIPELINE, "analyze")
"""Commands that load a model and a collection."""
OUTER = ("tune", "ablate")
"""Commands whose config wraps a run config (``run:``) with settings of their own."""


@dataclass(frozen=True)
class Flag:
    flag: str
    keys: tuple[str, ...]
    """Config keys the flag sets (several: e.g. ``--batch-size`` sets every training phase's batch size)."""
    commands: tuple[str, ...]
    type: Any = str
    help: str = ""
    choices: tuple[str, ...] | None = None
    const: Any = None
    """A switch that sets ``keys`` to this value (``--no-distill`` -> ``distill.alpha = 0``)."""
    nargs: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _f(flag: str, keys: str | tuple[str, ...], commands: tuple[str, ...], **kw: Any) -> Flag:
    return Flag(flag, (keys,) if isinstance(keys, str) else keys, commands, **kw)


FLAGS: tuple[Flag, ...] = (
    _f("--model", "model.name", MODELLED, help="HF hub name or local directory of a BERT-family encoder"),
    _f("--dataset", "data.dataset", (*MODELLED, "evaluate"),
       help="BEIR folder, folder name under $SMA_DATA_DIR, embedded collection (cranfield) or BeIR hub name"),
    _f("--sparsity", "sparsity", (*PIPELINE, "bench"), type=float, nargs="+",
       help="target encoder sparsities in (0, 1), e.g. 0.3 0.5 0.7"),
    _f("--epochs", "train.baseline_epochs", PIPELINE, type=int,
       help="fine-tuning epochs of the dense teacher before pruning (0 = pretrained as is)"),
    _f("--baseline-batches-per-epoch", "train.baseline_batches_per_epoch", PIPELINE, type=int),
    _f("--batch-size", ("train.batch_size", "distill.batch_size"), PIPELINE, type=int,
       help="batch size of every training phase (teacher fine-tuning and recovery)"),
    _f("--gradient-accumulation", ("train.gradient_accumulation", "distill.gradient_accumulation"), PIPELINE,
       type=int, help="batches per optimizer step in every training phase"),
    _f("--hard-negatives", "train.hard_negatives", PIPELINE, choices=HARD_NEGATIVES),
    _f("--pooling", "model.pooling", MODELLED, choices=POOLINGS),
    _f("--seed", "seed", (*MODELLED, "evaluate"), type=int),
    _f("--device", "device", (*MODELLED, "evaluate"), help="auto (CUDA when torch sees it, else CPU), cpu, cuda, cuda:N or mps"),
    _f("--threads", "threads", (*MODELLED, "evaluate"), type=int, help="torch CPU threads"),
    _f("--deterministic", "deterministic", MODELLED, const=True, help="deterministic torch kernels"),
    _f("--gradient-checkpointing", "gradient_checkpointing", PIPELINE, const=True,
       help="recompute activations in the backward pass: less memory for large encoders, more time"),
    _f("--max-samples", "data.max_samples", MODELLED, type=int,
       help="seeded subset of queries per split (and their documents)"),
    _f("--train-queries", "data.train_queries", MODELLED, type=int,
       help="seeded subset of the judged training queries (dev, test and corpus untouched): few labels"),
    _f("--experiment", "experiment", (*MODELLED, "report"), help="results/<experiment>/ and the MLflow experiment name"),
    _f("--output-dir", "output_dir", (*MODELLED, "report", "log"), help="results root (default: results)"),
    _f("--cache-dir", "cache_dir", (*MODELLED, "evaluate"), help="shared-work cache (default: $SMA_CACHE_DIR or ~/.cache/sma)"),
    _f("--mlflow-tracking-uri", "mlflow_tracking_uri", (*PIPELINE, "report", "log"),
       help="where runs are logged (default: $MLFLOW_TRACKING_URI, else sqlite:///<output-dir>/mlflow.db)"),
    _f("--criterion", "prune.criterion", PIPELINE, choices=CRITERIA,
       help="how units are chosen for removal (default: mechanistic)"),
    _f("--gentleness", "prune.gentleness", PIPELINE, type=float, help="0 = one shot, 1 = most gradual schedule"),
    _f("--alpha", "distill.alpha", PIPELINE, type=float,
       help="distillation weight in [0, 1]: alpha*KD + (1-alpha)*contrastive task loss"),
    _f("--post-prune-epochs", "distill.post_prune_epochs", PIPELINE, type=int,
       help="recovery epochs after the last pruning step"),
    _f("--no-distill", "distill.alpha", PIPELINE, const=0.0,
       help="recover with the contrastive task loss on train qrels only (alpha=0)"),
    _f("--no-protect-circuits", "prune.protect_circuits", PIPELINE, const=False,
       help="let the plan remove units of the named circuits"),
    _f("--methods", "analysis.methods", ("analyze",), nargs="+", choices=METHODS,
       help=f"importance methods (default: {' '.join(METHODS)})"),
    _f("--doc-max-length", "model.doc_max_length", ("analyze",), type=int, help="document length for evaluation"),
    _f("--allocation", "prune.allocation", ("analyze", "bench"), choices=ALLOCATIONS),
    _f("--split", "prune.split", ("analyze", "bench"), choices=SPLITS,
       help="proportional: every layer loses the same share of heads and of neurons"),
    _f("--model", "model.name", ("bench",),
       help="HF name or directory; 'tiny' and 'bert-base' are built-in random-weight configs"),
    _f("--seq-len", "bench.seq_len", ("bench",), type=int),
    _f("--batch-size", "bench.batch_size", ("bench",), type=int),
    _f("--threads", "bench.threads", ("bench",), type=int),
    _f("--repeats", "bench.repeats", ("bench",), type=int),
    _f("--warmup", "bench.warmup", ("bench",), type=int),
    _f("--device", "bench.device", ("bench",), help="cpu, auto, cuda or cuda:N"),
    _f("--dtypes", "bench.dtypes", ("bench",), nargs="+", choices=DTYPES,
       help="default: float32 on CPU; float32 bfloat16 float16 on CUDA"),
    _f("--neuron-multiples", "bench.neuron_multiples", ("bench",), nargs="+", type=int,
       help="time the plan's shapes at each of these prune.neuron_multiple values side by side, e.g. 1 64"),
    _f("--workers", "workers.num_workers", PIPELINE, type=int,
       help="Ray Train workers running the pipeline (of each trial or cell); DDP when > 1"),
    _f("--cpus-per-worker", "workers.cpus_per_worker", PIPELINE, type=float),
    _f("--gpus-per-worker", "workers.gpus_per_worker", PIPELINE, type=float,
       help="sma run goes through Ray Train when > 0 or with more than one worker"),
    # the search and the ablation (keys of SearchConfig / AblationConfig, not of their run)
    _f("--trials", "trials_per_study", ("tune",), type=int, help="finished trials each study ends with"),
    _f("--max-concurrent-trials", "max_concurrent_trials", OUTER, type=int,
       help="default: what the cluster's resources hold"),
    _f("--scheduler", "scheduler", ("tune",), choices=SCHEDULERS),
    _f("--optuna-storage", "optuna_storage", ("tune",),
       help="SQLAlchemy URL (default: sqlite in results/<experiment>/tune)"),
    _f("--storage-path", "storage_path", OUTER, help="Ray results: local folder or cloud URI"),
    _f("--max-failures", "max_failures", OUTER, type=int, help="Ray Tune retries of a failing trial"),
    _f("--fail-on-trial", "fail_on_trial", ("tune",), type=int, help="test hook: this Optuna trial number raises"),
    _f("--seeds", "seeds", ("ablate",), type=int, help="seeds per cell (run.seed, run.seed + 1, ...; default 3)"),
    _f("--factors", "factors", ("ablate",), nargs="+", choices=tuple(FACTORS_BY_NAME),
       help="the method's choices to ablate (default: all)"),
    _f("--factorial", "factorial", ("ablate",), const=True, help="every combination instead of one factor at a time"),
    _f("--datasets", "datasets", ("ablate",), nargs="+",
       help="collections every cell runs on (default: --dataset alone); the report keeps them apart"),
)
OUTER_KEYS = frozenset(f.keys[0] for f in FLAGS if set(f.commands) <= set(OUTER))
"""Flags of ``sma tune`` / ``sma ablate`` that set keys of the search or ablation itself (others: ``run.``)."""

_SMOKE_PIPELINE: dict[str, Any] = {
    "sparsity": (0.3, 0.5), "eval.show_progress": False, "distill.batch_size": 8, "distill.max_length": 32,
    "distill.eval_every_epoch": True, "prune.max_steps": 2, "analysis.methods": ("attribution",),
    "analysis.probe_queries": 6, "analysis.ablation_queries": 4, "analysis.neuron_group_size": 16,
    "analysis.attribution_steps": 1, "bench.seq_len": 32, "bench.batch_size": 4, "bench.repeats": 1,
    "bench.threads": 1,
}
_QUICK_PIPELINE: dict[str, Any] = {
    "sparsity": (0.3, 0.5), "prune.gentleness": 0.0, "distill.post_prune_epochs": 1, "distill.max_texts": 768,
    "model.doc_max_length": 128, "analysis.probe_queries": 48, "analysis.attribution_steps": 1, "bench.repeats": 3,
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # the whole pipeline on the real model, small: one-shot pruning, one recovery epoch over 768 texts,
    # documents at 128 tokens, a small probe, 100 queries per split. Under 10 min on 2 cores.
    "quick": {"run": _QUICK_PIPELINE, "tune": _QUICK_PIPELINE,
              "ablate": {k: v for k, v in _QUICK_PIPELINE.items() if k != "prune.gentleness"},  # gentleness is a factor
              "analyze": {"analysis.probe_queries": 48, "analysis.attribution_steps": 1},
              "bench": {"bench.repeats": 3}},
    # the tiny offline model and collection of sma.tiny: seconds, for CI and first tries
    "smoke": {"run": _SMOKE_PIPELINE, "tune": _SMOKE_PIPELINE, "ablate": _SMOKE_PIPELINE,
              "analyze": {"eval.show_progress": False, "model.doc_max_length": 32, "analysis.probe_queries": 6,
                          "analysis.positives_per_query": 1, "analysis.negatives_per_query": 2,
                          "analysis.ablation_queries": 4, "analysis.neuron_group_size": 16,
                          "analysis.attribution_steps": 2, "analysis.doc_max_length": 32,
                          "analysis.query_max_length": 16, "analysis.batch_size": 8},
              "bench": {"model.name": "tiny", "bench.seq_len": 32, "bench.batch_size": 4, "bench.repeats": 3,
                        "bench.warmup": 1, "bench.threads": 1}},
}
FAST_RECIPE: dict[str, Any] = {
    "prune.gentleness": 0.0, "distill.precision": "auto", "distill.freeze_word_embeddings": True,
}
"""``sma run --fast``: one-shot pruning (no distillation epochs between pruning steps), bfloat16 distillation
where the device runs it natively, and the student's word embedding table frozen at the teacher's. Explicit
flags and ``--set`` override each key; a preset's keys are overridden by it."""
PRESET_FILL: dict[str, dict[str, Any]] = {"quick": {"data.max_samples": 100}}
"""Preset values that apply only where the config file left the key unset (``None``)."""


def add_config_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of ``command`` (from :data:`FLAGS`), ``--config``, the presets and ``--set``."""
    parser.add_argument("--config", help="JSON or YAML config file (results/<exp>/config.json reruns exactly)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick-test", action="store_const", const="quick", dest="preset",
                      help="the real model, small: minutes on a laptop")
    mode.add_argument("--smoke-test", action="store_const", const="smoke", dest="preset",
                      help="a tiny offline model and collection: seconds")
    if command == "run":
        parser.add_argument("--fast", action="store_true",
                            help="the faster recipe: one-shot pruning, bfloat16 distillation where the device "
                                 "has it natively, the word embedding table frozen (README: 1.6x or more per "
                                 "sparsity on 2 CPU cores, test retention within the spread over seeds)")
    for f in FLAGS:
        if command not in f.commands:
            continue
        if f.const is not None:
            parser.add_argument(f.flag, dest=f.dest, action="store_true", default=None, help=f.help)
        else:
            parser.add_argument(f.flag, dest=f.dest, type=f.type, nargs=f.nargs, choices=f.choices,
                                default=None, help=f.help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set distill.learning_rate=3e-5 (repeatable)")


def flag_overrides(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Dotted key -> value for every flag of ``command`` given on the command line."""
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for f in FLAGS:
        value = getattr(args, f.dest, None)
        if command not in f.commands or value is None or value is False:
            continue
        for key in f.keys:
            value_ = f.const if f.const is not None else value
            if key in out and out[key] != value_:
                raise ConfigError(f"{given[key]} and {f.flag} both set {key} ({out[key]!r} and {value_!r}): "
                                  "give one of them")
            out[key], given[key] = value_, f.flag
    return out


def set_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _preset(run: RunConfig, preset: str | None, command: str) -> RunConfig:
    if preset is None:
        return run
    run = apply_overrides(run, PRESETS[preset].get(command, {}))
    fill = {k: v for k, v in PRESET_FILL.get(preset, {}).items() if get_key(run, k) is None}
    return apply_overrides(run, fill)


def smoke_run(run: RunConfig, command: str = "tune") -> RunConfig:
    """``run`` with the smoke preset of ``command`` and the tiny offline assets (tests build searches so)."""
    return _smoke_assets(_preset(run, "smoke", command), {})


def _smoke_assets(run: RunConfig, explicit: dict[str, Any]) -> RunConfig:
    """The tiny offline model and collection (built once in the cache), unless the user named others."""
    from sma.cache import cache_root
    from sma.tiny import smoke_assets

    model_dir, beir_dir = smoke_assets(cache_root(run.cache_dir) / "smoke")
    fill = {"model.name": str(model_dir), "data.dataset": str(beir_dir)}
    return apply_overrides(run, {k: v for k, v in fill.items() if k not in explicit})


def run_config(args: argparse.Namespace, command: str = "run") -> RunConfig:
    """The :class:`RunConfig` of ``sma run`` / ``analyze`` / ``bench`` from parsed ``args``."""
    run = load_config(args.config, RunConfig) if args.config else RunConfig()
    explicit = flag_overrides(args, command)
    if args.preset == "smoke" and "experiment" not in explicit:
        run = replace(run, experiment="smoke-test")
    run = _preset(run, args.preset, command)
    if getattr(args, "fast", False):
        run = apply_overrides(run, FAST_RECIPE)
    explicit.update(set_overrides(args.set))
    run = apply_overrides(run, explicit)
    if args.preset == "smoke" and command in MODELLED:
        run = _smoke_assets(run, explicit)
    return run


def search_config(args: argparse.Namespace) -> SearchConfig:
    """The :class:`SearchConfig` of ``sma tune``. A flag or ``--set run.KEY`` that sets a searched key is an
    error (the search would overwrite it); ``--no-distill`` narrows the searched alpha to 0."""
    cfg = load_config(args.config, SearchConfig) if args.config else SearchConfig()
    flags = flag_overrides(args, "tune")
    sets = set_overrides(args.set)
    run_keys = {k: v for k, v in flags.items() if k not in OUTER_KEYS}
    if getattr(args, "no_distill", None):
        if "space.alpha" in sets:
            raise ConfigError(f"--no-distill and --set space.alpha={sets['space.alpha']} both set the searched alpha: "
                              "give one of them")
        run_keys.pop("distill.alpha")
        sets = {"space.alpha": "[0, 0]", **sets}
    for key in [*run_keys, *(k.removeprefix("run.") for k in sets if k.startswith("run."))]:
        if key in SEARCHED_BY_KEY:
            p = SEARCHED_BY_KEY[key]
            raise ConfigError(f"{key} is searched as {p.name!r}: fix it with --set space.{p.name}=[v,v] "
                              f"or bound it with --set space.{p.name}=[low,high]")
    run = cfg.run
    if args.preset == "smoke" and "experiment" not in run_keys:
        run = replace(run, experiment="smoke-test")
    run = apply_overrides(_preset(run, args.preset, "tune"), run_keys)
    cfg = replace(cfg, run=run)
    if args.preset == "smoke":
        cfg = apply_overrides(cfg, {"trials_per_study": 2, "space.post_prune_epochs": (0, 1)})
    search_flags = {k: v for k, v in flags.items() if k in OUTER_KEYS}
    cfg = apply_overrides(cfg, {**search_flags, **sets})
    if args.preset == "smoke":
        given = {**run_keys, **{k.removeprefix("run."): v for k, v in sets.items()}}
        cfg = replace(cfg, run=_smoke_assets(cfg.run, given))
    return cfg


def ablate_config(args: argparse.Namespace) -> AblationConfig:
    """The :class:`AblationConfig` of ``sma ablate``: run flags set the reference recipe."""
    cfg = load_config(args.config, AblationConfig) if args.config else AblationConfig()
    flags = flag_overrides(args, "ablate")
    sets = set_overrides(args.set)
    run_keys = {k: v for k, v in flags.items() if k not in OUTER_KEYS}
    run = cfg.run
    if args.preset == "smoke" and "experiment" not in run_keys:
        run = replace(run, experiment="smoke-test")
    cfg = replace(cfg, run=apply_overrides(_preset(run, args.preset, "ablate"), run_keys))
    if args.preset == "smoke":
        cfg = apply_overrides(cfg, {"seeds": 2, "factors": ("criterion", "distill"), "run.sparsity": (0.5,)})
    cfg = apply_overrides(cfg, {**{k: v for k, v in flags.items() if k in OUTER_KEYS}, **sets})
    if args.preset == "smoke":
        given = {**run_keys, **{k.removeprefix("run."): v for k, v in sets.items()}}
        cfg = replace(cfg, run=_smoke_assets(cfg.run, given))
    return cfg
