"""The dense teacher: built (optionally fine-tuned), evaluated and cached, with its evaluation embeddings.

The teacher is a folder entry of the project cache (:mod:`sma.cache`, kind ``teacher``): ``teacher.json``
(metrics, training losses) plus ``model/`` when it was fine-tuned. Its embeddings of the corpus and of the
dev/test queries (kind ``teacher-eval``) are what every student's agreement is measured against.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sma.cache import Cache
from sma.config import RunConfig
from sma.data import RetrievalData, doc_text
from sma.device import resolve_device
from sma.evaluate import EvalEmbeddings, EvalResult, eval_embeddings, evaluate_model
from sma.model import BiEncoder, gradient_checkpointing
from sma.seeding import set_seed
from sma.train import train_baseline

log = logging.getLogger(__name__)

META = "teacher.json"


@dataclass(frozen=True)
class Teacher:
    key: str
    model_path: str
    """Fine-tuned model folder, or the pretrained model itself when ``baseline_epochs == 0``."""
    metrics: dict[str, EvalResult]
    """Per split (``dev``, ``test``)."""
    train_losses: tuple[float, ...]
    cached: bool

    def load(self, cfg: RunConfig) -> BiEncoder:
        """The teacher's weights as a fresh model on the run's device."""
        return BiEncoder.from_config(cfg.model, name=self.model_path).to(resolve_device(cfg.device))


def teacher_key(cfg: RunConfig, data: RetrievalData) -> str:
    """Hash of what the teacher depends on. The seed only matters when the teacher is fine-tuned: runs that
    differ only in ``--seed`` share an untouched pretrained teacher, its analysis and its distillation targets."""
    trained = cfg.train.baseline_epochs > 0
    return Cache.key(
        "teacher", cfg.model, cfg.train, cfg.eval.metrics, cfg.seed if trained else None,
        cfg.deterministic if trained else None,
        data.name, sorted(data.corpus), {s: sorted(q) for s, q in data.qrels.items()},
    )


def _from_meta(meta: dict, folder: Path, *, cached: bool, metrics: dict[str, EvalResult] | None = None) -> Teacher:
    return Teacher(key=meta["key"], model_path=meta["model_path"] or str(folder / "model"),
                   metrics=metrics or {s: EvalResult(**m) for s, m in meta["metrics"].items()},
                   train_losses=tuple(meta["train_losses"]), cached=cached)


def get_teacher(cfg: RunConfig, data: RetrievalData) -> Teacher:
    """Load the cached teacher for (model, data, train settings, seed) or build, evaluate and cache it."""
    cache = Cache(cfg.cache_dir)
    key = teacher_key(cfg, data)
    folder = cache.folder("teacher", key)
    if folder is not None:
        log.info("teacher %s: cached in %s", key, folder)
        return _from_meta(json.loads((folder / META).read_text()), folder, cached=True)
    set_seed(cfg.seed, deterministic=cfg.deterministic)
    model = BiEncoder.from_config(cfg.model).to(resolve_device(cfg.device))
    built: dict = {}

    def build(tmp: Path) -> None:
        stats = None
        if cfg.train.baseline_epochs > 0:
            corpus, queries, qrels = data.split(cfg.data.train_split)
            with gradient_checkpointing(model, cfg.gradient_checkpointing):
                stats = train_baseline(model, corpus, queries, qrels, cfg.train, seed=cfg.seed,
                                       show_progress=cfg.eval.show_progress)
            model.encoder.save_pretrained(tmp / "model")
            model.tokenizer.save_pretrained(tmp / "model")
        built["metrics"], built["emb"] = evaluate_model(model, data, cfg)
        built["meta"] = {
            "key": key,
            "model_path": None if stats else cfg.model.name,
            "model": cfg.model.name,
            "metrics": {s: r.to_dict() for s, r in built["metrics"].items()},
            "train_losses": list(stats.losses) if stats else [],
        }
        (tmp / META).write_text(json.dumps(built["meta"], indent=1))

    folder = cache.build_folder("teacher", key, build)
    teacher = _from_meta(built["meta"], folder, cached=False, metrics=built["metrics"])
    store_teacher_eval_embeddings(cfg, data, teacher, built["emb"])  # students' agreement is measured against these
    return teacher


def _eval_key(cfg: RunConfig, data: RetrievalData, teacher: Teacher, splits: tuple[str, ...]) -> str:
    qids = {s: sorted(data.qrels[s]) for s in splits if s in data.qrels}
    return Cache.key("teacher-eval", teacher.key, cfg.model, [doc_text(d) for d in data.corpus.values()],
                     {s: [data.queries[q] for q in ids] for s, ids in qids.items()})


def store_teacher_eval_embeddings(cfg: RunConfig, data: RetrievalData, teacher: Teacher,
                                  emb: EvalEmbeddings) -> None:
    """Cache the teacher's :func:`~sma.evaluate.eval_embeddings` (its evaluation computes them anyway)."""
    Cache(cfg.cache_dir).save("teacher-eval", _eval_key(cfg, data, teacher, tuple(emb.query_ids)), emb.to_dict())


def teacher_eval_embeddings(cfg: RunConfig, data: RetrievalData, teacher: Teacher, model: BiEncoder,
                            splits: tuple[str, ...]) -> EvalEmbeddings:
    """The teacher's :func:`~sma.evaluate.eval_embeddings` (``model``: its weights), cached by (teacher,
    lengths, pooling, texts)."""
    splits = tuple(s for s in splits if s in data.qrels)

    def compute() -> dict:
        log.info("teacher embeddings of the corpus and the %s queries (for student agreement)", "/".join(splits))
        return eval_embeddings(model, data, splits, batch_size=cfg.eval.batch_size,
                               show_progress=cfg.eval.show_progress).to_dict()

    return EvalEmbeddings.from_dict(Cache(cfg.cache_dir).get("teacher-eval", _eval_key(cfg, data, teacher, splits),
                                                             compute))
