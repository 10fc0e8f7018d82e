"""Where the prunable pieces live in each supported encoder family (BERT, RoBERTa, MiniLM, DistilBERT)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LayerParts:
    """The modules of one transformer layer that structured pruning touches."""

    index: int
    attention: nn.Module
    """The self-attention module whose head count and ``all_head_size`` must stay true."""
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    """Input columns are grouped per head: ``[head0 dims | head1 dims | ...]``."""
    ffn_in: nn.Linear
    """Output rows are FFN neurons."""
    ffn_out: nn.Linear
    """Input columns are FFN neurons."""

    @property
    def head_size(self) -> int:
        return int(self.attention.attention_head_size)

    @property
    def num_heads(self) -> int:
        return self.query.out_features // self.head_size

    @property
    def num_neurons(self) -> int:
        return self.ffn_in.out_features


def unwrap(model: nn.Module) -> nn.Module:
    """The HF encoder inside a DDP wrapper and/or a :class:`sma.model.BiEncoder`."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / DataParallel
            model = model.module
        elif hasattr(model, "encoder") and hasattr(model, "tokenizer"):  # BiEncoder
            model = model.encoder
        else:
            return model


def encoder_layers(model: nn.Module) -> list[LayerParts]:
    """The prunable parts of every layer, in order. Raises ``TypeError`` for unsupported models."""
    enc = unwrap(model)
    if hasattr(enc, "encoder") and hasattr(enc.encoder, "layer"):  # BERT, RoBERTa, MiniLM, ELECTRA
        return [
            LayerParts(
                index=i, attention=layer.attention.self, query=layer.attention.self.query,
                key=layer.attention.self.key, value=layer.attention.self.value,
                attn_out=layer.attention.output.dense, ffn_in=layer.intermediate.dense,
                ffn_out=layer.output.dense,
            )
            for i, layer in enumerate(enc.encoder.layer)
        ]
    if hasattr(enc, "transformer") and hasattr(enc.transformer, "layer"):  # DistilBERT
        return [
            LayerParts(
                index=i, attention=layer.attention, query=layer.attention.q_lin, key=layer.attention.k_lin,
                value=layer.attention.v_lin, attn_out=layer.attention.out_lin, ffn_in=layer.ffn.lin1,
                ffn_out=layer.ffn.lin2,
            )
            for i, layer in enumerate(enc.transformer.layer)
        ]
    raise TypeError(f"unsupported encoder architecture: {type(enc).__name__}")


def structure(model: nn.Module) -> list[dict[str, int]]:
    """Per-layer ``{"heads": n, "neurons": m}``: what a pruned model must record to be rebuilt."""
    return [{"heads": p.num_heads, "neurons": p.num_neurons} for p in encoder_layers(model)]
