"""Bookkeeping of prunable units: original ids still present, dense sizes and parameter cost per unit.

Unit ids are always the ids of the *dense* model (head ``h`` of layer ``l`` keeps its id after other heads
are removed), so importance scores and plans computed on the dense model stay valid across pruning steps.
The ids a model still holds are stored on the HF encoder instance (not on its config, which models built
from the same config object share) and written to the saved structure file.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sma.prune.arch import LayerParts, encoder_layers, unwrap

_IDS_ATTR = "_sma_unit_ids"


@dataclass(frozen=True)
class LayerUnits:
    """The original ids of the heads and FFN neurons one layer still holds, in their current order."""

    heads: tuple[int, ...]
    neurons: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"heads": list(self.heads), "neurons": list(self.neurons)}


def dense_sizes(model: nn.Module) -> tuple[int, int]:
    """``(heads, neurons)`` per layer of the dense model, read from the (unchanged) config."""
    cfg = unwrap(model).config
    if hasattr(cfg, "n_heads") and hasattr(cfg, "hidden_dim"):  # DistilBERT
        return int(cfg.n_heads), int(cfg.hidden_dim)
    return int(cfg.num_attention_heads), int(cfg.intermediate_size)


def unit_ids(model: nn.Module) -> list[LayerUnits]:
    """Original head and neuron ids each layer still holds (``range(n)`` for a model never pruned)."""
    enc = unwrap(model)
    layers = encoder_layers(enc)
    stored: list[LayerUnits] | None = getattr(enc, _IDS_ATTR, None)
    if stored is None:
        return [LayerUnits(heads=tuple(range(p.num_heads)), neurons=tuple(range(p.num_neurons))) for p in layers]
    for p, units in zip(layers, stored, strict=True):
        if len(units.heads) != p.num_heads or len(units.neurons) != p.num_neurons:
            raise RuntimeError(f"layer {p.index}: recorded unit ids do not match the module sizes "
                               f"({len(units.heads)}/{p.num_heads} heads, {len(units.neurons)}/{p.num_neurons} "
                               "neurons); the model was changed outside sma.prune")
    return list(stored)


def set_unit_ids(model: nn.Module, ids: list[LayerUnits]) -> None:
    """Record the original ids each layer holds (called by ``apply_plan`` and ``load_pruned``)."""
    object.__setattr__(unwrap(model), _IDS_ATTR, list(ids))


def head_cost(p: LayerParts) -> int:
    """Parameters one head owns: its Q/K/V rows (+ biases) and its columns of the attention output."""
    d = p.head_size
    qkv = sum(lin.in_features + (lin.bias is not None) for lin in (p.query, p.key, p.value))
    return d * qkv + d * p.attn_out.out_features


def neuron_cost(p: LayerParts) -> int:
    """Parameters one FFN neuron owns: its input row (+ bias) and its output column."""
    return p.ffn_in.in_features + (p.ffn_in.bias is not None) + p.ffn_out.out_features


def encoder_stack(model: nn.Module) -> nn.Module:
    """The module holding all transformer layers (``encoder`` for BERT/RoBERTa, ``transformer`` for DistilBERT)."""
    enc = unwrap(model)
    if hasattr(enc, "encoder") and hasattr(enc.encoder, "layer"):
        return enc.encoder
    if hasattr(enc, "transformer") and hasattr(enc.transformer, "layer"):
        return enc.transformer
    raise TypeError(f"unsupported encoder architecture: {type(enc).__name__}")
