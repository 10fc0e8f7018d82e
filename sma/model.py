"""Bi-encoder over a BERT-family encoder: pooling, normalisation, batched encoding."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sma.model_source import (
    HOW_TO,
    OFFLINE_MODEL_NAMES,
    ModelNotFoundError,
    check_model,
    hub_offline,
    resolve_model_path,
)

__all__ = ["OFFLINE_MODEL_NAMES", "BiEncoder", "ModelNotFoundError", "resolve_model_path"]


def _load_hf(name: str):
    from transformers import AutoModel, AutoTokenizer

    from sma.prune.io import is_pruned_dir, load_pruned_encoder

    check_model(name)
    resolved = resolve_model_path(name)
    if Path(resolved).is_dir() and is_pruned_dir(resolved):
        encoder = load_pruned_encoder(resolved)
        return encoder, AutoTokenizer.from_pretrained(resolved)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        encoder = AutoModel.from_pretrained(resolved)
    except OSError as exc:
        if Path(resolved).exists():
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(f"model {name!r}: cannot load folder {resolved!r}: {first}") from exc
        raise ModelNotFoundError(
            f"model {name!r} is not a local directory and could not be loaded from the HF hub"
            f"{' (HF_HUB_OFFLINE=1)' if hub_offline('TRANSFORMERS_OFFLINE') else ''}: {HOW_TO}."
        ) from exc
    return encoder, tokenizer


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, ``model``'s HF encoder (inside a BiEncoder and/or DDP wrapper) recomputes each layer's
    activations during backward instead of keeping them (transformers' activation checkpointing, non-reentrant);
    turned off again on exit. Pruned encoders work the same: their layers are the library's own modules."""
    from sma.prune.arch import unwrap

    encoder = unwrap(model)
    if not enabled:
        yield
        return
    encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        encoder.activation_checkpointing_disable()


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """``torch.autocast`` on ``device``'s type in ``precision`` (a :data:`sma.config.choices.PRECISIONS` name,
    ``auto`` resolved by :func:`resolve_precision`); disabled for ``float32``."""
    precision = resolve_precision(precision, device)
    return torch.autocast(device.type, dtype=getattr(torch, precision), enabled=precision != "float32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``distill.precision`` on ``device``: ``auto`` is ``bfloat16`` where the device has native bfloat16
    matrix products (:func:`native_bfloat16`) and ``float32`` elsewhere, where bfloat16 would be slower; the
    other names are themselves."""
    if precision != "auto":
        return precision
    return "bfloat16" if native_bfloat16(device) else "float32"


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix products natively (CUDA: compute capability 8+; CPU: oneDNN with
    AVX512-BF16 or AMX). Without it bfloat16 autocast is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


GROUP_SIZES = (2, 4)
"""Numbers of length groups :func:`length_groups` considers for one batch."""
MIN_SAVING = 0.10
"""Share of padded token positions a split must save to be worth its extra, smaller forward passes (0.10 ran
cacm distillation batches 1.72x faster on 2 CPU cores, 0.25 1.39x; cranfield within noise of one pass)."""
MIN_GROUP_ROWS = 4


def length_groups(attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, int]] | None:
    """Rows of a right-padded batch split into groups of similar length, each with its longest length:
    ``[(row indices, width), ...]``; ``None`` when one pass over the whole batch is as good (a split must
    save :data:`MIN_SAVING` of the token positions, every group keeping :data:`MIN_GROUP_ROWS` rows).

    Every text's embedding is the same either way (padding is masked and right of the text); only
    fewer padded positions go through the encoder. A batch of 32 random cacm texts (median 28 tokens, cut
    at 128) pads to 2.2 times its real tokens in one pass and 1.2 times in four groups."""
    n, width = attention_mask.shape
    if n < 2 * MIN_GROUP_ROWS or width < 2 or not bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
        return None  # small, or not right-padded: one pass
    ordered, order = torch.sort(attention_mask.sum(1))
    best, best_cost = None, n * int(ordered[-1])
    for k in GROUP_SIZES:  # each further split must save MIN_SAVING of the best so far
        if n < k * MIN_GROUP_ROWS:
            break
        bounds = [round(i * n / k) for i in range(k + 1)]
        cost = sum((hi - lo) * int(ordered[hi - 1]) for lo, hi in zip(bounds, bounds[1:], strict=False))
        if cost <= (1 - MIN_SAVING) * best_cost:
            best, best_cost = bounds, cost
    if best is None:
        return None
    return [(order[lo:hi], int(ordered[hi - 1])) for lo, hi in zip(best, best[1:], strict=False)]


class BiEncoder(nn.Module):
    """Shared encoder for queries and documents; mean (or CLS) pooling; cosine or dot similarity."""

    def __init__(self, encoder: nn.Module, tokenizer, *, pooling: str = "mean", query_max_length: int = 64,
                 doc_max_length: int = 256, normalize: bool = True) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.query_max_length = query_max_length
        self.doc_max_length = doc_max_length
        self.normalize = normalize

    @classmethod
    def from_pretrained(cls, name: str, **kwargs) -> BiEncoder:
        encoder, tokenizer = _load_hf(name)
        return cls(encoder, tokenizer, **kwargs)

    @classmethod
    def from_config(cls, cfg, name: str | None = None) -> BiEncoder:
        """Build from a :class:`sma.config.ModelConfig` (``name`` overrides ``cfg.name``)."""
        return cls.from_pretrained(
            name or cfg.name, pooling=cfg.pooling, query_max_length=cfg.query_max_length,
            doc_max_length=cfg.doc_max_length, normalize=cfg.normalize,
        )

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def tokenize(self, texts: Sequence[str], *, kind: str) -> dict[str, torch.Tensor]:
        max_length = self.query_max_length if kind == "query" else self.doc_max_length
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled (and normalised) embedding, in float32 at least: token states in bfloat16 (under autocast) are
        pooled in float32, float64 ones (finite-difference checks) stay float64."""
        hidden = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, *, output_hidden_states: bool = False,
                group_lengths: bool = False) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Pooled embeddings; with ``output_hidden_states`` also every layer's token states (embeddings
        output first), for layer-wise distillation.

        With ``group_lengths`` (distillation batches), a batch of very uneven lengths (short queries next to
        long documents) runs as a few groups of similar length, each cut to its own longest text
        (:func:`length_groups`): the same embeddings and gradients for fewer padded tokens. One call is still
        one forward, as DDP requires. Off by default: forward hooks that read the whole batch's mask (the
        mechanistic analysis) see one pass."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        groups = length_groups(attention_mask) if group_lengths and not output_hidden_states else None
        if groups is not None:
            parts = [self.pool(self.encoder(**{k: v[rows, :width] for k, v in kwargs.items()}).last_hidden_state,
                               attention_mask[rows, :width]) for rows, width in groups]
            order = torch.cat([rows for rows, _ in groups])
            return torch.cat(parts)[torch.argsort(order)]
        out = self.encoder(**kwargs, output_hidden_states=output_hidden_states)
        pooled = self.pool(out.last_hidden_state, attention_mask)
        return (pooled, tuple(out.hidden_states)) if output_hidden_states else pooled

    def embed(self, texts: Sequence[str], *, kind: str) -> torch.Tensor:
        """Embed one batch with gradients (training)."""
        return self(**self.tokenize(texts, kind=kind))

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, kind: str, batch_size: int = 64, show_progress: bool = False,
               desc: str | None = None) -> torch.Tensor:
        """Embed many texts in eval mode; longest-first batching to save padding. Returns CPU float32."""
        was_training = self.training
        self.eval()
        try:
            order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
            out = torch.empty(0)
            chunks: list[torch.Tensor] = []
            starts: Iterable[int] = range(0, len(order), batch_size)
            if show_progress:
                starts = tqdm(starts, desc=desc or f"encode {kind}s", unit="batch")
            for start in starts:
                idx = order[start:start + batch_size]
                chunks.append(self.embed([texts[i] for i in idx], kind=kind).float().cpu())
            if chunks:
                out = torch.cat(chunks)
                inverse = torch.empty(len(order), dtype=torch.long)
                inverse[torch.tensor(order)] = torch.arange(len(order))
                out = out[inverse]
            return out
        finally:
            self.train(was_training)
