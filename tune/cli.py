"""``sma tune``: the search config from the front door (:func:`sma.config.options.search_config`), then the
search. Rerun the same command to resume."""

from __future__ import annotations

import argparse
import logging

from sma.config import SearchConfig

log = logging.getLogger(__name__)


def run_cli(args: argparse.Namespace, cfg: SearchConfig) -> int:
    from tune.search import search

    results = search(cfg, mode=args.mode)
    incomplete = [r.study for r in results if r.progress.finished < cfg.trials_per_study]
    if incomplete:
        log.error("studies short of %d finished trials: %s", cfg.trials_per_study, ", ".join(incomplete))
        return 1
    return 0
