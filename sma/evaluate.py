"""Evaluation of an encoder, teacher or student: exact dense retrieval over the whole corpus, IR metrics through
ir-measures (pytrec_eval), and label-free agreement between a pruned student and its dense teacher.

Retention (pruned nDCG@10 / dense nDCG@10) on a split of a hundred queries moves by a point or more between
seeds of the same recipe. The student's agreement with the teacher is a far less noisy view of the same
recovery, and it says *what* is off: the mean cosine between the student's and the teacher's embedding of
every corpus document and of every judged query of a split (at evaluation lengths), and the share of the
teacher's top-10 documents per query that the student also ranks in its top 10. A student that matches the
teacher exactly scores 1.0 on all three, whatever the labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ir_measures
import torch
import torch.nn.functional as F

from sma.data import Corpus, Qrels, Queries, RetrievalData, doc_text
from sma.model import BiEncoder

if TYPE_CHECKING:
    from sma.config import RunConfig

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100", "AP")
_KEYS = {"nDCG@10": "ndcg_at_10", "RR@10": "mrr_at_10", "R@100": "recall_at_100", "AP": "map"}

Run = dict[str, dict[str, float]]
CorpusEmbeddings = tuple[list[str], torch.Tensor]
"""Document ids (corpus order) and their embeddings, rows in the same order."""


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
                  ) -> CorpusEmbeddings:
    """Every document of ``corpus`` at eval lengths, in corpus order."""
    dids = list(corpus)
    emb = model.encode([doc_text(corpus[d]) for d in dids], kind="doc", batch_size=batch_size,
                       show_progress=show_progress, desc="encode corpus")
    return dids, emb


def evaluate(model: BiEncoder, corpus: Corpus, queries: Queries, qrels: Qrels, *,
             metrics: Sequence[str] = DEFAULT_METRICS, batch_size: int = 64, show_progress: bool = True,
             corpus_embeddings: CorpusEmbeddings | None = None) -> EvalResult:
    """Encode the corpus (unless ``corpus_embeddings`` are given) and the judged queries, retrieve exactly,
    score with ir-measures."""
    dids, doc_emb = corpus_embeddings or encode_corpus(model, corpus, batch_size=batch_size,
                                                       show_progress=show_progress)
    qids = [q for q in qrels if q in queries]
    q_emb = model.encode([queries[q] for q in qids], kind="query", batch_size=batch_size)
    run = retrieve(q_emb, doc_emb, qids, dids)
    return score_run(qrels, run, metrics)


def evaluate_splits(model: BiEncoder, data: RetrievalData, cfg: RunConfig, splits: tuple[str, ...] | None = None,
                    *, corpus_embeddings: CorpusEmbeddings | None = None) -> dict[str, EvalResult]:
    """Dev and test metrics (or ``splits``) with one corpus encoding shared by the splits (``corpus_embeddings``
    when the caller already has it: document ids and their embeddings by ``model``)."""
    corpus_emb = corpus_embeddings or encode_corpus(model, data.corpus, batch_size=cfg.eval.batch_size,
                                                    show_progress=cfg.eval.show_progress)
    out = {}
    for split in splits or (cfg.data.dev_split, cfg.data.test_split):
        if split in data.qrels:
            corpus, queries, qrels = data.split(split)
            out[split] = evaluate(model, corpus, queries, qrels, metrics=cfg.eval.metrics,
                                  batch_size=cfg.eval.batch_size, corpus_embeddings=corpus_emb)
    return out


@dataclass(frozen=True)
class EvalEmbeddings:
    """Embeddings of the whole corpus (corpus order) and of each split's judged queries (sorted ids)."""

    doc_ids: tuple[str, ...]
    docs: torch.Tensor
    query_ids: dict[str, tuple[str, ...]]
    queries: dict[str, torch.Tensor]

    def to_dict(self) -> dict:
        return {"doc_ids": list(self.doc_ids), "docs": self.docs,
                "query_ids": {s: list(v) for s, v in self.query_ids.items()}, "queries": self.queries}

    @classmethod
    def from_dict(cls, d: dict) -> EvalEmbeddings:
        return cls(doc_ids=tuple(d["doc_ids"]), docs=d["docs"],
                   query_ids={s: tuple(v) for s, v in d["query_ids"].items()}, queries=d["queries"])


def eval_embeddings(model: BiEncoder, data: RetrievalData, splits: tuple[str, ...], *, batch_size: int = 64,
                    show_progress: bool = True, docs: tuple[tuple[str, ...], torch.Tensor] | None = None,
                    ) -> EvalEmbeddings:
    """Encode the corpus (unless ``docs`` is given; documents in corpus order) and the judged queries of
    ``splits`` at eval lengths."""
    if docs is None:
        dids, emb = encode_corpus(model, data.corpus, batch_size=batch_size, show_progress=show_progress)
        docs = (tuple(dids), emb)
    qids = {s: tuple(sorted(data.qrels[s])) for s in splits if s in data.qrels}
    queries = {s: model.encode([data.queries[q] for q in ids], kind="query", batch_size=batch_size)
               for s, ids in qids.items()}
    return EvalEmbeddings(doc_ids=docs[0], docs=docs[1], query_ids=qids, queries=queries)


