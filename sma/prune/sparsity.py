"""Sparsity accounting: parameters actually present vs the dense model (the "Actual" column of the
reference implementation's table).

Encoder parameters are those of the transformer layers (Q/K/V, attention output, FFN, their biases and
LayerNorms); embeddings and the pooler are excluded. The "with embeddings" figure counts every parameter of
the HF encoder (embeddings, layers, pooler). Dense counts are reconstructed from the removed units' sizes, so
they are exact for any model pruned by :func:`sma.prune.apply_plan`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from sma.prune.arch import encoder_layers, unwrap
from sma.prune.units import dense_sizes, encoder_stack, head_cost, neuron_cost


@dataclass(frozen=True)
class LayerCount:
    """Parameters of one layer now and when dense, and what one head / one neuron costs in it."""

    index: int
    params: int
    dense_params: int
    heads: int
    dense_heads: int
    neurons: int
    dense_neurons: int
    head_cost: int
    neuron_cost: int


def layer_counts(model: nn.Module) -> list[LayerCount]:
    n_heads, n_neurons = dense_sizes(model)
    stack = encoder_stack(model)
    out = []
    for p in encoder_layers(model):
        params = sum(t.numel() for t in stack.layer[p.index].parameters())
        hc, nc = head_cost(p), neuron_cost(p)
        dense = params + (n_heads - p.num_heads) * hc + (n_neurons - p.num_neurons) * nc
        out.append(LayerCount(index=p.index, params=params, dense_params=dense, heads=p.num_heads,
                              dense_heads=n_heads, neurons=p.num_neurons, dense_neurons=n_neurons,
                              head_cost=hc, neuron_cost=nc))
    return out


@dataclass(frozen=True)
class SparsityReport:
    """Parameter counts of a (pruned) encoder and of its dense original."""

    encoder_params: int
    dense_encoder_params: int
    total_params: int
    """All parameters of the HF encoder: embeddings + layers (+ pooler)."""
    dense_total_params: int
    heads: int
    dense_heads: int
    neurons: int
    dense_neurons: int

    @property
    def sparsity(self) -> float:
        """Fraction of the dense encoder parameters (embeddings excluded) that is gone."""
        return 1.0 - self.encoder_params / self.dense_encoder_params

    @property
    def sparsity_with_embeddings(self) -> float:
        return 1.0 - self.total_params / self.dense_total_params

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sparsity": self.sparsity, "sparsity_with_embeddings": self.sparsity_with_embeddings}

    def __str__(self) -> str:
        return (f"encoder sparsity {100 * self.sparsity:.2f}% ({self.encoder_params:,} of "
                f"{self.dense_encoder_params:,} params), with embeddings {100 * self.sparsity_with_embeddings:.2f}% "
                f"({self.total_params:,} of {self.dense_total_params:,}); heads {self.heads}/{self.dense_heads}, "
                f"neurons {self.neurons}/{self.dense_neurons}")


def encoder_sparsity(model: nn.Module, dense_param_count: int | None = None) -> SparsityReport:
    """Actual sparsity of ``model``; ``dense_param_count`` (encoder only) overrides the reconstructed one."""
    counts = layer_counts(model)
    encoder = sum(t.numel() for t in encoder_stack(model).parameters())
    total = sum(t.numel() for t in unwrap(model).parameters())
    dense_encoder = encoder + sum(c.dense_params - c.params for c in counts)
    if dense_param_count is not None:
        dense_encoder = int(dense_param_count)
    return SparsityReport(
        encoder_params=encoder, dense_encoder_params=dense_encoder, total_params=total,
        dense_total_params=total + dense_encoder - encoder,
        heads=sum(c.heads for c in counts), dense_heads=sum(c.dense_heads for c in counts),
        neurons=sum(c.neurons for c in counts), dense_neurons=sum(c.dense_neurons for c in counts),
    )
