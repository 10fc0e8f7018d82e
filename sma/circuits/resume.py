"""Re-run an encoder from layer ``l`` on cached inputs: ablating a unit of layer ``l`` leaves layers
``0..l-1`` untouched, so one-at-a-time ablations only pay for the layers they change.

The inputs (positional and keyword arguments) each transformer layer received in a clean forward pass are
captured by pre-hooks, so the resumed pass calls the layers exactly as the model does (same attention mask
format, same extra arguments). Works for encoders whose last layer's output is the final hidden state
(BERT, RoBERTa, MiniLM, ELECTRA, DistilBERT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sma.circuits.objective import Batch, to_device
from sma.prune.units import encoder_stack


@dataclass(frozen=True)
class CachedBatch:
    rows: tuple[int, ...]
    attention_mask: torch.Tensor
    layer_inputs: tuple[tuple[tuple, dict], ...]
    """Per layer: the ``(args, kwargs)`` it was called with in the clean pass."""


def _layers(model: nn.Module) -> nn.ModuleList:
    return encoder_stack(model).layer


def cache_inputs(model, batches: Sequence[Batch]) -> tuple[CachedBatch, ...]:
    """One clean forward pass per batch, recording every layer's call arguments (no graph)."""
    layers = _layers(model)
    out = []
    for idx, batch in batches:
        batch = to_device(batch, model.device)
        calls: list[tuple[tuple, dict]] = []

        def record(module: nn.Module, args: tuple, kwargs: dict, calls: list = calls) -> None:
            calls.append((args, dict(kwargs)))

        handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
        try:
            with torch.no_grad():
                model.encoder(**batch)
        finally:
            for h in handles:
                h.remove()
        if len(calls) != len(layers):
            raise RuntimeError(f"expected {len(layers)} layer calls per forward pass, saw {len(calls)}")
        out.append(CachedBatch(rows=idx, attention_mask=batch["attention_mask"], layer_inputs=tuple(calls)))
    return tuple(out)


def embed_from(model, cached: Sequence[CachedBatch], *, start: int) -> torch.Tensor:
    """Embeddings (rows in order) computed from layer ``start`` on, with whatever hooks are installed."""
    layers = _layers(model)
    rows = sum(len(c.rows) for c in cached)
    result: torch.Tensor | None = None
    with torch.no_grad():
        for c in cached:
            args, kwargs = c.layer_inputs[start]
            hidden = args[0] if args else kwargs["hidden_states"]
            for i in range(start, len(layers)):
                args, kwargs = c.layer_inputs[i]
                kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                out = layers[i](hidden, *args[1:], **kw)
                hidden = out[0] if isinstance(out, tuple) else out
            emb = model.pool(hidden, c.attention_mask).cpu()
            if result is None:
                result = torch.empty(rows, emb.shape[1], dtype=emb.dtype)
            result[list(c.rows)] = emb
    assert result is not None
    return result
