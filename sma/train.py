"""Baseline contrastive fine-tuning of the bi-encoder on train qrels (in-batch + optional hard negatives)."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from sma.config import TrainConfig
from sma.data import Corpus, Qrels, Queries, doc_text
from sma.model import BiEncoder
from sma.negatives import bm25_ranking, dense_ranking, mine_negatives
from sma.optim import adamw

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainStats:
    epochs: int
    steps: int
    pairs: int
    losses: tuple[float, ...]
    """Mean loss per epoch."""


class NonFiniteLoss(FloatingPointError):
    """A training loss became NaN or infinite: the run cannot recover, so it stops with where it happened."""


def check_finite(loss: float, *, where: str, epoch: int, step: int) -> float:
    """``loss`` if finite; else :class:`NonFiniteLoss` naming ``where`` and the (1-based) epoch and step."""
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"{where}: the loss is {loss} at epoch {epoch}, step {step} (diverged; a lower "
                            "learning rate or gradient clipping may help)")
    return loss


def training_pairs(queries: Queries, qrels: Qrels) -> list[tuple[str, str]]:
    """Every (query id, relevant doc id) pair with relevance > 0, in a stable order."""
    return [(q, d) for q in sorted(qrels) if q in queries for d, r in sorted(qrels[q].items()) if r > 0]


def contrastive_loss(q_emb: torch.Tensor, d_emb: torch.Tensor, *, qids: list[str], dids: list[str],
                     pos_index: torch.Tensor, qrels: Qrels, temperature: float) -> torch.Tensor:
    """InfoNCE over all documents in the batch; other positives of the same query are masked out."""
    scores = q_emb @ d_emb.T / temperature
    positives = pos_index.tolist()
    mask = torch.zeros(scores.shape, dtype=torch.bool)  # built on the CPU, moved once
    for i, q in enumerate(qids):
        rel = qrels.get(q, {})
        for j, d in enumerate(dids):
            if j != positives[i] and rel.get(d, 0) > 0:
                mask[i, j] = True
    scores = scores.masked_fill(mask.to(scores.device), float("-inf"))
    return F.cross_entropy(scores, pos_index.to(scores.device))


def _negatives(model: BiEncoder, corpus: Corpus, queries: Queries, qrels: Qrels, how: str) -> dict[str, list[str]]:
    if how == "none":
        return {}
    qids = sorted(q for q in qrels if q in queries)
    if how == "bm25":
        ranking = bm25_ranking(corpus, queries, qids, k=30)
    elif how == "dense":
        ranking = dense_ranking(model, corpus, queries, qids, k=30)
    else:
        raise ValueError(f"hard_negatives must be none, bm25 or dense, got {how!r}")
    return mine_negatives(ranking, qrels, per_query=5)


def train_baseline(model: BiEncoder, corpus: Corpus, queries: Queries, qrels: Qrels, cfg: TrainConfig, *,
                   seed: int, show_progress: bool = True) -> TrainStats:
    """Fine-tune ``model`` in place. ``cfg.baseline_epochs == 0`` returns at once."""
    if cfg.baseline_epochs <= 0:
        return TrainStats(epochs=0, steps=0, pairs=0, losses=())
    pairs = training_pairs(queries, qrels)
    if not pairs:
        raise ValueError("no training pairs: the train split has no positive judgements")
    negatives = _negatives(model, corpus, queries, qrels, cfg.hard_negatives)
    rng = random.Random(seed)
    batches_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    if cfg.baseline_batches_per_epoch is not None:
        batches_per_epoch = cfg.baseline_batches_per_epoch  # cycles through the pairs when larger
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation)
    total_steps = steps_per_epoch * cfg.baseline_epochs
    optimizer = adamw(model, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model.train()
    losses: list[float] = []
    step = 0
    for epoch in range(cfg.baseline_epochs):
        order: list[tuple[str, str]] = []
        while len(order) < batches_per_epoch * cfg.batch_size:
            chunk = list(pairs)
            rng.shuffle(chunk)
            order.extend(chunk)
        epoch_losses = []
        bar = tqdm(range(batches_per_epoch), desc=f"baseline epoch {epoch + 1}/{cfg.baseline_epochs}",
                   disable=not show_progress)
        for b in bar:
            batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            qids = [q for q, _ in batch]
            dids = [d for _, d in batch]
            for q in qids:
                if negatives.get(q):
                    dids.append(rng.choice(negatives[q]))
            q_emb = model.embed([queries[q] for q in qids], kind="query")
            d_emb = model.embed([doc_text(corpus[d]) for d in dids], kind="doc")
            loss = contrastive_loss(q_emb, d_emb, qids=qids, dids=dids, pos_index=torch.arange(len(qids)),
                                    qrels=qrels, temperature=cfg.temperature)
            value = check_finite(loss.item(), where="baseline training", epoch=epoch + 1, step=b + 1)
            (loss / cfg.gradient_accumulation).backward()
            epoch_losses.append(value)
            if (b + 1) % cfg.gradient_accumulation == 0 or b + 1 == batches_per_epoch:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            bar.set_postfix(loss=f"{value:.4f}")
        losses.append(sum(epoch_losses) / len(epoch_losses))
        log.info("baseline epoch %d: mean loss %.4f", epoch + 1, losses[-1])
    model.eval()
    return TrainStats(epochs=cfg.baseline_epochs, steps=step, pairs=len(pairs), losses=tuple(losses))
