"""Speed of one distillation step in each ``distill.precision``, with the word embedding table trained and frozen
(``distill.freeze_word_embeddings``), measured side by side (``sma bench --training``).

A step is what recovery repeats: the student's forward pass on a random token batch (no padding) under
:func:`sma.model.autocast`, mean pooling, the float32 KD loss against fixed teacher embeddings, backward, gradient
clipping and the optimizer's update (:func:`sma.optim.adamw`, as in distillation). Each variant trains its own
copy of the model (its own optimizer state); the copies' steps alternate, the order flipping every repeat, after
warm-up. Ratios are the median of float32 with the table trained / the variant's median.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass

import torch
from torch import nn

from sma.bench import _time_interleaved
from sma.distill import freeze_word_embeddings, kd_loss
from sma.model import BiEncoder, autocast
from sma.optim import adamw
from sma.prune import unwrap

REFERENCE = "float32"
"""The variant every ratio divides: float32 with the word embedding table trained."""


def variant_label(precision: str, frozen: bool) -> str:
    """``float32``, ``bfloat16``, ``float32 frozen embeddings``, ..."""
    return f"{precision} frozen embeddings" if frozen else precision


@dataclass(frozen=True)
class TrainStepSpeed:
    """Seconds per distillation step of one model in each variant (:func:`variant_label`; float32 first)."""

    step_s: dict[str, tuple[float, ...]]
    batch_size: int
    seq_len: int
    threads: int

    def median_s(self, variant: str) -> float:
        return statistics.median(self.step_s[variant])

    def speedup(self, variant: str) -> float:
        """float32 median step time (table trained) / ``variant``'s."""
        return self.median_s(REFERENCE) / self.median_s(variant)

    def to_dict(self) -> dict[str, object]:
        return {"step_s": {p: list(t) for p, t in self.step_s.items()},
                "median_s": {p: self.median_s(p) for p in self.step_s},
                "speedup": {p: self.speedup(p) for p in self.step_s}, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "threads": self.threads, "reference": REFERENCE}


def train_step_speed(model: nn.Module, *, precisions: tuple[str, ...] = ("float32", "bfloat16"),
                     frozen: tuple[bool, ...] = (False, True), batch_size: int = 32, seq_len: int = 128,
                     repeats: int = 10, warmup: int = 2, threads: int = 2, device: str | torch.device = "cpu",
                     seed: int = 0) -> TrainStepSpeed:
    """Time a distillation step of (a copy of) ``model``'s encoder in each of ``precisions`` x ``frozen`` (the
    word embedding table trained / frozen; float32 with it trained always included, first); ``model`` is not
    changed."""
    device = torch.device(device)
    precisions = ("float32", *(p for p in precisions if p != "float32"))
    variants = [(p, f) for f in sorted(set(frozen) | {False}) for p in precisions]
    copies = [BiEncoder(copy.deepcopy(unwrap(model)).to(device=device, dtype=torch.float32), None).train()
              for _ in variants]  # the student's own forward: encoder, then its pooling in float32
    for m, (_, f) in zip(copies, variants, strict=True):
        if f:
            freeze_word_embeddings(m)
    optimizers = [adamw(m, lr=1e-5) for m in copies]
    config = copies[0].encoder.config
    gen = torch.Generator().manual_seed(seed)
    vocab = min(int(getattr(config, "vocab_size", 1000)), 30000)
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch_size, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    hidden = int(config.hidden_size)
    targets = torch.nn.functional.normalize(torch.randn(batch_size, hidden, generator=gen), dim=-1).to(device)

    def step(m: nn.Module, optimizer: torch.optim.Optimizer, precision: str) -> None:
        with autocast(device, precision):
            emb = m(input_ids=ids, attention_mask=mask)
        kd_loss(emb, targets, temperature=0.05).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = [(lambda m=m, o=o, p=p: step(m, o, p)) for m, o, (p, _) in zip(copies, optimizers, variants, strict=True)]
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for s in steps:
                s()
        times, _ = _time_interleaved(steps, repeats=repeats, device=device if device.type == "cuda" else None)
    finally:
        torch.set_num_threads(old_threads)
    return TrainStepSpeed(step_s={variant_label(*v): tuple(t) for v, t in zip(variants, times, strict=True)},
                          batch_size=batch_size, seq_len=seq_len, threads=threads)
