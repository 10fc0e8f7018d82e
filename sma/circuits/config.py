"""Settings of the mechanistic analysis (nested in the run config as ``analysis``)."""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("ablation", "attribution", "magnitude", "random")
"""Importance methods, mechanistic first; ``magnitude`` is the baseline and ``random`` the control."""


@dataclass(frozen=True)
class AnalysisConfig:
    probe_splits: tuple[str, ...] = ("train", "dev")
    """Splits the probe queries come from. Never the test split."""
    probe_queries: int = 125
    """Probe queries sampled (seeded) from ``probe_splits``; fewer if the splits hold fewer."""
    positives_per_query: int = 4
    """Relevant documents kept per probe query (most relevant first, seeded among ties)."""
    negatives_per_query: int = 4
    """Hard negatives per probe query: top-ranked unjudged documents of ``negative_source``."""
    negative_source: str = "bm25"
    """``bm25`` (the ``bm25s`` library over the whole corpus) or ``dense`` (the analysed model)."""
    methods: tuple[str, ...] = METHODS
    ablation: str = "mean"
    """``mean`` (replace a unit's activation by its mean over the probe tokens) or ``zero``."""
    ablation_queries: int = 32
    """Probe queries (the first ones of the seeded probe) used by the one-unit-at-a-time ablations."""
    neuron_group_size: int = 128
    """Neurons ablated together by the ablation method (1 = one by one)."""
    attribution_steps: int = 4
    """Attribution rounds: after each round the least important units up to ``attribution_sparsity``
    (spread evenly over the rounds) are ablated and the rest re-scored. 1 = a single backward pass."""
    attribution_sparsity: float = 0.5
    """Share of each layer's heads and neurons ablated by the last attribution round."""
    circuit_share: float = 0.9
    """A circuit keeps this share of the probe objective's margin over the fully ablated model."""
    temperature: float = 0.05
    query_max_length: int = 64
    doc_max_length: int = 128
    batch_size: int = 32
    seed: int = 42

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"unknown analysis method(s) {unknown}; choose from {', '.join(METHODS)}")
        if self.ablation not in ("mean", "zero"):
            raise ValueError(f"ablation must be 'mean' or 'zero', got {self.ablation!r}")
        if self.negative_source not in ("bm25", "dense"):
            raise ValueError(f"negative_source must be 'bm25' or 'dense', got {self.negative_source!r}")
        if "test" in self.probe_splits:
            raise ValueError("the probe must not use the test split")
        if not 0.0 < self.circuit_share <= 1.0:
            raise ValueError(f"circuit_share must be in (0, 1], got {self.circuit_share}")
        if not 0.0 <= self.attribution_sparsity < 1.0:
            raise ValueError(f"attribution_sparsity must be in [0, 1), got {self.attribution_sparsity}")
        for name in ("probe_queries", "positives_per_query", "ablation_queries", "neuron_group_size",
                     "attribution_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
