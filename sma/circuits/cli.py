"""``sma analyze``: the mechanistic analysis (phase 1), optionally with the one-shot selection comparison.

    sma analyze --model sentence-transformers/all-MiniLM-L6-v2 --dataset cranfield --experiment minilm \\
        [--methods ablation attribution] [--compare-sparsity 0.5 --random-seeds 3]
    sma analyze --smoke-test        # tiny offline model and collection, seconds

Writes ``<output-dir>/<experiment>/phase1/``. The configuration comes from the front door
(:func:`sma.config.options.run_config`): the same ``--config``, flags and ``--set`` keys as ``sma run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from sma.config import RunConfig

log = logging.getLogger(__name__)


def run_cli(args: argparse.Namespace, cfg: RunConfig) -> int:
    import torch

    from sma.circuits.compare import compare_methods
    from sma.circuits.run import faithfulness_table, run_analysis
    from sma.device import resolve_device
    from sma.layout import PHASE1_DIR
    from sma.model import BiEncoder
    from sma.prepare import configured_data

    if args.preset == "smoke":
        args.random_seeds = min(args.random_seeds, 2)
        if args.compare_sparsity is None:
            args.compare_sparsity = 0.5
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # --seed seeds the probe too here (sma run keeps the analysis seed apart, so its seeds share one analysis)
    acfg = cfg.analysis if args.seed is None else dataclasses.replace(cfg.analysis, seed=cfg.seed)
    model = BiEncoder.from_config(cfg.model).to(resolve_device(cfg.device))
    data = configured_data(cfg)
    if args.compare_sparsity is None:
        result = run_analysis(model, data, acfg, cfg.run_dir, cache_dir=cfg.cache_dir)
        print(faithfulness_table(result.circuits))
    else:
        comparison = compare_methods(model, data, acfg, sparsity=args.compare_sparsity,
                                     random_seeds=args.random_seeds, allocation=cfg.prune.allocation,
                                     split=cfg.prune.split, out_dir=cfg.run_dir, cache_dir=cfg.cache_dir)
        print(comparison.table())
    print(f"results in {cfg.run_dir / PHASE1_DIR}")
    return 0

