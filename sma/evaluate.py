"""Exact dense retrieval over the whole corpus and IR metrics through ir-measures (pytrec_eval)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ir_measures
import torch

from sma.data import Corpus, Qrels, Queries, doc_text
from sma.model import BiEncoder

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100", "AP")
_KEYS = {"nDCG@10": "ndcg_at_10", "RR@10": "mrr_at_10", "R@100": "recall_at_100", "AP": "map"}

Run = dict[str, dict[str, float]]


def metric_key(measure: str) -> str:
    """Stable metric name used in JSON and MLflow (``nDCG@10`` -> ``ndcg_at_10``)."""
    if measure in _KEYS:
        return _KEYS[measure]
    return measure.lower().replace("@", "_at_").replace("(", "_").replace(")", "").replace("=", "")


@dataclass(frozen=True)
class EvalResult:
    """Mean and per-query values of each metric, keyed by :func:`metric_key` names."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]
    num_queries: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "per_query": self.per_query, "num_queries": self.num_queries}


def score_run(qrels: Qrels, run: Run, metrics: Sequence[str] = DEFAULT_METRICS) -> EvalResult:
    """Compute ``metrics`` for ``run`` against ``qrels``. Queries absent from the run score 0."""
    measures = [ir_measures.parse_measure(m) for m in metrics]
    names = {str(m): metric_key(str(m)) for m in measures}
    per_query: dict[str, dict[str, float]] = {q: {k: 0.0 for k in names.values()} for q in qrels}
    for rec in ir_measures.iter_calc(measures, qrels, run):
        if rec.query_id in per_query:
            per_query[rec.query_id][names[str(rec.measure)]] = float(rec.value)
    n = len(per_query)
    mean = {k: (sum(v[k] for v in per_query.values()) / n if n else 0.0) for k in names.values()}
    return EvalResult(mean=mean, per_query=per_query, num_queries=n)


def retrieve(query_emb: torch.Tensor, doc_emb: torch.Tensor, qids: Sequence[str], dids: Sequence[str], *,
             top_k: int = 1000, chunk: int = 256) -> Run:
    """Exact inner-product search; returns the top ``top_k`` documents of each query."""
    k = min(top_k, len(dids))
    run: Run = {}
    for start in range(0, len(qids), chunk):
        scores = query_emb[start:start + chunk] @ doc_emb.T
        vals, idx = scores.topk(k, dim=1)
        for row, qid in enumerate(qids[start:start + chunk]):
            run[qid] = {dids[j]: float(v) for v, j in zip(vals[row].tolist(), idx[row].tolist(), strict=True)}
    return run


def encode_corpus(model: BiEncoder, corpus: Corpus, *, batch_size: int = 64, show_progress: bool = True,
                  ) -> tuple[list[str], torch.Tensor]:
    dids = list(corpus)
    emb = model.encode([doc_text(corpus[d]) for d in dids], kind="doc", batch_size=batch_size,
                       show_progress=show_progress, desc="encode corpus")
    return dids, emb


def evaluate(model: BiEncoder, corpus: Corpus, queries: Queries, qrels: Qrels, *,
             metrics: Sequence[str] = DEFAULT_METRICS, batch_size: int = 64, show_progress: bool = True,
             corpus_embeddings: tuple[list[str], torch.Tensor] | None = None) -> EvalResult:
    """Encode the corpus and the judged queries, retrieve exactly, score with ir-measures."""
    dids, doc_emb = corpus_embeddings or encode_corpus(model, corpus, batch_size=batch_size,
                                                       show_progress=show_progress)
    qids = [q for q in qrels if q in queries]
    q_emb = model.encode([queries[q] for q in qids], kind="query", batch_size=batch_size)
    run = retrieve(q_emb, doc_emb, qids, dids)
    return score_run(qrels, run, metrics)
