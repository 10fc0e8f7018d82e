"""The probe set: queries from train/dev with their relevant documents and hard negatives (seeded)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

import torch

from sma.circuits.config import AnalysisConfig
from sma.config.sections import PSEUDO_QUERY_WORDS
from sma.data import Qrels, Queries, RetrievalData, doc_text
from sma.distill import pseudo_queries
from sma.negatives import bm25_ranking, dense_ranking


@dataclass(frozen=True)
class ProbeSet:
    """Probe queries and a candidate pool of documents; indices point into ``doc_ids``.

    ``relevant[q]`` holds every pool document judged relevant to query ``q`` (these are never treated
    as negatives), ``positives[q]`` the sampled ones the contrastive objective pulls towards the query.
    """

    dataset: str
    query_ids: tuple[str, ...]
    query_texts: tuple[str, ...]
    doc_ids: tuple[str, ...]
    doc_texts: tuple[str, ...]
    positives: tuple[tuple[int, ...], ...]
    negatives: tuple[tuple[int, ...], ...]
    relevant: tuple[tuple[tuple[int, int], ...], ...]
    """Per query: ``(pool index, relevance grade)`` of every judged-relevant pool document."""

    @property
    def num_pairs(self) -> int:
        return sum(len(p) for p in self.positives)

    def qrels(self) -> Qrels:
        """The probe's judgements (pool documents only), for ranking the pool with ir-measures."""
        return {q: {self.doc_ids[i]: g for i, g in rel} for q, rel in zip(self.query_ids, self.relevant, strict=True)}

    def subset(self, num_queries: int) -> ProbeSet:
        """The first ``num_queries`` queries, with the pool cut down to their own documents."""
        n = min(num_queries, len(self.query_ids))
        keep = sorted({i for q in range(n) for i in (*self.positives[q], *self.negatives[q])})
        remap = {old: new for new, old in enumerate(keep)}
        return ProbeSet(
            dataset=self.dataset, query_ids=self.query_ids[:n], query_texts=self.query_texts[:n],
            doc_ids=tuple(self.doc_ids[i] for i in keep), doc_texts=tuple(self.doc_texts[i] for i in keep),
            positives=tuple(tuple(remap[i] for i in p) for p in self.positives[:n]),
            negatives=tuple(tuple(remap[i] for i in p) for p in self.negatives[:n]),
            relevant=tuple(tuple((remap[i], g) for i, g in r if i in remap) for r in self.relevant[:n]),
        )

    def summary(self) -> dict:
        return {"dataset": self.dataset, "queries": len(self.query_ids), "pool_docs": len(self.doc_ids),
                "pairs": self.num_pairs, "query_ids": list(self.query_ids), "digest": self.digest()}

    def digest(self) -> str:
        payload = json.dumps([self.dataset, self.query_ids, self.doc_ids, self.positives, self.negatives,
                              self.relevant, self.query_texts, self.doc_texts])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _merged_split(data: RetrievalData, splits: tuple[str, ...]) -> tuple[Queries, Qrels]:
    queries: Queries = {}
    qrels: Qrels = {}
    for split in splits:
        if not data.qrels.get(split):
            continue  # a split the collection lacks: pseudo-queries may make the probe (checked up front)
        _, sq, sr = data.split(split)
        queries.update(sq)
        for q, docs in sr.items():
            qrels.setdefault(q, {}).update(docs)
    return queries, qrels


def build_probe(data: RetrievalData, *, cfg: AnalysisConfig, model=None) -> ProbeSet:
    """Seeded probe: ``cfg.probe_queries`` queries of ``cfg.probe_splits``, their positives, hard negatives."""
    queries, qrels = _merged_split(data, cfg.probe_splits)
    rng = random.Random(cfg.seed)
    qids = sorted(q for q, docs in qrels.items() if any(g > 0 for g in docs.values()))
    qids = rng.sample(qids, min(cfg.probe_queries, len(qids)))
    positives: dict[str, list[str]] = {}
    for q in qids:
        rel = sorted(d for d, g in qrels[q].items() if g > 0)
        rng.shuffle(rel)
        rel.sort(key=lambda d: -qrels[q][d])  # stable: seeded order among equal grades
        positives[q] = rel[:cfg.positives_per_query]
    if cfg.probe_pseudo_queries and len(qids) < cfg.probe_queries:
        pseudo = _pseudo_probe_queries(data, cfg.probe_queries - len(qids), seed=cfg.seed)
        queries = {**queries, **{q: text for q, (text, _) in pseudo.items()}}
        qrels = {**qrels, **{q: {d: 1} for q, (_, d) in pseudo.items()}}
        positives.update({q: [d] for q, (_, d) in pseudo.items()})
        qids = [*qids, *pseudo]  # judged queries first: the one-unit ablations use the first ones
    if not qids:
        raise ValueError(f"{data.name}: no probe queries in {', '.join(cfg.probe_splits)} and "
                         f"analysis.probe_pseudo_queries is off")
    depth = cfg.negatives_per_query + max(len(qrels[q]) for q in qids)
    texts = [queries[q] for q in qids]
    if cfg.negative_source == "bm25":
        ranked = bm25_ranking(data.corpus, queries, qids, k=depth)
    else:
        if model is None:
            raise ValueError("negative_source='dense' needs the model")
        ranked = dense_ranking(model, data.corpus, queries, qids, k=depth, batch_size=cfg.batch_size)
    negatives = {q: [d for d in ranked[q] if d not in qrels[q]][:cfg.negatives_per_query] for q in qids}
    pool = sorted({d for q in qids for d in (*positives[q], *negatives[q])})
    index = {d: i for i, d in enumerate(pool)}
    return ProbeSet(
        dataset=data.name, query_ids=tuple(qids), query_texts=tuple(texts), doc_ids=tuple(pool),
        doc_texts=tuple(doc_text(data.corpus[d]) for d in pool),
        positives=tuple(tuple(index[d] for d in positives[q]) for q in qids),
        negatives=tuple(tuple(index[d] for d in negatives[q]) for q in qids),
        relevant=tuple(tuple((index[d], g) for d, g in sorted(qrels[q].items()) if g > 0 and d in index)
                       for q in qids),
    )


PSEUDO_PREFIX = "pseudo:"
"""Query id of a pseudo-query: this + its source document's id."""


def _pseudo_probe_queries(data: RetrievalData, n: int, *, seed: int) -> dict[str, tuple[str, str]]:
    """``n`` label-free probe queries (fewer on a smaller corpus): ``{qid: (span of a document, that document)}``,
    the documents drawn without replacement (seeded) among those with enough words for a span."""
    rng = random.Random(f"probe-pseudo-{seed}")
    lo = PSEUDO_QUERY_WORDS[0]
    docs = sorted(d for d in data.corpus if len(doc_text(data.corpus[d]).split()) >= lo)
    picked = rng.sample(docs, min(n, len(docs)))
    spans = pseudo_queries([doc_text(data.corpus[d]) for d in picked], per_doc=1, words=PSEUDO_QUERY_WORDS,
                           seed=seed)
    return {PSEUDO_PREFIX + d: (text, d) for d, text in zip(picked, spans, strict=True)}


def negative_mask(probe: ProbeSet) -> torch.Tensor:
    """``[query, doc]`` true where the pool document is not judged relevant to the query."""
    mask = torch.ones(len(probe.query_ids), len(probe.doc_ids), dtype=torch.bool)
    for q, rel in enumerate(probe.relevant):
        for i, _ in rel:
            mask[q, i] = False
    return mask
