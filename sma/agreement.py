"""How closely a pruned student reproduces its dense teacher, without labels.

Retention (pruned nDCG@10 / dense nDCG@10) on a split of a hundred queries moves by a point or more between
seeds of the same recipe. The student's agreement with the teacher is a far less noisy view of the same
recovery, and it says *what* is off: the mean cosine between the student's and the teacher's embedding of
every corpus document and of every judged query of a split (at evaluation lengths), and the share of the
teacher's top-10 documents per query that the student also ranks in its top 10. A student that matches the
teacher exactly scores 1.0 on all three, whatever the labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sma.cache import cache_root, content_hash, save_atomic
from sma.config import RunConfig
from sma.data import RetrievalData, doc_text
from sma.model import BiEncoder

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class EvalEmbeddings:
    """Embeddings of the whole corpus (sorted document ids) and of each split's judged queries."""

    doc_ids: tuple[str, ...]
    docs: torch.Tensor
    query_ids: dict[str, tuple[str, ...]]
    queries: dict[str, torch.Tensor]


def eval_embeddings(model: BiEncoder, data: RetrievalData, splits: tuple[str, ...], *, batch_size: int = 64,
                    show_progress: bool = True, docs: tuple[tuple[str, ...], torch.Tensor] | None = None,
                    ) -> EvalEmbeddings:
    """Encode the corpus (unless ``docs`` is given; documents in corpus order) and the judged queries of
    ``splits`` at eval lengths."""
    if docs is None:
        dids = tuple(data.corpus)
        emb = model.encode([doc_text(data.corpus[d]) for d in dids], kind="doc", batch_size=batch_size,
                           show_progress=show_progress, desc="encode corpus")
        docs = (dids, emb)
    qids = {s: tuple(sorted(data.qrels[s])) for s in splits if s in data.qrels}
    queries = {s: model.encode([data.queries[q] for q in ids], kind="query", batch_size=batch_size)
               for s, ids in qids.items()}
    return EvalEmbeddings(doc_ids=docs[0], docs=docs[1], query_ids=qids, queries=queries)


def _teacher_eval_path(cfg: RunConfig, data: RetrievalData, baseline_key: str, splits: tuple[str, ...]) -> Path:
    qids = {s: sorted(data.qrels[s]) for s in splits if s in data.qrels}
    key = content_hash("teacher-eval-emb-v1", baseline_key, cfg.model, [doc_text(d) for d in data.corpus.values()],
                       {s: [data.queries[q] for q in ids] for s, ids in qids.items()})
    return cache_root(cfg.cache_dir) / "teacher" / f"eval-{key}.pt"


def store_teacher_eval_embeddings(cfg: RunConfig, data: RetrievalData, baseline_key: str,
                                  emb: EvalEmbeddings) -> None:
    """Cache the teacher's :func:`eval_embeddings` (the baseline evaluation computes them anyway)."""
    save_atomic({"doc_ids": list(emb.doc_ids), "docs": emb.docs,
                 "query_ids": {s: list(v) for s, v in emb.query_ids.items()}, "queries": emb.queries},
                _teacher_eval_path(cfg, data, baseline_key, tuple(emb.query_ids)))


def teacher_eval_embeddings(cfg: RunConfig, data: RetrievalData, baseline_key: str, teacher: BiEncoder,
                            splits: tuple[str, ...]) -> EvalEmbeddings:
    """The teacher's :func:`eval_embeddings`, cached by (teacher, lengths, pooling, texts)."""
    splits = tuple(s for s in splits if s in data.qrels)
    path = _teacher_eval_path(cfg, data, baseline_key, splits)
    if path.is_file():
        stored = torch.load(path)
        return EvalEmbeddings(doc_ids=tuple(stored["doc_ids"]), docs=stored["docs"],
                              query_ids={s: tuple(v) for s, v in stored["query_ids"].items()},
                              queries=stored["queries"])
    log.info("teacher embeddings of the corpus and the %s queries (for student agreement)", "/".join(splits))
    emb = eval_embeddings(teacher, data, splits, batch_size=cfg.eval.batch_size,
                          show_progress=cfg.eval.show_progress)
    store_teacher_eval_embeddings(cfg, data, baseline_key, emb)
    return emb


def split_agreement(student: EvalEmbeddings, teacher: EvalEmbeddings, *, k: int = 10) -> dict[str, Agreement]:
    """:func:`agreement` per split both embeddings cover (the teacher's documents matched by id)."""
    teacher_docs = teacher.docs
    if student.doc_ids != teacher.doc_ids:
        at = {d: i for i, d in enumerate(teacher.doc_ids)}
        if len(at) != len(student.doc_ids) or any(d not in at for d in student.doc_ids):
            raise ValueError("student and teacher embeddings cover different documents")
        teacher_docs = teacher.docs[[at[d] for d in student.doc_ids]]
    out = {}
    for split, qids in student.query_ids.items():
        if teacher.query_ids.get(split) != qids:
            continue
        out[split] = agreement(student.queries[split], student.docs, teacher.queries[split], teacher_docs, k=k)
    return out
