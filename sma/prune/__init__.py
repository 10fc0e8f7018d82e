"""Physical structured pruning of BERT-family encoders: plan, apply, simulate, account, save/load.

``plan_for_sparsity`` turns unit scores into an inspectable :class:`PruningPlan`; ``apply_plan`` removes the
units from the weight matrices (rebuild optimizers and re-wrap DDP afterwards); ``masked`` simulates a
plan with gates; ``encoder_sparsity`` reports actual sparsity; ``save_pruned``/``load_pruned`` round-trip
pruned models bit-identically.
"""

from sma.prune.apply import EmptyAttention, apply_plan, check_plan, masked
from sma.prune.arch import LayerParts, encoder_layers, structure, unwrap
from sma.prune.gates import Gates, gated, install_gates
from sma.prune.io import STRUCTURE_FILE, is_pruned_dir, load_pruned, load_pruned_encoder, save_pruned
from sma.prune.plan import plan_for_sparsity
from sma.prune.schema import PruningPlan, UnitDecision, UnitScores
from sma.prune.simple_scores import first_n_scores, magnitude_scores
from sma.prune.sparsity import LayerCount, SparsityReport, encoder_sparsity, layer_counts
from sma.prune.units import LayerUnits, dense_sizes, unit_ids

__all__ = [
    "STRUCTURE_FILE", "EmptyAttention", "Gates", "LayerCount", "LayerParts", "LayerUnits", "PruningPlan",
    "SparsityReport", "UnitDecision", "UnitScores", "apply_plan", "check_plan", "dense_sizes", "encoder_layers",
    "encoder_sparsity", "first_n_scores", "gated", "install_gates", "is_pruned_dir", "layer_counts",
    "load_pruned", "load_pruned_encoder", "magnitude_scores", "masked", "plan_for_sparsity", "save_pruned",
    "structure", "unit_ids", "unwrap",
]
