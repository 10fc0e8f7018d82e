"""The Ray Train worker of a trial: runs the pipeline and reports to Ray Train.

Kept free of heavy imports at module level: Ray unpickles :func:`worker_loop` in the Train controller
and in every worker process, and each second of import time there is paid by every trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sma.layout import (
    MODEL_DIR,
    TRIAL_CHECKPOINT_DIR,
    TRIAL_EPOCHS_FILE,
    TRIAL_RESULT_FILE,
    TRIAL_STRUCTURES_FILE,
    epoch_checkpoint_dir,
)
from sma.metrics import OBJECTIVE

log = logging.getLogger(__name__)


FINAL_REPORT = "final_report"
"""Key (1.0) of a trial's last report to Tune, the one with its final metrics; per-epoch reports lack it."""

FAULTS = ("raise", "exit", "diverge", "poor")
"""Test hooks (:func:`tune.search.search`'s ``faults``; ``SearchConfig.fail_on_trial`` is ``raise``): the
selected trial's worker raises :class:`InjectedTrialFailure`, dies with ``os._exit(1)``, distils with an
infinite learning rate (its loss becomes NaN), or reports a dev retention of -1 (below any real one) after
each epoch, so that a scheduler stops it."""


class InjectedTrialFailure(RuntimeError):
    """Raised by the trial selected with ``SearchConfig.fail_on_trial`` (a test hook)."""


def inject(fault: str | None, cfg, trial: int):
    """The trial's run config under test hook ``fault`` (see :data:`FAULTS`); ``raise`` and ``exit`` never return."""
    if fault == "raise":
        raise InjectedTrialFailure(f"trial {trial} raises on purpose (fail_on_trial)")
    if fault == "exit":
        log.warning("trial %d: the worker exits on purpose (test hook)", trial)
        os._exit(1)
    if fault == "diverge":
        return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, learning_rate=float("inf")))
    return cfg


def setup_logging() -> None:
    """Ray's worker processes have no logging handler: make the trial's progress lines visible."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")


def report_epoch(metrics: dict[str, float], student, epoch: int) -> None:
    """One post-prune epoch's report, with the student as its checkpoint when given (rank 0): a trial the
    scheduler stops keeps its last model."""
    import ray.train

    from sma.prune import save_pruned

    if student is None:
        ray.train.report(metrics)
        return
    folder = Path(tempfile.mkdtemp(prefix="sma-epoch-"))
    try:
        save_pruned(student.encoder, folder / MODEL_DIR, tokenizer=student.tokenizer)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=epoch_checkpoint_dir(epoch))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def worker_loop(config: dict[str, Any]) -> None:
    """Every worker runs the pipeline; rank 0 reports the final metrics with the trial's files."""
    worker_started_at = time.time()
    import ray.train
    import ray.train.torch
    import torch

    from sma.distributed import gather
    from sma.pipeline import prepare, run_sparsity

    setup_logging()
    rank = ray.train.get_context().get_world_rank()
    cfg = config["run"]
    if cfg.device == "auto":  # the GPU Ray assigned to this worker (its local rank's), else the CPU
        cfg = dataclasses.replace(cfg, device=str(ray.train.torch.get_device()))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg = inject(config.get("fault"), cfg, config["trial"])
    started = time.time()
    log.info("rank %d: trial %d starts the pipeline", rank, config["trial"])
    epochs: list[dict[str, Any]] = []

    def reporter(row: dict[str, Any], student) -> None:
        if config.get("fault") == "poor":
            row = {**row, OBJECTIVE: -1.0}
        epochs.append(dict(row))
        if OBJECTIVE in row:  # Tune rejects results without the objective (rows are the same on all ranks)
            report_epoch(_numeric(row), student if rank == 0 else None, int(row.get("epoch", 0)))

    prepared = prepare(cfg)
    out_dir = Path(tempfile.mkdtemp(prefix=f"sma-trial-{config['trial']}-"))
    try:
        result = run_sparsity(cfg, config["sparsity"], out_dir=out_dir, prepared=prepared, reporter=reporter)
        structures = gather(result.get("structure"))
        final = {
            **_numeric(result),
            "baseline_computed": float(prepared.teacher_computed),
            "ranks_agree": float(all(s == structures[0] for s in structures)),
            "world_size": float(len(structures)),
            "pipeline_seconds": time.time() - started,
            "worker_started_at": worker_started_at,
            "pipeline_started_at": started,
            "pipeline_ended_at": time.time(),
        }
        checkpoint = None
        if rank == 0:
            (out_dir / TRIAL_RESULT_FILE).write_text(json.dumps(final, indent=1))
            (out_dir / TRIAL_EPOCHS_FILE).write_text(json.dumps([_numeric(r) | {"epoch": r.get("epoch", 0)}
                                                           for r in epochs], indent=1))
            (out_dir / TRIAL_STRUCTURES_FILE).write_text(json.dumps(structures, indent=1))
            checkpoint = ray.train.Checkpoint.from_directory(str(out_dir))
        ray.train.report({**final, FINAL_REPORT: 1.0}, checkpoint=checkpoint, checkpoint_dir_name=TRIAL_CHECKPOINT_DIR)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
