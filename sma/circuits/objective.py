"""The ranking objective on the probe (contrastive loss, pool nDCG@10) and its exact gradient per unit.

Loss: for every (query, positive) pair, InfoNCE of the positive against every pool document not judged
relevant to the query (its hard negatives and the other queries' documents), temperature ``tau``; mean over
pairs. Gradients use the GradCache pattern: embed everything without a graph, differentiate the loss with
respect to the embeddings, then re-run each batch with a graph and back-propagate those embedding gradients,
so the result is the exact gradient of the whole-probe loss at any probe size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from sma.circuits.config import AnalysisConfig
from sma.circuits.patching import ActivationStats, UnitMeans, patched
from sma.circuits.probe import ProbeSet, negative_mask
from sma.evaluate import score_run

Batch = tuple[tuple[int, ...], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ProbeBatches:
    """The probe tokenized once: ``(row indices, tokenizer output)`` batches, longest texts first."""

    probe: ProbeSet
    queries: tuple[Batch, ...]
    docs: tuple[Batch, ...]


def _batches(tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int) -> tuple[Batch, ...]:
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    out = []
    for start in range(0, len(order), batch_size):
        idx = tuple(order[start:start + batch_size])
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        out.append((idx, dict(enc)))
    return tuple(out)


def tokenize_probe(model, probe: ProbeSet, *, cfg: AnalysisConfig) -> ProbeBatches:
    return ProbeBatches(
        probe=probe,
        queries=_batches(model.tokenizer, probe.query_texts, max_length=cfg.query_max_length,
                         batch_size=cfg.batch_size),
        docs=_batches(model.tokenizer, probe.doc_texts, max_length=cfg.doc_max_length, batch_size=cfg.batch_size),
    )


@contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and frozen parameters (gradients reach only the patch gates); restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def embed(model, batches: Sequence[Batch], *, stats: ActivationStats | None = None,
          desc: str | None = None) -> torch.Tensor:
    """Embeddings of every row (no graph, the model's dtype), in row order; a progress bar if ``desc``."""
    rows = sum(len(idx) for idx, _ in batches)
    out: torch.Tensor | None = None
    with torch.no_grad():
        for idx, batch in tqdm(batches, desc=desc, unit="batch", leave=False, disable=desc is None):
            batch = to_device(batch, model.device)
            if stats is not None:
                stats.mask = batch["attention_mask"]
            emb = model(**batch).cpu()
            if out is None:
                out = torch.empty(rows, emb.shape[1], dtype=emb.dtype)
            out[list(idx)] = emb
    assert out is not None
    return out


def contrastive_loss(q_emb: torch.Tensor, d_emb: torch.Tensor, probe: ProbeSet, *, temperature: float,
                     neg: torch.Tensor | None = None) -> torch.Tensor:
    neg = negative_mask(probe) if neg is None else neg
    scores = q_emb @ d_emb.T / temperature
    qi = torch.tensor([q for q, pos in enumerate(probe.positives) for _ in pos])
    pi = torch.tensor([p for pos in probe.positives for p in pos])
    allowed = neg[qi].clone()
    allowed[torch.arange(len(pi)), pi] = True
    rows = scores[qi].masked_fill(~allowed, float("-inf"))
    return (torch.logsumexp(rows, dim=1) - scores[qi, pi]).mean()


def pool_ndcg(q_emb: torch.Tensor, d_emb: torch.Tensor, probe: ProbeSet) -> float:
    """nDCG@10 of ranking the probe pool for every probe query (ir-measures)."""
    scores = (q_emb @ d_emb.T).tolist()
    run = {q: dict(zip(probe.doc_ids, row, strict=True)) for q, row in zip(probe.query_ids, scores, strict=True)}
    return score_run(probe.qrels(), run, ("nDCG@10",)).mean["ndcg_at_10"]


@dataclass(frozen=True)
class ProbeScore:
    loss: float
    ndcg: float


def embed_probe(model, batches: ProbeBatches, *, head_gates: Sequence[torch.Tensor] | None = None,
                neuron_gates: Sequence[torch.Tensor] | None = None, means: UnitMeans | None = None,
                stats: ActivationStats | None = None, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and pool embeddings with the given units ablated (gates 0) towards ``means``."""
    with analysis_mode(model), patched(model, head_gates=head_gates, neuron_gates=neuron_gates, means=means):
        return (embed(model, batches.queries, stats=stats, desc=desc and f"{desc}: queries"),
                embed(model, batches.docs, stats=stats, desc=desc and f"{desc}: documents"))


def score_embeddings(q: torch.Tensor, d: torch.Tensor, probe: ProbeSet, *, temperature: float) -> ProbeScore:
    return ProbeScore(loss=float(contrastive_loss(q, d, probe, temperature=temperature)), ndcg=pool_ndcg(q, d, probe))


def evaluate_probe(model, batches: ProbeBatches, *, temperature: float,
                   head_gates: Sequence[torch.Tensor] | None = None,
                   neuron_gates: Sequence[torch.Tensor] | None = None, means: UnitMeans | None = None,
                   stats: ActivationStats | None = None) -> ProbeScore:
    """Probe loss and nDCG@10 with the given units ablated (gates 0) towards ``means``."""
    q, d = embed_probe(model, batches, head_gates=head_gates, neuron_gates=neuron_gates, means=means, stats=stats)
    return score_embeddings(q, d, batches.probe, temperature=temperature)


@dataclass
class Attribution:
    """Per layer and unit, sums over the probe of the unit's attribution ``G = (x - b) . dL/dx``.

    ``total``: sum over all tokens and sequences (= dL/dgate of one shared gate); ``abs_seq``: sum over
    sequences of |sum over the sequence's tokens|; ``sq_seq``: the same with squares; ``abs_token``: sum of
    |G| over every token.
    """

    total: tuple[list[torch.Tensor], list[torch.Tensor]]
    abs_seq: tuple[list[torch.Tensor], list[torch.Tensor]]
    sq_seq: tuple[list[torch.Tensor], list[torch.Tensor]]
    abs_token: tuple[list[torch.Tensor], list[torch.Tensor]]
    loss: float
    ndcg: float

    def get(self, kind: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return getattr(self, kind)


def attribute(model, batches: ProbeBatches, *, temperature: float, means: UnitMeans | None,
              head_gates: Sequence[torch.Tensor] | None = None,
              neuron_gates: Sequence[torch.Tensor] | None = None, desc: str = "attribution",
              embeddings: tuple[torch.Tensor, torch.Tensor] | None = None) -> Attribution:
    """One attribution pass (GradCache): every head's and neuron's ``G`` on the probe objective.

    ``embeddings``: :func:`embed_probe` output for the same gates, to skip the first (no-graph) pass.
    """
    from sma.prune.arch import encoder_layers

    layers = encoder_layers(model)
    acc = {k: ([torch.zeros(p.num_heads, dtype=torch.float64) for p in layers],
               [torch.zeros(p.num_neurons, dtype=torch.float64) for p in layers])
           for k in ("total", "abs_seq", "sq_seq", "abs_token")}
    probe = batches.probe
    kw = {"head_gates": head_gates, "neuron_gates": neuron_gates, "means": means}
    q, d = embeddings or embed_probe(model, batches, **kw)
    q, d = q.detach().clone().requires_grad_(True), d.detach().clone().requires_grad_(True)
    with analysis_mode(model):
        loss = contrastive_loss(q, d, probe, temperature=temperature)
        loss.backward()
        ndcg = pool_ndcg(q.detach(), d.detach(), probe)
        jobs = [(b, q.grad) for b in batches.queries] + [(b, d.grad) for b in batches.docs]
        for (idx, batch), grad in tqdm(jobs, desc=desc, unit="batch", leave=False):
            batch = to_device(batch, model.device)
            with patched(model, record=True, **kw) as patch:
                emb = model(**batch)
                emb.backward(grad[list(idx)].to(emb.device, emb.dtype))
            for pos, records in enumerate(patch.pop_records()):
                for layer, tgs in records.items():
                    g = sum(t.grad for t in tgs).double().cpu()  # (B, T, units); padding gets 0
                    per_seq = g.sum(1)
                    acc["total"][pos][layer] += per_seq.sum(0)
                    acc["abs_seq"][pos][layer] += per_seq.abs().sum(0)
                    acc["sq_seq"][pos][layer] += per_seq.pow(2).sum(0)
                    acc["abs_token"][pos][layer] += g.abs().sum((0, 1))
    return Attribution(**acc, loss=float(loss.detach()), ndcg=ndcg)
