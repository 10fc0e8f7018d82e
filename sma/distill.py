"""Knowledge distillation from the dense teacher: loss = alpha * KD + (1 - alpha) * contrastive task loss.

KD needs no labels: the student's pooled embedding of a text is pulled to the teacher's (squared L2 on
normalised embeddings) and the student's in-batch similarity distribution to the teacher's (KL with a
temperature); optionally every layer's token states are pulled to the teacher's too (``hidden_weight``,
the layer distillation of TinyBERT and CoFi; width pruning keeps the hidden size, so no projection).
The unlabeled texts are every corpus document plus the training queries (documents act as pseudo-queries
when queries are few); by default half of each batch is groups of teacher nearest neighbours
(:class:`BatchSampler`). The task loss is InfoNCE on (query, relevant document) training pairs.
Teacher embeddings are computed once per (teacher, texts, max length) and reused.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from sma.config import DistillConfig
from sma.model import BiEncoder, autocast
from sma.optim import adamw
from sma.prune.arch import unwrap
from sma.train import check_finite, contrastive_loss


@dataclass(frozen=True)
class DistillTexts:
    """Unlabeled texts (documents and training queries) and the teacher's embeddings of them."""

    texts: tuple[str, ...]
    teacher: torch.Tensor  # [n, dim], normalised


def freeze_word_embeddings(model: nn.Module) -> None:
    """Keep ``model``'s (a BiEncoder, HF encoder or DDP wrapper of one; before DDP wraps it) token embedding
    table out of training: the student keeps the teacher's table, which pruning never touches.

    The table (30522 x 384 on all-MiniLM-L6-v2) is most of a pruned student's weights: trained, every step
    fills its dense gradient, clips it and moves all of it in AdamW (weight decay reaches rows no text used),
    a sixth to a quarter of a bfloat16 step of a 50 % MiniLM on cacm's short texts (with the fused AdamW)."""
    unwrap(model).get_input_embeddings().weight.requires_grad_(False)


def pseudo_queries(docs: Sequence[str], *, per_doc: int, words: tuple[int, int], seed: int) -> list[str]:
    """Query-like texts cut from documents without labels: ``per_doc`` random spans of ``words[0]`` to
    ``words[1]`` consecutive words from each document (seeded; a shorter document gives itself whole).

    Retrieval queries are short; a student distilled on 128-token documents alone never sees inputs like
    them. Spans of the corpus itself (the cropping of Contriever, Izacard et al. 2022) fill that gap.
    """
    lo, hi = words
    if per_doc < 0 or not 1 <= lo <= hi:
        raise ValueError(f"need per_doc >= 0 and 1 <= words[0] <= words[1], got {per_doc}, {words}")
    rng = random.Random(seed)
    out = []
    for doc in docs:
        tokens = doc.split()
        for _ in range(per_doc):
            n = rng.randint(lo, hi)
            start = rng.randint(0, max(0, len(tokens) - n))
            out.append(" ".join(tokens[start:start + n]))
    return out


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Squared L2 between embeddings + KL between in-batch similarity distributions (teacher || student).

    Zero when ``student == teacher``. Rows are texts; the similarity of each text to the others in the
    batch (itself excluded) is a distribution over the batch.
    """
    mse = (student - teacher).pow(2).sum(-1).mean()
    n = student.shape[0]
    if n < 2:
        return mse
    eye = torch.eye(n, dtype=torch.bool, device=student.device)
    s_logits = (student @ student.T / temperature).masked_fill(eye, -1e4)
    t_logits = (teacher @ teacher.T / temperature).masked_fill(eye, -1e4)
    kl = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="batchmean")
    return mse + kl


def hidden_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers (embeddings output excluded) of the squared error per hidden unit, averaged over the
    real tokens of the batch (padding masked). Zero when the states are equal."""
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} hidden states, teacher {len(teacher)}: depth must match")
    mask = attention_mask.unsqueeze(-1).to(student[-1].dtype)
    tokens = mask.sum().clamp(min=1.0)
    per_layer = [((s - t.to(s.dtype)).pow(2).mean(-1, keepdim=True) * mask).sum() / tokens
                 for s, t in zip(student[1:], teacher[1:], strict=True)]
    return torch.stack(per_layer).mean()


