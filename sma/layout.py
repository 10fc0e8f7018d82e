"""Where a run's files go, named once: ``results/<experiment>/...`` and the files a search trial hands back.

    results/<experiment>/config.json          the resolved config (reruns it exactly)
    results/<experiment>/results.json         the results table, machine-readable
    results/<experiment>/phase1/              importance scores, circuits, heatmaps
    results/<experiment>/phase2/s0.50/        plan.json, metrics.json, model/
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
BASELINE_PER_QUERY_FILE = "baseline_per_query.json"
PHASE1_DIR = "phase1"
PHASE2_DIR = "phase2"
PLAN_FILE = "plan.json"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
STRUCTURE_FILE = "sma_structure.json"
"""In a pruned model folder: the heads and neurons each layer kept (``sma.prune.save_pruned``)."""

TRIAL_CHECKPOINT_DIR = "result"
"""A search trial's final checkpoint folder: ``<storage_path>/<study>-train/trial-0003/result/``."""
TRIAL_RESULT_FILE = "result.json"
TRIAL_EPOCHS_FILE = "epochs.json"
TRIAL_STRUCTURES_FILE = "structures.json"
TRIAL_ARTIFACTS = (PLAN_FILE, METRICS_FILE, TRIAL_STRUCTURES_FILE)
"""Files of a trial logged to MLflow as artifacts."""


def trial_run_name(number: int, attempt: int = 1) -> str:
    """The Ray Train run of trial ``number``'s ``attempt``-th start: ``trial-0003``, then ``trial-0003-attempt-2``.
    Each start is a Train run of its own: Train would restore a rerun under the same name from the checkpoints
    of the start that died, and drop the new start's files as older than those."""
    return f"trial-{number:04d}" if attempt == 1 else f"trial-{number:04d}-attempt-{attempt}"


def epoch_checkpoint_dir(epoch: int) -> str:
    """A trial's checkpoint after post-prune epoch ``epoch`` (the pruned model, ``sma.load_pruned``), beside
    :data:`TRIAL_CHECKPOINT_DIR`; only the newest is kept, so a trial stopped early keeps its last one."""
    return f"epoch-{epoch:03d}"


def sparsity_dir(run_dir: Path, sparsity: float) -> Path:
    return Path(run_dir) / PHASE2_DIR / f"s{sparsity:.2f}"
