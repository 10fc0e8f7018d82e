"""What the recipe's fixed sizes and lengths meet on a collection: token lengths of its documents and judged
queries (the model's tokenizer, special tokens included), judged queries per split, and the share of texts
longer than each length the config cuts them at.

Every run computes it once (:func:`sma.prepare.prepare`), prints a warning where the defaults do not suit the
collection (most documents longer than the distillation length, a probe short of judged queries), keeps it in
``results.json`` and logs its numbers with every result run, so that a report can set collections side by side.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from sma.config import RunConfig
from sma.data import RetrievalData, doc_text

MOST = 0.5
"""Share of documents past ``distill.max_length`` above which a run warns, and past :data:`DISTILL_LENGTH` above
which an unset ``distill.max_length`` becomes the evaluation length."""
DISTILL_LENGTH = 128
"""Tokens the distillation texts are cut at, unless most documents are longer (``distill.max_length`` unset)."""
FEW_TEST_QUERIES = 50
"""Judged test queries under which a run warns that retention rests on few queries (cacm has 26)."""
FEW_DEV_QUERIES = 20
"""Judged dev queries under which a run warns that settings chosen on dev retention rest on few queries (cacm has
6: the default recipe's dev retention at 30 % ranged from 82 to 93 % over three seeds)."""
FEW_TRAIN_QUERIES = 50
"""Judged training queries under which the distillation texts get a pseudo-query per document by default
(``distill.pseudo_queries`` unset): cacm has 20 (its defaults kept 97.1 % at 30 % sparsity without them),
cranfield 100."""
LONG_QUERIES = 0.05
"""Share of judged queries past ``model.query_max_length`` above which a run warns."""


def _lengths(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]] if texts else []


def _share_over(lengths: list[int], tokens: int) -> float:
    return sum(n > tokens for n in lengths) / len(lengths) if lengths else 0.0


def _p90(lengths: list[int]) -> float:
    return statistics.quantiles(lengths, n=10, method="inclusive")[-1] if len(lengths) > 1 else float(sum(lengths))


@dataclass(frozen=True)
class CollectionProfile:
    """Token lengths of one collection under one config's cuts."""

    doc_lengths: dict[str, int]
    """Tokens of each document's text (title + text), untruncated."""
    query_lengths: tuple[int, ...]
    """Tokens of each judged query of any split, untruncated."""
    judged_queries: dict[str, int]
    """Judged queries per split."""
    distill_length: int
    """Tokens the distillation texts are cut at: ``distill.max_length``, or derived from the documents' lengths
    when it is unset (:func:`derived_distill_length`)."""
    eval_length: int
    query_length: int
    train_split: str
    test_split: str = "test"
    dev_split: str = "dev"
    pseudo_queries: int = 0
    """Pseudo-queries per document among the distillation texts: ``distill.pseudo_queries``, or derived from
    the judged training queries when it is unset (:func:`derived_pseudo_queries`)."""

    def longer_than(self, tokens: int) -> set[str]:
        """Ids of the documents longer than ``tokens`` tokens."""
        return {d for d, n in self.doc_lengths.items() if n > tokens}

    def share_longer_than(self, tokens: int) -> float:
        """Share of the documents longer than ``tokens`` tokens."""
        return _share_over(list(self.doc_lengths.values()), tokens)

    def metrics(self) -> dict[str, float]:
        """The numbers logged with each result run (names in :data:`sma.metrics.METRICS`)."""
        docs = list(self.doc_lengths.values())
        return {
            "documents": float(len(docs)),
            "train_queries": float(self.judged_queries.get(self.train_split, 0)),
            "doc_tokens_median": float(statistics.median(docs)) if docs else 0.0,
            "doc_tokens_p90": float(_p90(docs)),
            "docs_over_distill_length": _share_over(docs, self.distill_length),
            "docs_over_eval_length": _share_over(docs, self.eval_length),
            "queries_over_query_length": _share_over(list(self.query_lengths), self.query_length),
            "pseudo_queries_per_document": float(self.pseudo_queries),
            "distill_length": float(self.distill_length),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.metrics(), "judged_queries": dict(self.judged_queries), "distill_length": self.distill_length,
                "eval_length": self.eval_length, "query_length": self.query_length}

    def warnings(self, cfg: RunConfig) -> list[str]:
        """One line for each place the config's lengths and sizes do not suit this collection."""
        m, out = self.metrics(), []
        if m["docs_over_distill_length"] > MOST and self.distill_length < self.eval_length:
            out.append(f"{m['docs_over_distill_length']:.0%} of documents are longer than distill.max_length="
                       f"{self.distill_length} tokens (median {m['doc_tokens_median']:.0f}, 90th percentile "
                       f"{m['doc_tokens_p90']:.0f}): the student is distilled on their first {self.distill_length} "
                       f"tokens only (corpus_cosine_long is its agreement with the teacher on them; "
                       f"distill.max_length can go up to model.doc_max_length={self.eval_length})")
        if m["queries_over_query_length"] > LONG_QUERIES:
            out.append(f"{m['queries_over_query_length']:.0%} of judged queries are longer than "
                       f"model.query_max_length={self.query_length} tokens and are cut there")
        train = int(m["train_queries"])
        probe = cfg.analysis.probe_queries
        if cfg.data.train_split in cfg.analysis.probe_splits and train < probe / 2 \
                and not cfg.analysis.probe_pseudo_queries:
            out.append(f"the analysis probe has {train} judged {self.train_split} queries for "
                       f"analysis.probe_queries={probe}: unit scores rest on few queries; "
                       "analysis.probe_pseudo_queries=true tops the probe up with label-free spans of documents")
        tests = self.judged_queries.get(self.test_split, 0)
        if 0 < tests < FEW_TEST_QUERIES:
            out.append(f"only {tests} judged {self.test_split} queries: each is 1/{tests} of the mean nDCG@10, so one "
                       f"query the pruned model gains or loses moves retention by points; read it with its "
                       f"bootstrap interval over the queries and the label-free agreement (sma report)")
        devs = self.judged_queries.get(self.dev_split, 0)
        if 0 < devs < FEW_DEV_QUERIES:
            out.append(f"only {devs} judged {self.dev_split} queries: a setting chosen on dev retention (sma tune, "
                       f"sma ablate, the report's best configuration) is chosen on {devs} queries; trust a choice "
                       f"only where it holds over seeds, on another collection and in the label-free agreement")
        return out


