"""``sma analyze``: the mechanistic analysis (phase 1), optionally with the one-shot selection comparison.

    sma analyze --model sentence-transformers/all-MiniLM-L6-v2 --dataset cranfield \\
        --output-dir results/analysis [--methods ablation attribution] [--compare-sparsity 0.5 --random-seeds 3]
    sma analyze --smoke-test        # tiny offline model and collection, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from sma.circuits.config import METHODS, AnalysisConfig
from sma.config import ConfigError, apply_overrides

log = logging.getLogger(__name__)

SMOKE = {"probe_queries": 6, "positives_per_query": 1, "negatives_per_query": 2, "ablation_queries": 4,
         "neuron_group_size": 16, "attribution_steps": 2, "doc_max_length": 32, "query_max_length": 16,
         "batch_size": 8}


def add_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("analyze", help="mechanistic analysis: unit importance, circuits, faithfulness",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--dataset", default="cranfield", help="BEIR folder, name under $SMA_DATA_DIR, or BeIR name")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None, help=f"default: {' '.join(METHODS)}")
    p.add_argument("--output-dir", type=Path, default=Path("results/analysis"),
                   help="writes <output-dir>/phase1/ (scores, circuits, plots, comparison)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    p.add_argument("--doc-max-length", type=int, default=256, help="document length for the test evaluation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an analysis setting, e.g. --set probe_queries=64 (repeatable)")
    p.add_argument("--compare-sparsity", type=float, default=None,
                   help="also prune one-shot to this sparsity by each method and evaluate on the test split")
    p.add_argument("--random-seeds", type=int, default=3, help="seeds of the random control in the comparison")
    p.add_argument("--allocation", choices=("per_layer", "global"), default="per_layer")
    p.add_argument("--split", choices=("proportional", "joint"), default="proportional",
                   help="proportional: every layer loses the same share of heads and of neurons")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: $SMA_CACHE_DIR/analysis")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (CUDA when torch sees it), cpu, cuda, cuda:N or mps")
    p.add_argument("--smoke-test", action="store_true", help="tiny offline model and collection, small probe")
    p.set_defaults(func=run_cli)
    return p


def analysis_config(args: argparse.Namespace) -> AnalysisConfig:
    cfg = AnalysisConfig()
    if args.smoke_test:
        cfg = dataclasses.replace(cfg, **SMOKE)
    if args.methods:
        cfg = dataclasses.replace(cfg, methods=tuple(args.methods))
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip().removeprefix("analysis.")] = value
    return apply_overrides(cfg, overrides)


def run_cli(args: argparse.Namespace) -> int:
    import torch

    from sma.circuits.compare import compare_methods
    from sma.circuits.run import faithfulness_table, run_analysis
    from sma.data import load_data
    from sma.device import resolve_device
    from sma.model import BiEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = analysis_config(args)
    model_name, dataset = args.model, args.dataset
    if args.smoke_test:
        from sma.cache import cache_root
        from sma.smoke import smoke_assets

        model_dir, beir_dir = smoke_assets((args.cache_dir or cache_root()) / "smoke")
        model_name, dataset = str(model_dir), str(beir_dir)
        args.doc_max_length = min(args.doc_max_length, 32)
        args.random_seeds = min(args.random_seeds, 2)
        if args.compare_sparsity is None:
            args.compare_sparsity = 0.5
    model = BiEncoder.from_pretrained(model_name, pooling=args.pooling, doc_max_length=args.doc_max_length)
    model.to(resolve_device(args.device))
    data = load_data(dataset, seed=cfg.seed)
    if args.compare_sparsity is None:
        result = run_analysis(model, data, cfg, args.output_dir, cache_dir=args.cache_dir)
        print(faithfulness_table(result.circuits))
    else:
        comparison = compare_methods(model, data, cfg, sparsity=args.compare_sparsity,
                                     random_seeds=args.random_seeds, allocation=args.allocation, split=args.split,
                                     out_dir=args.output_dir, cache_dir=args.cache_dir)
        print(comparison.table())
    print(f"results in {args.output_dir / 'phase1'}")
    return 0
