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

from sma.config.options import add_config_options


def _analyze_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compare-sparsity", type=float, default=None,
                   help="also prune one-shot to this sparsity by each method and evaluate on the test split")
    p.add_argument("--random-seeds", type=int, default=3, help="seeds of the random control in the comparison")


def _bench_extras(p: argparse.ArgumentParser) -> None:
    from sma.config.choices import BENCH_SCORES

    p.add_argument("--scores", choices=BENCH_SCORES, default="magnitude", help="which units go (shapes only)")
    p.add_argument("--random-weights", action="store_true", help="the model's config with random weights")
    p.add_argument("--output", default=None, help="write the results as JSON here")


def _tune_extras(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_const", const="resume", dest="mode",
                      help="continue the experiment's studies (an error if none exists)")
    mode.add_argument("--fresh", action="store_const", const="fresh", dest="mode",
                      help="delete the experiment's studies, MLflow runs and Ray results, then start over")
    p.set_defaults(mode="auto")


def _report_extras(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resamples", type=int, default=10_000, help="paired bootstrap resamples (seeded)")


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


COMMANDS = (
    Command("run", "evaluate the dense model, prune it to each sparsity, recover, measure, report",
            "sma.pipeline:run_cli"),
    Command("analyze", "mechanistic analysis: unit importance, circuits, faithfulness", "sma.circuits.cli:run_cli",
            _analyze_extras,
            "writes <output-dir>/<experiment>/phase1/ (scores, circuits, plots, the one-shot comparison)"),
    Command("bench", "dense vs pruned latency, throughput and memory, side by side", "sma.bench_cli:run_cli",
            _bench_extras),
    Command("tune", "Ray Tune + Optuna search of the searched hyperparameters per sparsity (MLflow)",
            "tune.cli:run_cli", _tune_extras,
            "Per sparsity an Optuna study searched through Ray Tune; each trial fits a Ray Train TorchTrainer "
            "running the pipeline; everything is logged to MLflow. Rerun the same command to resume. --set "
            "takes keys of the search config (trials_per_study=5, space.alpha=[0.5,1], run.distill.batch_size=16)."),
    Command("ablate", "a designed study of the method's choices (criterion, distillation, circuits, schedule, "
            "recovery) at each sparsity and seed, through Ray Tune; every cell an MLflow run",
            "tune.ablation:run_cli", None,
            "One factor at a time from the reference recipe (the run flags), or --factorial; --seeds N per cell. "
            "Rerun the same command to resume: finished cells are kept. Then: sma report --experiment NAME."),
    Command("report", "Pareto fronts, seeds, ablation statistics and plots of an experiment's MLflow runs",
            "analysis.report:run_cli", _report_extras,
            "writes <output-dir>/<experiment>/report/ (report.md, report.html, PNG, CSV) and logs it to MLflow"),
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
        p.set_defaults(handler=c.handler)
    return parser


def _handler(spec: str) -> Callable[[argparse.Namespace], int]:
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
    from sma.config import ConfigError

    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = build_config(args)
        return int(_handler(args.handler)(args, cfg) or 0)
    except ConfigError as exc:
        if args.verbose:
            raise
        print(f"sma: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        from sma.data import DataError
        from sma.model import ModelNotFoundError

        if isinstance(exc, (DataError, ModelNotFoundError, FileNotFoundError)) and not args.verbose:
            print(f"sma: error: {exc}", file=sys.stderr)
            return 2
        raise

if __name__ == "__main__":
    sys.exit(main())
