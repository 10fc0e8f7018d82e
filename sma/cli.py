"""The ``sma`` command line: one subcommand per stage, each built from the config front door
(:mod:`sma.config.options`). Subcommands are registered without importing their stage: ``sma --help`` and a
rejected flag cost no torch import; the handler's module is imported when the command runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sma.config import ConfigError
from sma.config.options import add_config_options
from sma.data import DataError
from sma.model_source import ModelNotFoundError

INPUT_ERRORS = (ConfigError, DataError, ModelNotFoundError, FileNotFoundError)
"""Errors that mean "fix the input": one line and exit status 2, no traceback (unless ``-v``)."""


def _analyze_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compare-sparsity", type=float, default=None,
                   help="also prune one-shot to this sparsity by each method and evaluate on the test split")
    p.add_argument("--random-seeds", type=int, default=3, help="seeds of the random control in the comparison")


def _bench_extras(p: argparse.ArgumentParser) -> None:
    from sma.config.choices import BENCH_SCORES

    p.add_argument("--scores", choices=BENCH_SCORES, default="magnitude", help="which units go (shapes only)")
    p.add_argument("--random-weights", action="store_true", help="the model's config with random weights")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--page", type=Path, default=None, metavar="FILE.md",
                   help="also write the results as a Markdown page with this command (a results page to check in)")
    p.add_argument("--training", action="store_true",
                   help="also time a distillation step of each pruned model in float32 and bfloat16 autocast "
                        "(distill.precision), with the word embedding table trained and frozen "
                        "(distill.freeze_word_embeddings), batch x distill.max_length tokens (128 when unset), "
                        "side by side")


def _tune_extras(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_const", const="resume", dest="mode",
                      help="continue the experiment's studies (an error if none exists)")
    mode.add_argument("--fresh", action="store_const", const="fresh", dest="mode",
                      help="delete the experiment's studies, MLflow runs and Ray results, then start over")
    p.set_defaults(mode="auto")


def _report_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resamples", type=int, default=10_000, help="paired bootstrap resamples (seeded)")
    p.add_argument("--page", type=Path, default=None, metavar="FILE.md",
                   help="also write the report as one Markdown page without images (a results page to check in)")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="the search's Optuna storage when it was not the default <output-dir>/<experiment>/tune/optuna.db")


def _log_extras(p: argparse.ArgumentParser) -> None:
    from sma.log_run import log_extras

    log_extras(p)


def _evaluate_extras(p: argparse.ArgumentParser) -> None:
    from sma.evaluate_cli import evaluate_extras

    evaluate_extras(p)


def _export_extras(p: argparse.ArgumentParser) -> None:
    from sma.export import export_extras

    export_extras(p)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    handler: str
    """``module:function`` taking the parsed args and the built config, returning an exit code (imported
    when the command runs)."""
    extras: Callable[[argparse.ArgumentParser], None] | None = None
    """Options of this command alone (beyond the front door's)."""
    description: str = ""
    checks: tuple[str, ...] = ()
    """``module:function`` taking the built config, raising on bad input (:mod:`sma.preflight`): run in this
    order before the handler is imported, so a missing input fails in seconds, before torch is."""


OUTER_CHECKS = ("tune.storage_root:check_storage_root", "sma.preflight:check_outer", "tune.ray_connect:preflight")
"""``sma tune`` / ``sma ablate``: the run's inputs, then the Ray cluster."""

COMMANDS = (
    Command("run", "evaluate the dense model, prune it to each sparsity, recover, measure, report",
            "sma.pipeline:run_cli", checks=("sma.preflight:check_run",)),
    Command("analyze", "mechanistic analysis: unit importance, circuits, faithfulness", "sma.circuits.cli:run_cli",
            _analyze_extras,
            "writes <output-dir>/<experiment>/phase1/ (scores, circuits, plots, the one-shot comparison)",
            ("sma.preflight:check_analyze",)),
    Command("bench", "dense vs pruned latency, throughput and memory, side by side", "sma.bench_cli:run_cli",
            _bench_extras, checks=("sma.preflight:check_bench",)),
    Command("tune", "Ray Tune + Optuna search of the searched hyperparameters per sparsity (MLflow)",
            "tune.cli:run_cli", _tune_extras,
            "Per sparsity an Optuna study searched through Ray Tune; each trial fits a Ray Train TorchTrainer "
            "running the pipeline; everything is logged to MLflow. Rerun the same command to resume. --set "
            "takes keys of the search config (trials_per_study=5, space.alpha=[0.5,1], run.distill.batch_size=16). "
            "The Ray cluster: $RAY_ADDRESS, else a new local one.", OUTER_CHECKS),
    Command("ablate", "a designed study of the method's choices (criterion, distillation, circuits, schedule, "
            "recovery) at each sparsity and seed, through Ray Tune; every cell an MLflow run",
            "tune.ablation:run_cli", None,
            "One factor at a time from the reference recipe (the run flags), or --factorial; --seeds N per cell. "
            "Rerun the same command to resume: finished cells are kept. Then: sma report --experiment NAME. "
            "The Ray cluster: $RAY_ADDRESS, else a new local one.", OUTER_CHECKS),
    Command("report", "Pareto fronts, seeds, ablation statistics and plots of an experiment's MLflow runs",
            "analysis.report:run_cli", _report_extras,
            "writes <output-dir>/<experiment>/report/ (report.md, report.html, PNG, CSV) and logs it to MLflow",
            ("sma.preflight:check_report",)),
    Command("log", "log a finished run folder made without tracking (--set track=false) to MLflow",
            "sma.log_run:run_cli", _log_extras,
            "RUN_DIR: results/<experiment>/ of a sma run made with --set track=false (on a machine that cannot "
            "reach the tracking server, say), copied here: logged as that sma run would have logged it (its "
            "command, commit, config, per-sparsity metrics and files), so sma report reads it. Logging the "
            "same folder again does nothing.", ("sma.preflight:check_report",)),
    Command("evaluate", "measure a saved pruned model against its dense model again: on another collection, "
            "as an int8 copy", "sma.evaluate_cli:run_cli", _evaluate_extras,
            "PATH: a pruned model folder or a sparsity's result folder (results/<exp>/phase2/s0.50). Settings are "
            "those of the run that wrote the model (its config.json), flags and --set on top: --dataset for "
            "another collection, --set bench.int8=true (and bench.int8_float_layers=N) for its int8 copy. Writes "
            "evaluation-<collection>.json beside the model folder."),
    Command("export", "a pruned model as a sentence-transformers folder or an ONNX model, loadable without SMA",
            "sma.export:run_cli", _export_extras,
            "PATH: a pruned model folder or a sparsity's result folder (results/<exp>/phase2/s0.50). Pooling, "
            "normalisation and lengths are those of the run that wrote the model (its config.json), else the "
            "model.* keys; --set applies on top."),
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sma", description="Sparse Mechanistic Analysis: prune retrieval encoders, keep their quality.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.description or c.help)
        add_config_options(p, c.name)
        if c.extras is not None:
            c.extras(p)
        p.set_defaults(handler=c.handler, checks=c.checks)
    return parser


def _resolve(spec: str) -> Callable[..., Any]:
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def build_config(args: argparse.Namespace):
    """The command's config from the front door: checked before the command's stage is even imported."""
    from sma.config.options import ablate_config, run_config, search_config

    if args.command == "tune":
        return search_config(args)
    if args.command == "ablate":
        return ablate_config(args)
    return run_config(args, args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, build the config, run the command's checks, then import and run its handler. Bad input
    (:data:`INPUT_ERRORS`) exits with status 2 and one line on stderr; ``-v`` shows the traceback instead."""
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = build_config(args)
        for check in args.checks:
            _resolve(check)(cfg)
        return int(_resolve(args.handler)(args, cfg) or 0)
    except INPUT_ERRORS as exc:
        if args.verbose:
            raise
        print(f"sma: error: {one_line(exc)}", file=sys.stderr)
        return 2


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its lines joined by ``; ``)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