def _tokenize(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _embed(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """One forward pass over ``texts`` (queries and documents alike: the encoder is shared and the max length
    is one). ``model`` is a BiEncoder or a DDP wrapper of one, so DDP sees exactly one forward per step."""
    return model(**_tokenize(model, tokenizer, texts, max_length), group_lengths=True)


def nearest_neighbors(emb: torch.Tensor, *, k: int, chunk: int = 2048) -> torch.Tensor:
    """``[n, k]`` indices of each row's ``k`` most similar other rows (dot product, itself excluded),
    most similar first; computed in chunks of rows so memory stays ``chunk * n``."""
    n = emb.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < number of texts ({n}), got {k}")
    out = []
    for start in range(0, n, chunk):
        sims = emb[start:start + chunk] @ emb.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = float("-inf")
        out.append(sims.topk(k, dim=-1).indices)
    return torch.cat(out)


class BatchSampler:
    """The texts of each training step: ``world_size`` blocks of ``batch_size`` indices, one per rank.

    With ``neighbor_share = 0`` a block is the next texts of a seeded shuffle. Otherwise ``neighbor_share``
    of each block is filled with groups of an anchor text and ``neighbors`` texts drawn from its
    ``2 * neighbors`` nearest by teacher embedding, the rest with shuffled texts as before. The in-batch KL
    then has to order close neighbours the way the teacher does, as a top-10 ranking must (the topic-aware
    batches of TAS-B, Hofstaetter et al. 2021, without the clustering).
    """

    def __init__(self, teacher: torch.Tensor, *, batch_size: int, rng: random.Random, world_size: int = 1,
                 neighbor_share: float = 0.0, neighbors: int = 7) -> None:
        if not 0.0 <= neighbor_share <= 1.0 or neighbors < 1:
            raise ValueError(f"need 0 <= neighbor_share <= 1 and neighbors >= 1, got {neighbor_share}, {neighbors}")
        self.n = teacher.shape[0]
        self.batch_size, self.world_size, self.neighbors = batch_size, world_size, neighbors
        self.rng = rng
        self.size = min(batch_size, self.n)
        fits = self.n > neighbors + 1
        self.groups = int(neighbor_share * self.size) // (neighbors + 1) if fits else 0
        self.near = nearest_neighbors(teacher, k=min(2 * neighbors, self.n - 1)).tolist() if self.groups else []
        self._order: list[int] = []
        self._anchors: list[int] = []
        self.last_groups: list[list[int]] = []
        """The neighbour groups of the last block (anchor first), for inspection."""

    def _pop(self, pool: list[int]) -> int:
        if not pool:
            pool.extend(range(self.n))
            self.rng.shuffle(pool)
        return pool.pop()

    def _block(self) -> list[int]:
        block: list[int] = []
        self.last_groups = []
        for _ in range(self.groups):
            anchor = self._pop(self._anchors)
            for _ in range(self.n):  # an anchor already in the block would repeat a text: take the next
                if anchor not in block:
                    break
                anchor = self._pop(self._anchors)
            free = [j for j in self.near[anchor] if j not in block]
            group = [anchor] + self.rng.sample(free, min(self.neighbors, len(free)))
            self.last_groups.append(group)
            block += group
        del block[self.size:]
        seen = set(block)
        while len(block) < self.size:
            i = self._pop(self._order)
            if i not in seen:
                block.append(i)
                seen.add(i)
        return block

    def next(self) -> list[list[int]]:
        """One block of indices per rank."""
        if self.groups == 0:  # plain shuffled batches, exactly as without the sampler
            k = self.batch_size * self.world_size
            if len(self._order) < k:
                perm = list(range(self.n))
                self.rng.shuffle(perm)
                self._order.extend(perm)
            chunk, self._order = self._order[:k], self._order[k:]
            return [chunk[r::self.world_size] for r in range(self.world_size)]
        return [self._block() for _ in range(self.world_size)]


@torch.inference_mode()
def teacher_embeddings(teacher: BiEncoder, texts: Sequence[str], *, max_length: int, batch_size: int = 64,
                       show_progress: bool = True) -> torch.Tensor:
    teacher.eval()
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="teacher embeddings", disable=not show_progress):
        chunks.append(_embed(teacher, teacher.tokenizer, texts[start:start + batch_size], max_length).float().cpu())
    return torch.cat(chunks)


@dataclass(frozen=True)
class TaskPairs:
    """Labeled (query text, doc text) training pairs for the task loss, with ids for masking."""

    qids: tuple[str, ...]
    dids: tuple[str, ...]
    queries: dict[str, str]
    docs: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _lr_scheduler(optimizer: torch.optim.Optimizer, cfg: DistillConfig, updates: int):
    warmup = int(cfg.warmup_ratio * updates)
    if cfg.lr_schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, updates)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def _batch_loss(student: nn.Module, texts: DistillTexts, idx: list[int], cfg: DistillConfig, *,
                task: TaskPairs | None, rng: random.Random, teacher: BiEncoder | None,
                task_temperature: float) -> torch.Tensor:
    """``alpha * KD`` on the texts ``idx`` (+ layer KD) ``+ (1 - alpha) *`` InfoNCE on sampled task pairs."""
    bi: BiEncoder = student.module if hasattr(student, "module") else student  # type: ignore[assignment]
    alpha = cfg.alpha
    kd_texts = [texts.texts[i] for i in idx] if alpha > 0 else []
    qids: list[str] = []
    dids: list[str] = []
    if task is not None:
        pick = [rng.randrange(len(task.qids)) for _ in range(min(cfg.batch_size, len(task.qids)))]
        qids = [task.qids[i] for i in pick]
        dids = [task.dids[i] for i in pick]
    batch = _tokenize(student, bi.tokenizer,
                      kd_texts + [task.queries[x] for x in qids] + [task.docs[x] for x in dids], cfg.max_length)
    layer_kd = cfg.hidden_weight > 0 and bool(kd_texts)
    with autocast(batch["input_ids"].device, cfg.precision):  # the student's passes only: losses in float32
        if layer_kd:
            emb, s_hidden = student(**batch, output_hidden_states=True)
            s_hidden = tuple(h.float() for h in s_hidden)
        else:
            emb = student(**batch, group_lengths=True)
    loss = torch.zeros((), device=emb.device)
    if kd_texts:
        s = emb[:len(kd_texts)]
        kd = kd_loss(s, texts.teacher[idx].to(s.device), temperature=cfg.temperature)
        if layer_kd:
            kd_batch = {k: v[:len(kd_texts)] for k, v in batch.items()}
            with torch.no_grad():
                teacher.eval()
                _, t_hidden = teacher(**kd_batch, output_hidden_states=True)
            kd = kd + cfg.hidden_weight * hidden_loss([h[:len(kd_texts)] for h in s_hidden], t_hidden,
                                                      kd_batch["attention_mask"])
        loss = loss + alpha * kd
    if qids:
        q = emb[len(kd_texts):len(kd_texts) + len(qids)]
        d = emb[len(kd_texts) + len(qids):]
        loss = loss + (1 - alpha) * contrastive_loss(q, d, qids=qids, dids=dids,
                                                     pos_index=torch.arange(len(qids), device=q.device),
                                                     qrels=task.qrels, temperature=task_temperature)
    return loss


