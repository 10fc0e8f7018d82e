"""The one table of metrics a run reports: name, whether higher or lower is better, and what it means.

The pipeline's ``metrics.json`` and ``results.json`` rows, the search's trial results and MLflow metrics, and
the analysis all use these names. Split metrics exist once per split (``dev_``, ``test_``).
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool | None
    """``None``: neither (a setting, a count)."""
    meaning: str

    @property
    def direction(self) -> str | None:
        """``max`` / ``min`` as Optuna and Ray Tune spell it."""
        return None if self.higher_is_better is None else ("max" if self.higher_is_better else "min")


IR_MEASURES = {"ndcg_at_10": "nDCG@10", "mrr_at_10": "MRR@10 (RR@10)", "recall_at_100": "Recall@100", "map": "MAP"}
"""Metric-name stems of the IR measures in ``eval.metrics`` (see :func:`sma.evaluate.metric_key`)."""

_PER_SPLIT = (
    *(Metric(stem, True, f"pruned model's {label}") for stem, label in IR_MEASURES.items()),
    *(Metric(f"dense_{stem}", True, f"dense teacher's {label}") for stem, label in IR_MEASURES.items()),
    Metric("retention", True, "pruned nDCG@10 / dense nDCG@10"),
    Metric("retention_low", True, "low end of retention's 95 % paired bootstrap interval over the split's queries"),
    Metric("retention_high", True, "high end of retention's 95 % paired bootstrap interval over the split's queries"),
    Metric("query_cosine", True, "mean cosine of student vs teacher embeddings of the split's queries (no labels)"),
    Metric("top10_overlap", True, "share of the teacher's top 10 per query also in the student's top 10 (no labels)"),
    Metric("ndcg_at_10_int8", True, "nDCG@10 of the pruned model with int8 linear layers (bench.int8)"),
    Metric("retention_int8", True, "int8 pruned nDCG@10 / dense float32 nDCG@10 (bench.int8)"),
)

PHASE_PREFIX = "seconds_"
PHASES = {
    "prune_steps": "the pruning steps, each with its distillation",
    "recovery": "the post-prune distillation",
    "evaluation": "dev/test evaluation of the pruned model over the whole corpus",
    "benchmark": "the side-by-side speed benchmark",
    "int8": "int8 evaluation and benchmark (bench.int8)",
}
"""Timed phases of one sparsity: metric ``seconds_<phase>`` is the wall time of that phase. ``results.json`` also
has ``seconds_baseline`` and ``seconds_prepare``: the shared work (cached across sparsities and seeds)."""

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("sparsity", None, "target encoder sparsity"),
    Metric("actual_sparsity", None, "share of encoder parameters removed"),
    Metric("actual_sparsity_with_embeddings", None, "share of all parameters removed, embeddings included"),
    *(Metric(f"{split}_{m.name}", m.higher_is_better, f"{split}: {m.meaning}") for split in SPLITS for m in _PER_SPLIT),
    Metric("corpus_cosine", True, "mean cosine of student vs teacher embeddings of every document (no labels)"),
    Metric("corpus_cosine_long", True, "corpus_cosine over the documents longer than distill_length tokens, "
           "whose tail the student was never distilled on (no labels)"),
    Metric("long_documents", None, "documents longer than distill_length tokens"),
    Metric("speedup", True, "dense latency / pruned latency, measured side by side in one process"),
    Metric("memory_ratio", False, "pruned / dense encoder weight bytes"),
    Metric("memory_ratio_with_embeddings", False, "pruned / dense weight bytes, embeddings included"),
    Metric("int8_corpus_cosine", True, "mean cosine of the int8 vs float32 pruned model's document embeddings"),
    Metric("speedup_int8", True, "dense float32 latency / int8 pruned latency, side by side on the CPU (bench.int8)"),
    Metric("memory_ratio_int8", False, "int8 pruned / dense float32 encoder weight bytes (bench.int8)"),
    Metric("train_loss", False, "mean distillation loss of a post-prune epoch"),
    Metric("seconds", False, "wall time of one sparsity in the pipeline"),
    # the collection under the config's cuts (sma.collection_profile): the same for every run on it
    Metric("documents", None, "documents in the collection"),
    Metric("train_queries", None, "judged queries of the training split"),
    Metric("doc_tokens_median", None, "median document length in tokens, untruncated"),
    Metric("doc_tokens_p90", None, "90th percentile of document length in tokens, untruncated"),
    Metric("docs_over_distill_length", None, "share of documents longer than distill_length"),
    Metric("docs_over_eval_length", None, "share of documents longer than model.doc_max_length"),
    Metric("queries_over_query_length", None, "share of judged queries longer than model.query_max_length"),
    Metric("pseudo_queries_per_document", None, "pseudo-queries per document among the distillation texts "
           "(distill.pseudo_queries; derived from train_queries when unset)"),
    Metric("distill_length", None, "tokens the distillation texts are cut at (distill.max_length; derived from the "
           "documents' lengths when unset)"),
    *(Metric(f"{PHASE_PREFIX}{phase}", False, f"wall time of {what}") for phase, what in PHASES.items()),
)}

OBJECTIVE = "dev_retention"
"""What a search maximises: chosen on dev, never on test."""
RETENTION = "test_retention"
"""The headline number of a results table."""


def direction(name: str) -> str:
    """``max`` or ``min`` for a metric with a direction; a ``KeyError`` naming the metric otherwise."""
    metric = METRICS.get(name)
    if metric is None or metric.direction is None:
        raise KeyError(f"{name!r} is not a metric with a direction")
    return metric.direction
