"""Work shared by every sparsity and every trial, computed once and cached by content hash:
data, the dense teacher (:mod:`sma.teacher`), unit importance + circuits, and the teacher's distillation targets
(all in the project cache, :mod:`sma.cache`)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from sma.cache import Cache
from sma.collection_profile import DISTILL_LENGTH, FEW_TRAIN_QUERIES, CollectionProfile, profile_collection
from sma.config import RunConfig
from sma.data import RetrievalData, doc_text, load_data
from sma.distill import DistillTexts, TaskPairs, pseudo_queries, teacher_embeddings
from sma.evaluate import EvalEmbeddings
from sma.importance import Importance, get_importance
from sma.model import BiEncoder, native_bfloat16, resolve_precision
from sma.preflight import check_splits
from sma.teacher import Teacher, get_teacher, teacher_eval_embeddings
from sma.train import training_pairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """What a pruned model is measured against on a collection (``sma evaluate``, and ``sma run`` through
    :class:`Prepared`)."""

    data: RetrievalData
    teacher: Teacher
    """The dense teacher (``baseline`` in results and search records)."""
    teacher_eval: EvalEmbeddings
    """The teacher's dev/test query and corpus embeddings at evaluation lengths (student agreement)."""
    profile: CollectionProfile
    """Token lengths of the collection under the config's cuts (logged with every result run)."""


def reference(cfg: RunConfig, data: RetrievalData, dense: Teacher, teacher: BiEncoder) -> Reference:
    """The :class:`Reference` of ``data`` under ``cfg`` (the teacher's embeddings cached)."""
    splits = (cfg.data.dev_split, cfg.data.test_split)
    return Reference(data=data, teacher=dense, teacher_eval=teacher_eval_embeddings(cfg, data, dense, teacher, splits),
                     profile=profile_collection(teacher.tokenizer, data, cfg))


@dataclass(frozen=True)
class Prepared(Reference):
    """The shared work of ``sma run`` before anything is pruned: the :class:`Reference`, the unit importance,
    the distillation texts with their teacher targets, and the labelled training pairs."""

    cfg: RunConfig
    teacher_computed: bool
    """False when the teacher came from the cache (trials must not retrain it)."""
    importance: Importance
    texts: DistillTexts
    task: TaskPairs

    def load_teacher(self) -> BiEncoder:
        return self.teacher.load(self.cfg)


def distill_texts(cfg: RunConfig, data: RetrievalData, dense: Teacher, teacher: BiEncoder, *,
                  pseudo_per_doc: int, max_length: int) -> DistillTexts:
    """Every corpus document (+ training queries, + ``pseudo_per_doc`` spans of each document as
    pseudo-queries) and the teacher's embeddings of them cut at ``max_length`` tokens, cached."""
    texts = [doc_text(data.corpus[d]) for d in sorted(data.corpus)]
    texts += pseudo_queries(texts, per_doc=pseudo_per_doc, words=cfg.distill.pseudo_query_words, seed=cfg.seed)
    if cfg.distill.train_queries and cfg.data.train_split in data.qrels:
        texts += [data.queries[q] for q in sorted(data.qrels[cfg.data.train_split])]
    if cfg.distill.max_texts is not None and cfg.distill.max_texts < len(texts):
        keep = sorted(random.Random(cfg.seed).sample(range(len(texts)), cfg.distill.max_texts))
        texts = [texts[i] for i in keep]
    key = Cache.key("teacher-targets", dense.key, max_length, texts)
    emb = Cache(cfg.cache_dir).get("teacher-targets", key, lambda: teacher_embeddings(
        teacher, texts, max_length=max_length, show_progress=cfg.eval.show_progress))
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


def configured_data(cfg: RunConfig) -> RetrievalData:
    """The config's collection: a seeded subset when ``data.max_samples`` is set, a seeded share of its
    training queries when ``data.train_queries`` is."""
    d = cfg.data
    return load_data(d.dataset, max_samples=d.max_samples, seed=cfg.seed, distractor_ratio=d.distractor_ratio,
                     cache_dir=cfg.cache_dir,
                     train_queries=None if d.train_queries is None else (d.train_split, d.train_queries))


def load_run_data(cfg: RunConfig) -> RetrievalData:
    """The run's collection (:func:`configured_data`), logged and checked."""
    data = configured_data(cfg)
    log.info("data %s: %d documents, %s", data.name, len(data.corpus),
             ", ".join(f"{s} {len(q)} queries" for s, q in data.qrels.items()))
    check_splits(cfg, data)  # again here: a hub collection is only checked once downloaded
    return data


def prepare(cfg: RunConfig, *, analysis_dir: Path | None = None, data: RetrievalData | None = None,
            dense: Teacher | None = None) -> Prepared:
    """Load data and the (cached) teacher unless given, then importance and teacher targets."""
    data = data if data is not None else load_run_data(cfg)
    dense = dense if dense is not None else get_teacher(cfg, data)
    teacher = dense.load(cfg)
    ref = reference(cfg, data, dense, teacher)
    profile = ref.profile
    for warning in profile.warnings(cfg):
        log.warning("%s: %s", data.name, warning)
    if cfg.distill.precision == "bfloat16" and not native_bfloat16(teacher.device):
        log.warning("distill.precision=bfloat16: %s has no native bfloat16 matrix products, so distillation will "
                    "run slower than in float32", teacher.device)
    if cfg.distill.precision == "auto":
        log.info("distill.precision=auto: distillation runs in %s on %s",
                 resolve_precision("auto", teacher.device), teacher.device)
    if cfg.data.dev_split in cfg.analysis.probe_splits:
        log.warning("the analysis probe uses the %s split: units are chosen on it, so %s retention is biased "
                    "upwards and should not be used to choose hyperparameters", cfg.data.dev_split,
                    cfg.data.dev_split)
    importance = get_importance(cfg, data, teacher, out_dir=analysis_dir)
    if cfg.distill.pseudo_queries is None and profile.pseudo_queries:
        log.info("%s: %d judged %s queries (fewer than %d): a pseudo-query per document joins the distillation "
                 "texts (distill.pseudo_queries unset; set it to 0 for none)", data.name,
                 profile.judged_queries.get(cfg.data.train_split, 0), cfg.data.train_split, FEW_TRAIN_QUERIES)
    if cfg.distill.max_length is None and profile.distill_length > DISTILL_LENGTH:
        log.info("%s: %.0f%% of documents are longer than %d tokens: the student is distilled at the evaluation "
                 "length, %d tokens (distill.max_length unset; set it for another)", data.name,
                 100 * profile.share_longer_than(DISTILL_LENGTH), DISTILL_LENGTH, profile.distill_length)
    texts = distill_texts(cfg, data, dense, teacher, pseudo_per_doc=profile.pseudo_queries,
                          max_length=profile.distill_length)
    return Prepared(**vars(ref), cfg=cfg, teacher_computed=not dense.cached, importance=importance, texts=texts,
                    task=task_pairs(cfg, data))