def distill_epochs(student: nn.Module, texts: DistillTexts, cfg: DistillConfig, *, epochs: float, seed: int,
                   task: TaskPairs | None = None, teacher: BiEncoder | None = None, rank: int = 0,
                   world_size: int = 1, on_epoch: Callable[[int, float], None] | None = None,
                   show_progress: bool = True, desc: str = "distill", task_temperature: float = 0.05) -> list[float]:
    """Train ``student`` (a BiEncoder, possibly DDP-wrapped) for ``epochs`` (fractions allowed) over the
    unlabeled texts as ``cfg`` says; returns the mean loss per (partial) epoch. A fresh AdamW each call:
    pruning changes shapes.

    Batches come from :class:`BatchSampler` (``cfg.neighbor_share``, ``cfg.neighbors``); every
    ``cfg.gradient_accumulation`` batches make one optimizer step. With ``cfg.hidden_weight > 0`` the KD term
    adds :func:`hidden_loss` against ``teacher`` (run forward on the same batch, no gradients). The learning
    rate warms up linearly over ``cfg.warmup_ratio`` of the call's optimizer steps, then stays
    (``constant``) or decays linearly to zero at the last step (``linear``). A NaN or infinite loss raises
    :class:`sma.train.NonFiniteLoss` naming ``desc``, the epoch and the step.
    """
    if epochs <= 0:
        return []
    if cfg.max_length is None:
        raise ValueError("distill.max_length is unset: a run derives it from the collection "
                         "(sma.collection_profile.derived_distill_length); pass a length here")
    if cfg.hidden_weight > 0 and teacher is None:
        raise ValueError("distill.hidden_weight > 0 needs the teacher model")
    use_task = cfg.alpha < 1.0 and task is not None and len(task.qids) > 0
    if cfg.alpha <= 0 and not use_task:
        return []
    optimizer = adamw(student, lr=cfg.learning_rate)
    rng = random.Random(seed)
    batches_per_epoch = max(1, math.ceil(len(texts.texts) / cfg.batch_size / world_size))
    total = max(1, round(epochs * batches_per_epoch))
    accumulate = cfg.gradient_accumulation
    scheduler = _lr_scheduler(optimizer, cfg, math.ceil(total / accumulate))
    losses: list[float] = []
    current: list[float] = []
    student.train()
    optimizer.zero_grad(set_to_none=True)
    sampler = BatchSampler(texts.teacher, batch_size=cfg.batch_size, rng=rng, world_size=world_size,
                           neighbor_share=cfg.neighbor_share, neighbors=cfg.neighbors)
    bar = tqdm(range(total), desc=desc, disable=not show_progress or rank != 0)
    for step in bar:
        update = (step + 1) % accumulate == 0 or step + 1 == total
        sync = contextlib.nullcontext() if update or not hasattr(student, "no_sync") else student.no_sync()
        with sync:
            loss = _batch_loss(student, texts, sampler.next()[rank], cfg, task=task if use_task else None,
                               rng=rng, teacher=teacher, task_temperature=task_temperature)
            value = check_finite(loss.item(), where=desc, epoch=step // batches_per_epoch + 1,
                                 step=step % batches_per_epoch + 1)
            (loss / accumulate).backward()
        if update:
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        current.append(value)
        bar.set_postfix(loss=f"{value:.4f}")
        if (step + 1) % batches_per_epoch == 0 or step + 1 == total:
            losses.append(sum(current) / len(current))
            current = []
            if on_epoch is not None:
                on_epoch(len(losses), losses[-1])
    student.eval()
    return losses
