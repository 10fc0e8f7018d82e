"""Control scorers every analysis method must beat: random scores (weight magnitude is
:func:`sma.prune.magnitude_scores`, re-exported here), and the ``UnitScores`` plumbing the methods share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sma.prune import UnitScores, encoder_layers, magnitude_scores

__all__ = ["UnitScores", "magnitude_scores", "random_scores", "to_scores"]


def to_scores(heads: Sequence[torch.Tensor], neurons: Sequence[torch.Tensor], *, method: str) -> UnitScores:
    """Scores of a dense model from per-layer tensors (current order = original ids)."""
    return UnitScores(heads=[h.double() for h in heads], neurons=[n.double() for n in neurons], method=method)


def random_scores(model: nn.Module, *, seed: int) -> UnitScores:
    """Uniform random scores from a seeded generator: the control every method must beat."""
    gen = torch.Generator().manual_seed(seed)
    layers = encoder_layers(model)
    heads = [torch.rand(p.num_heads, generator=gen, dtype=torch.float64) for p in layers]
    neurons = [torch.rand(p.num_neurons, generator=gen, dtype=torch.float64) for p in layers]
    return to_scores(heads, neurons, method=f"random(seed={seed})")
