"""``UnitScores`` plumbing and the two non-mechanistic scorers: weight magnitude and random."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sma.prune.arch import encoder_layers

try:  # the pruning engine's contract; the fallback mirrors it until sma.prune exports it
    from sma.prune import UnitScores
except ImportError:  # pragma: no cover - depends on the state of sma.prune

    @dataclass(frozen=True)
    class UnitScores:  # type: ignore[no-redef]
        """Importance (higher = more important) of every head ``[layer][head]`` and neuron ``[layer][neuron]``."""

        heads: tuple[tuple[float, ...], ...]
        neurons: tuple[tuple[float, ...], ...]
        method: str


def to_scores(heads: Sequence[torch.Tensor], neurons: Sequence[torch.Tensor], *, method: str) -> UnitScores:
    return UnitScores(heads=tuple(tuple(float(v) for v in h.tolist()) for h in heads),
                      neurons=tuple(tuple(float(v) for v in n.tolist()) for n in neurons), method=method)


def as_tensors(scores: UnitScores) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return ([torch.tensor(h, dtype=torch.float64) for h in scores.heads],
            [torch.tensor(n, dtype=torch.float64) for n in scores.neurons])


def _sq(lin: nn.Linear, idx: slice | int, *, rows: bool) -> torch.Tensor:
    w = lin.weight.detach().double()
    part = w[idx] if rows else w[:, idx]
    total = part.pow(2).sum()
    if rows and lin.bias is not None:
        total = total + lin.bias.detach().double()[idx].pow(2).sum()
    return total


def magnitude_scores(model: nn.Module) -> UnitScores:
    """L2 norm of all the weights a unit owns (its Q/K/V rows and output columns; FFN row and column)."""
    heads, neurons = [], []
    for p in encoder_layers(model):
        d = p.head_size
        hs = []
        for h in range(p.num_heads):
            sl = slice(h * d, (h + 1) * d)
            hs.append(sum(_sq(lin, sl, rows=True) for lin in (p.query, p.key, p.value))
                      + _sq(p.attn_out, sl, rows=False))
        heads.append(torch.stack(hs).sqrt())
        w_in = p.ffn_in.weight.detach().double().pow(2).sum(1)
        if p.ffn_in.bias is not None:
            w_in = w_in + p.ffn_in.bias.detach().double().pow(2)
        neurons.append((w_in + p.ffn_out.weight.detach().double().pow(2).sum(0)).sqrt())
    return to_scores(heads, neurons, method="magnitude")


def random_scores(model: nn.Module, *, seed: int) -> UnitScores:
    """Uniform random scores from a seeded generator: the control every method must beat."""
    gen = torch.Generator().manual_seed(seed)
    layers = encoder_layers(model)
    heads = [torch.rand(p.num_heads, generator=gen, dtype=torch.float64) for p in layers]
    neurons = [torch.rand(p.num_neurons, generator=gen, dtype=torch.float64) for p in layers]
    return to_scores(heads, neurons, method=f"random(seed={seed})")
