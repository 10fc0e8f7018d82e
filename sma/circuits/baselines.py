"""``UnitScores`` plumbing and the random control (weight magnitude is :func:`sma.prune.magnitude_scores`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sma.prune import UnitScores, encoder_layers, magnitude_scores

__all__ = ["UnitScores", "as_tensors", "magnitude_scores", "random_scores", "to_scores"]


def to_scores(heads: Sequence[torch.Tensor], neurons: Sequence[torch.Tensor], *, method: str) -> UnitScores:
    """Scores of a dense model from per-layer tensors (current order = original ids)."""
    return UnitScores(heads=[h.double() for h in heads], neurons=[n.double() for n in neurons], method=method)


def as_tensors(scores: UnitScores) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return ([torch.tensor(h, dtype=torch.float64) for h in scores.heads],
            [torch.tensor(n, dtype=torch.float64) for n in scores.neurons])


def random_scores(model: nn.Module, *, seed: int) -> UnitScores:
    """Uniform random scores from a seeded generator: the control every method must beat."""
    gen = torch.Generator().manual_seed(seed)
    layers = encoder_layers(model)
    heads = [torch.rand(p.num_heads, generator=gen, dtype=torch.float64) for p in layers]
    neurons = [torch.rand(p.num_neurons, generator=gen, dtype=torch.float64) for p in layers]
    return to_scores(heads, neurons, method=f"random(seed={seed})")
