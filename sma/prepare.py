"""Work shared by every sparsity and every trial, computed once and cached by content hash:
data, the dense teacher (baseline), unit importance + circuits, and the teacher's distillation targets."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from sma.agreement import EvalEmbeddings, teacher_eval_embeddings
from sma.baseline import Baseline, get_baseline
from sma.cache import cache_root, content_hash, save_atomic
from sma.config import RunConfig
from sma.data import RetrievalData, doc_text, load_data
from sma.distill import DistillTexts, TaskPairs, pseudo_queries, teacher_embeddings
from sma.importance import Importance, get_importance
from sma.model import BiEncoder
from sma.train import training_pairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    cfg: RunConfig
    data: RetrievalData
    baseline: Baseline
    baseline_computed: bool
    """False when the baseline came from the cache (trials must not retrain the teacher)."""
    importance: Importance
    texts: DistillTexts
    task: TaskPairs
    teacher_eval: EvalEmbeddings
    """The teacher's dev/test query and corpus embeddings at evaluation lengths (student agreement)."""

    def teacher(self) -> BiEncoder:
        return self.baseline.load(self.cfg)


def distill_texts(cfg: RunConfig, data: RetrievalData, baseline: Baseline, teacher: BiEncoder) -> DistillTexts:
    """Every corpus document (+ training queries, + spans of documents as pseudo-queries) and the teacher's
    embeddings of them, cached."""
    texts = [doc_text(data.corpus[d]) for d in sorted(data.corpus)]
    texts += pseudo_queries(texts, per_doc=cfg.distill.pseudo_queries, words=cfg.distill.pseudo_query_words,
                            seed=cfg.seed)
    if cfg.distill.train_queries and cfg.data.train_split in data.qrels:
        texts += [data.queries[q] for q in sorted(data.qrels[cfg.data.train_split])]
    if cfg.distill.max_texts is not None and cfg.distill.max_texts < len(texts):
        keep = sorted(random.Random(cfg.seed).sample(range(len(texts)), cfg.distill.max_texts))
        texts = [texts[i] for i in keep]
    key = content_hash("teacher-emb-v1", baseline.key, cfg.distill.max_length, texts)
    path = cache_root(cfg.cache_dir) / "teacher" / f"{key}.pt"
    if path.is_file():
        emb = torch.load(path)
    else:
        emb = teacher_embeddings(teacher, texts, max_length=cfg.distill.max_length,
                                 show_progress=cfg.eval.show_progress)
        save_atomic(emb, path)
    return DistillTexts(texts=tuple(texts), teacher=emb)


def task_pairs(cfg: RunConfig, data: RetrievalData) -> TaskPairs:
    if cfg.data.train_split not in data.qrels:
        return TaskPairs(qids=(), dids=(), queries={}, docs={}, qrels={})
    corpus, queries, qrels = data.split(cfg.data.train_split)
    pairs = training_pairs(queries, qrels)
    return TaskPairs(
        qids=tuple(q for q, _ in pairs), dids=tuple(d for _, d in pairs), queries=queries,
        docs={d: doc_text(corpus[d]) for _, d in pairs}, qrels=qrels,
    )


def load_run_data(cfg: RunConfig) -> RetrievalData:
    """The run's collection (seeded subset when ``data.max_samples`` is set)."""
    data = load_data(cfg.data.dataset, max_samples=cfg.data.max_samples, seed=cfg.seed,
                     distractor_ratio=cfg.data.distractor_ratio)
    log.info("data %s: %d documents, %s", data.name, len(data.corpus),
             ", ".join(f"{s} {len(q)} queries" for s, q in data.qrels.items()))
    return data


def prepare(cfg: RunConfig, *, analysis_dir: Path | None = None, data: RetrievalData | None = None,
            baseline: Baseline | None = None) -> Prepared:
    """Load data and the (cached) baseline unless given, then importance and teacher targets."""
    data = data if data is not None else load_run_data(cfg)
    baseline = baseline if baseline is not None else get_baseline(cfg, data)
    teacher = baseline.load(cfg)
    if cfg.data.dev_split in cfg.analysis.probe_splits:
        log.warning("the analysis probe uses the %s split: units are chosen on it, so %s retention is biased "
                    "upwards and should not be used to choose hyperparameters", cfg.data.dev_split,
                    cfg.data.dev_split)
    importance = get_importance(cfg, data, baseline, teacher, out_dir=analysis_dir)
    texts = distill_texts(cfg, data, baseline, teacher)
    teacher_eval = teacher_eval_embeddings(cfg, data, baseline.key, teacher,
                                           (cfg.data.dev_split, cfg.data.test_split))
    return Prepared(cfg=cfg, data=data, baseline=baseline, baseline_computed=not baseline.cached,
                    importance=importance, texts=texts, task=task_pairs(cfg, data), teacher_eval=teacher_eval)
