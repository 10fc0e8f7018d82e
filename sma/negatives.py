"""Hard negatives for training and probing: BM25 (bm25s) or the dense model itself."""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType

from sma.data import Corpus, Qrels, Queries, doc_text


def _bm25s() -> ModuleType:
    """bm25s, imported on first use with JAX kept off the GPU.

    Where JAX is installed, importing bm25s runs a JAX op, which starts JAX on the GPU and reserves 75 % of its
    memory (JAX's default) in every process that imports it: the next pipeline on the same GPU (trials of a
    search or an ablation, ``--gpus-per-worker 0.25``) then fails to start. SMA computes on PyTorch; JAX
    stays on the CPU unless the user set ``JAX_PLATFORMS``."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s

    return bm25s


def bm25_ranking(corpus: Corpus, queries: Queries, qids: Sequence[str], *, k: int = 50) -> dict[str, list[str]]:
    """Top-``k`` document ids per query from BM25 (bm25s, English stopwords)."""
    bm25s = _bm25s()
    dids = list(corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([doc_text(corpus[d]) for d in dids], stopwords="en", show_progress=False),
                    show_progress=False)
    k = min(k, len(dids))
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False, return_ids=False)
    idx, _ = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    return {q: [dids[j] for j in row] for q, row in zip(qids, idx.tolist(), strict=True)}


def dense_ranking(model, corpus: Corpus, queries: Queries, qids: Sequence[str], *, k: int = 50,
                  batch_size: int = 64) -> dict[str, list[str]]:
    """Top-``k`` document ids per query from the bi-encoder ``model``."""
    from sma.evaluate import encode_corpus, retrieve

    dids, doc_emb = encode_corpus(model, corpus, batch_size=batch_size, show_progress=True)
    q_emb = model.encode([queries[q] for q in qids], kind="query", batch_size=batch_size)
    run = retrieve(q_emb, doc_emb, list(qids), dids, top_k=k)
    return {q: sorted(run[q], key=lambda d: -run[q][d]) for q in qids}


def mine_negatives(ranking: dict[str, list[str]], qrels: Qrels, *, per_query: int) -> dict[str, list[str]]:
    """The highest-ranked unjudged-or-irrelevant documents of each query."""
    return {
        q: [d for d in docs if qrels.get(q, {}).get(d, 0) <= 0][:per_query]
        for q, docs in ranking.items()
    }
