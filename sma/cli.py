"""The ``sma`` command line: one parser, one subcommand per stage."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sma.config import ConfigError, RunConfig, apply_overrides, load_config

# Seed flag -> dotted config key.
SEED_FLAGS = {
    "model": "model.name",
    "dataset": "data.dataset",
    "sparsity": "sparsity",
    "epochs": "train.baseline_epochs",
    "baseline_batches_per_epoch": "train.baseline_batches_per_epoch",
    "batch_size": "train.batch_size",
    "gradient_accumulation": "train.gradient_accumulation",
    "hard_negatives": "train.hard_negatives",
    "seed": "seed",
    "max_samples": "data.max_samples",
    "experiment": "experiment",
    "output_dir": "output_dir",
    "pooling": "model.pooling",
    "criterion": "prune.criterion",
    "gentleness": "prune.gentleness",
    "alpha": "distill.alpha",
    "post_prune_epochs": "distill.post_prune_epochs",
    "device": "device",
}


# --quick-test: the whole pipeline, small: one-shot pruning, one recovery epoch over 768 of the distillation
# texts, documents cut to 128 tokens (as distillation sees them), a small probe. Under 10 min on 2 cores.
QUICK_TEST: dict[str, object] = {
    "quick_test": True, "sparsity": (0.3, 0.5), "prune.gentleness": 0.0, "distill.post_prune_epochs": 1,
    "distill.max_texts": 768, "model.doc_max_length": 128,
    "analysis.probe_queries": 48, "analysis.attribution_steps": 1, "bench.repeats": 3,
}


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that builds a :class:`RunConfig` (the seed's names)."""
    p.add_argument("--config", help="JSON or YAML config file (a results/<exp>/config.json reruns exactly)")
    p.add_argument("--model", help="HF hub name or local directory of a BERT-family encoder")
    p.add_argument("--dataset", help="BEIR folder, folder name under $SMA_DATA_DIR, or BeIR hub name")
    p.add_argument("--sparsity", type=float, nargs="+", help="target encoder sparsities, e.g. 0.3 0.5 0.7")
    p.add_argument("--epochs", type=int, help="baseline fine-tuning epochs (0 = pretrained as is)")
    p.add_argument("--baseline-batches-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--gradient-accumulation", type=int)
    p.add_argument("--hard-negatives", choices=["none", "bm25", "dense"])
    p.add_argument("--pooling", choices=["mean", "cls"])
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default: CUDA when torch sees it, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--deterministic", action="store_true", default=None)
    p.add_argument("--quick-test", action="store_true", default=None,
                   help="small, fast run: sparsities 0.3 0.5 and --max-samples 100 unless given")
    p.add_argument("--max-samples", type=int, help="seeded subset of queries per split (and their documents)")
    p.add_argument("--experiment", help="results/<experiment>/ and the MLflow experiment name")
    p.add_argument("--output-dir", help="results root (default: results)")
    p.add_argument("--criterion", choices=["mechanistic", "attribution", "ablation", "magnitude", "random"],
                   help="how units are chosen for removal (default: mechanistic)")
    p.add_argument("--gentleness", type=float, help="0 = one shot, 1 = most gradual schedule")
    p.add_argument("--alpha", type=float, help="distillation weight: alpha*KD + (1-alpha)*contrastive task loss")
    p.add_argument("--post-prune-epochs", type=int, help="recovery epochs after the last pruning step")
    p.add_argument("--no-distill", action="store_true", default=None,
                   help="recover with the contrastive task loss on train qrels only (alpha=0)")
    p.add_argument("--no-protect-circuits", action="store_true", default=None,
                   help="let the plan remove units of the named circuits")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.learning_rate=3e-5 (repeatable)")


def build_config(args: argparse.Namespace, extra: dict[str, str] | None = None) -> RunConfig:
    """Defaults <- config file <- quick-test defaults <- explicit flags <- --set overrides."""
    cfg = load_config(args.config) if args.config else RunConfig()
    if args.quick_test:
        cfg = apply_overrides(cfg, QUICK_TEST)
        if cfg.data.max_samples is None:
            cfg = apply_overrides(cfg, {"data.max_samples": 100})
    overrides: dict[str, object] = {}
    for flag, key in SEED_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if args.deterministic:
        overrides["deterministic"] = True
    if getattr(args, "no_distill", None):
        overrides["distill.alpha"] = 0.0
    if getattr(args, "no_protect_circuits", None):
        overrides["prune.protect_circuits"] = False
    overrides.update(extra or {})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return apply_overrides(cfg, overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    from sma.pipeline import run

    run(build_config(args))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sma", description="Sparse Mechanistic Analysis: prune retrieval encoders, keep their quality.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_p = sub.add_parser("run", help="evaluate the dense model (train the baseline if asked), prune, report")
    add_run_options(run_p)
    run_p.set_defaults(func=_cmd_run)
    for module in _subcommand_modules():
        module.add_cli(sub)
    return parser


def _subcommand_modules() -> list:
    """Modules that add their own subcommand through ``add_cli(subparsers)`` (imported lazily)."""
    import importlib

    return [importlib.import_module(name) for name in _SUBCOMMANDS]


_SUBCOMMANDS: tuple[str, ...] = ("sma.circuits.cli", "sma.bench", "tune.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        from sma.data import DataError
        from sma.model import ModelNotFoundError

        if isinstance(exc, (ConfigError, DataError, ModelNotFoundError, FileNotFoundError)):
            print(f"sma: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