def derived_pseudo_queries(configured: int | None, train_queries: int) -> int:
    """``distill.pseudo_queries`` when set; else one per document below :data:`FEW_TRAIN_QUERIES` judged
    training queries, none from there on."""
    if configured is not None:
        return configured
    return 1 if train_queries < FEW_TRAIN_QUERIES else 0


def derived_distill_length(configured: int | None, doc_lengths: list[int], eval_length: int) -> int:
    """``distill.max_length`` when set; else the evaluation length ``eval_length`` where more than :data:`MOST` of
    the documents are longer than :data:`DISTILL_LENGTH` tokens (their tails would otherwise never be distilled,
    though evaluation embeds them); else :data:`DISTILL_LENGTH`, or ``eval_length`` where that is shorter."""
    if configured is not None:
        return configured
    return eval_length if _share_over(doc_lengths, DISTILL_LENGTH) > MOST else min(eval_length, DISTILL_LENGTH)


def profile_collection(tokenizer, data: RetrievalData, cfg: RunConfig) -> CollectionProfile:
    """Tokenize every document and judged query of ``data`` once with ``tokenizer`` (no truncation)."""
    ids = sorted(data.corpus)
    judged = sorted({q for qrels in data.qrels.values() for q in qrels if q in data.queries})
    doc_lengths = dict(zip(ids, _lengths(tokenizer, [doc_text(data.corpus[d]) for d in ids]), strict=True))
    return CollectionProfile(
        doc_lengths=doc_lengths,
        query_lengths=tuple(_lengths(tokenizer, [data.queries[q] for q in judged])),
        judged_queries={split: len(qrels) for split, qrels in data.qrels.items()},
        distill_length=derived_distill_length(cfg.distill.max_length, list(doc_lengths.values()),
                                              cfg.model.doc_max_length),
        eval_length=cfg.model.doc_max_length,
        query_length=cfg.model.query_max_length, train_split=cfg.data.train_split, test_split=cfg.data.test_split,
        dev_split=cfg.data.dev_split,
        pseudo_queries=derived_pseudo_queries(cfg.distill.pseudo_queries,
                                              len(data.qrels.get(cfg.data.train_split, {}))))
