"""Mechanistic analysis: which heads and FFN neurons carry ranking, and the circuits they form.

``run_analysis(model, data, cfg, out_dir)`` builds a seeded probe (train/dev queries, positives, hard
negatives), scores every unit by causal ablation, gradient attribution, weight magnitude and random, finds
each method's circuit with its faithfulness, and writes ``phase1/`` (JSON + PNG). Scores are
``UnitScores`` (higher = more important, original unit ids) for ``sma.prune.plan_for_sparsity``.
"""

from sma.circuits.ablation import AblationResult, ablation_scores
from sma.circuits.attribution import AttributionResult, attribution_scores
from sma.circuits.circuit_search import Circuit, Faithfulness, find_circuit, top_fraction
from sma.circuits.compare import CompareRow, Comparison, compare_methods
from sma.circuits.config import METHODS, AnalysisConfig
from sma.circuits.controls import UnitScores, magnitude_scores, random_scores
from sma.circuits.objective import ProbeScore, attribute, contrastive_loss, evaluate_probe, tokenize_probe
from sma.circuits.patching import UnitMeans, collecting_stats, local_effects, patched
from sma.circuits.probe import ProbeSet, build_probe
from sma.circuits.run import AnalysisResult, run_analysis

__all__ = [
    "METHODS", "AblationResult", "AnalysisConfig", "AnalysisResult", "AttributionResult", "Circuit",
    "CompareRow", "Comparison", "compare_methods",
    "Faithfulness", "ProbeScore", "ProbeSet", "UnitMeans", "UnitScores", "ablation_scores", "attribute",
    "attribution_scores", "build_probe", "collecting_stats", "contrastive_loss", "evaluate_probe",
    "find_circuit", "local_effects", "magnitude_scores", "patched", "random_scores",
    "run_analysis", "tokenize_probe", "top_fraction",
]