def evaluate_model(model: BiEncoder, data: RetrievalData, cfg: RunConfig,
                   splits: tuple[str, ...] | None = None) -> tuple[dict[str, EvalResult], EvalEmbeddings]:
    """Metrics of ``splits`` (default dev and test) and the :class:`EvalEmbeddings` agreement needs, from one
    encoding of the corpus."""
    splits = splits or (cfg.data.dev_split, cfg.data.test_split)
    emb = eval_embeddings(model, data, splits, batch_size=cfg.eval.batch_size, show_progress=cfg.eval.show_progress)
    metrics = evaluate_splits(model, data, cfg, splits, corpus_embeddings=(list(emb.doc_ids), emb.docs))
    return metrics, emb


@dataclass(frozen=True)
class Agreement:
    """Student-teacher agreement on one split (the corpus is shared by all splits)."""

    corpus_cosine: float
    """Mean cosine between student and teacher embeddings of the corpus documents."""
    query_cosine: float
    """Mean cosine between student and teacher embeddings of the split's judged queries."""
    top10_overlap: float
    """Mean over queries of |student top 10 & teacher top 10| / 10 (exact retrieval over the corpus)."""


def top_k_overlap(student_q: torch.Tensor, student_d: torch.Tensor, teacher_q: torch.Tensor,
                  teacher_d: torch.Tensor, *, k: int = 10) -> float:
    """Mean share of each query's teacher top-``k`` documents that are also in its student top ``k``."""
    k = min(k, student_d.shape[0])
    if student_q.shape[0] == 0 or k == 0:
        return 0.0
    s_top = (student_q @ student_d.T).topk(k, dim=1).indices
    t_top = (teacher_q @ teacher_d.T).topk(k, dim=1).indices
    shared = [len(set(s.tolist()) & set(t.tolist())) for s, t in zip(s_top, t_top, strict=True)]
    return sum(shared) / (k * len(shared))


def agreement(student_q: torch.Tensor, student_d: torch.Tensor, teacher_q: torch.Tensor,
              teacher_d: torch.Tensor, *, k: int = 10) -> Agreement:
    """Agreement from embeddings of the same queries and documents, rows in the same order."""
    if student_q.shape[0] != teacher_q.shape[0] or student_d.shape[0] != teacher_d.shape[0]:
        raise ValueError("student and teacher embeddings must cover the same queries and documents")
    return Agreement(
        corpus_cosine=F.cosine_similarity(student_d, teacher_d, dim=-1).mean().item(),
        query_cosine=F.cosine_similarity(student_q, teacher_q, dim=-1).mean().item(),
        top10_overlap=top_k_overlap(student_q, student_d, teacher_q, teacher_d, k=k),
    )


def _teacher_docs_in_student_order(student: EvalEmbeddings, teacher: EvalEmbeddings) -> torch.Tensor:
    if student.doc_ids == teacher.doc_ids:
        return teacher.docs
    at = {d: i for i, d in enumerate(teacher.doc_ids)}
    if len(at) != len(student.doc_ids) or any(d not in at for d in student.doc_ids):
        raise ValueError("student and teacher embeddings cover different documents")
    return teacher.docs[[at[d] for d in student.doc_ids]]


def split_agreement(student: EvalEmbeddings, teacher: EvalEmbeddings, *, k: int = 10) -> dict[str, Agreement]:
    """:func:`agreement` per split both embeddings cover (the teacher's documents matched by id)."""
    teacher_docs = _teacher_docs_in_student_order(student, teacher)
    out = {}
    for split, qids in student.query_ids.items():
        if teacher.query_ids.get(split) != qids:
            continue
        out[split] = agreement(student.queries[split], student.docs, teacher.queries[split], teacher_docs, k=k)
    return out


def subset_cosine(student: EvalEmbeddings, teacher: EvalEmbeddings, doc_ids: set[str]) -> float | None:
    """Mean student-teacher cosine over the documents ``doc_ids`` (``None`` when there are none): e.g. the
    documents longer than the distillation length, whose tail the student was never distilled on."""
    rows = [i for i, d in enumerate(student.doc_ids) if d in doc_ids]
    if not rows:
        return None
    teacher_docs = _teacher_docs_in_student_order(student, teacher)
    return F.cosine_similarity(student.docs[rows], teacher_docs[rows], dim=-1).mean().item()
