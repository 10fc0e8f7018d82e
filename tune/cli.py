"""sma tune: per sparsity, an Optuna study searched through Ray Tune; each trial fits a Ray Train TorchTrainer
running the pruning pipeline; everything is logged to MLflow. Rerun the same command to resume.

Config precedence: defaults < --config search.yaml < --smoke-test < --quick-test < the run flags
(--model, --sparsity, ...) < the search flags < --set KEY=VALUE (dotted keys of the search config:
--set trials_per_study=5, --set run.distill.batch_size=16).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from sma.cli import QUICK_TEST, SEED_FLAGS, add_run_options
from sma.config import ConfigError, RunConfig, apply_overrides
from tune.config import SCHEDULERS, SearchConfig, load_search_config

log = logging.getLogger(__name__)

SEARCH_FLAGS = {
    "trials": "trials_per_study",
    "workers": "num_workers",
    "cpus_per_worker": "cpus_per_worker",
    "gpus_per_worker": "gpus_per_worker",
    "max_concurrent_trials": "max_concurrent_trials",
    "scheduler": "scheduler",
    "optuna_storage": "optuna_storage",
    "storage_path": "storage_path",
    "mlflow_tracking_uri": "mlflow_tracking_uri",
    "max_failures": "max_failures",
    "fail_on_trial": "fail_on_trial",
}

SMOKE_RUN = {
    "sparsity": (0.3, 0.5),
    "eval.show_progress": False,
    "distill.batch_size": 8,
    "distill.max_length": 32,
    "distill.eval_every_epoch": True,
    "prune.max_steps": 2,
    "analysis.methods": ("attribution",),
    "analysis.probe_queries": 6,
    "analysis.ablation_queries": 4,
    "analysis.neuron_group_size": 16,
    "analysis.attribution_steps": 1,
    "bench.seq_len": 32,
    "bench.batch_size": 4,
    "bench.repeats": 1,
    "bench.threads": 1,
}
"""``--smoke-test``: the tiny offline model and collection of :mod:`sma.smoke`, 2 trials, 1 epoch at most."""


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="Ray Tune + Optuna search of alpha, gentleness, post-prune epochs per sparsity (MLflow)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    for action in p._actions:
        if action.dest == "config":
            action.help = "YAML/JSON search config (see cluster/search.yaml); its run: section is a sma run config"
    p.set_defaults(func=cmd_tune)
    g = p.add_argument_group("search")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_const", const="resume", dest="mode",
                      help="continue the experiment's studies (an error if none exists)")
    mode.add_argument("--fresh", action="store_const", const="fresh", dest="mode",
                      help="delete the experiment's studies, MLflow runs and Ray results, then start over")
    p.set_defaults(mode="auto")
    _add(p, g, "--smoke-test", action="store_true", help="tiny offline model and data, 2 trials per study")
    _add(p, g, "--trials", type=int, help="finished trials each study ends with")
    _add(p, g, "--workers", type=int, help="Ray Train workers per trial (DDP when > 1)")
    _add(p, g, "--cpus-per-worker", type=float)
    _add(p, g, "--gpus-per-worker", type=float)
    _add(p, g, "--max-concurrent-trials", type=int, help="default: what the cluster's resources hold")
    _add(p, g, "--scheduler", choices=SCHEDULERS)
    _add(p, g, "--optuna-storage", help="SQLAlchemy URL (default: sqlite in results/<experiment>/tune)")
    _add(p, g, "--storage-path", help="Ray results: local folder or cloud URI")
    _add(p, g, "--mlflow-tracking-uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db")
    _add(p, g, "--max-failures", type=int, help="Ray Tune retries of a failing trial")
    _add(p, g, "--fail-on-trial", type=int, help="test hook: this Optuna trial number raises")


def _add(parser: argparse.ArgumentParser, group, flag: str, **kwargs) -> None:
    """Add ``flag`` unless the shared run options already define it (e.g. ``--workers`` for ``sma run``)."""
    if flag not in parser._option_string_actions:
        group.add_argument(flag, **kwargs)


def build_search_config(args: argparse.Namespace) -> SearchConfig:
    base = load_search_config(args.config) if args.config else SearchConfig()
    cfg = _apply_flags(base, args)
    if not args.smoke_test:
        return cfg
    # The tiny assets go to the cache dir the flags chose; the flags still override the smoke defaults.
    run = smoke_run(base.run, experiment=args.experiment or "smoke-test", cache_dir=cfg.run.cache_dir)
    space = dataclasses.replace(base.space, post_prune_epochs=(0, min(1, base.space.post_prune_epochs[1])))
    return _apply_flags(dataclasses.replace(base, run=run, trials_per_study=2, space=space), args)


def _apply_flags(cfg: SearchConfig, args: argparse.Namespace) -> SearchConfig:
    run: RunConfig = cfg.run
    if args.quick_test:
        run = apply_overrides(run, QUICK_TEST)  # what `sma run --quick-test` runs; the space sets the searched keys
        if run.data.max_samples is None:
            run = apply_overrides(run, {"data.max_samples": 100})
    run_overrides: dict[str, object] = {key: getattr(args, flag) for flag, key in SEED_FLAGS.items()
                                        if getattr(args, flag, None) is not None}
    if args.deterministic:
        run_overrides["deterministic"] = True
    cfg = dataclasses.replace(cfg, run=apply_overrides(run, run_overrides))
    overrides: dict[str, object] = {key: getattr(args, flag) for flag, key in SEARCH_FLAGS.items()
                                    if getattr(args, flag, None) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    return apply_overrides(cfg, overrides)


def smoke_run(run: RunConfig, *, experiment: str, cache_dir: str | None = None) -> RunConfig:
    from sma.cache import cache_root
    from sma.smoke import smoke_assets

    model_dir, beir_dir = smoke_assets(cache_root(cache_dir or run.cache_dir) / "smoke")
    return apply_overrides(run, {**SMOKE_RUN, "experiment": experiment, "model.name": str(model_dir),
                                 "data.dataset": str(Path(beir_dir))})


def cmd_tune(args: argparse.Namespace) -> int:
    from tune.search import search

    cfg = build_search_config(args)
    results = search(cfg, mode=args.mode)
    incomplete = [r.study for r in results if r.progress.finished < cfg.trials_per_study]
    if incomplete:
        log.error("studies short of %d finished trials: %s", cfg.trials_per_study, ", ".join(incomplete))
        return 1
    return 0
