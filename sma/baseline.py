"""The dense teacher: optional contrastive fine-tuning plus dev/test evaluation, cached by content hash."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sma.agreement import eval_embeddings, store_teacher_eval_embeddings
from sma.cache import cache_root, content_hash, publish
from sma.config import RunConfig
from sma.data import RetrievalData
from sma.device import resolve_device
from sma.evaluate import EvalResult, encode_corpus, evaluate
from sma.model import BiEncoder
from sma.seeding import set_seed
from sma.train import train_baseline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Baseline:
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


def baseline_key(cfg: RunConfig, data: RetrievalData) -> str:
    """Hash of what the baseline depends on. The seed only matters when the teacher is fine-tuned: runs that
    differ only in ``--seed`` share an untouched pretrained teacher, its analysis and its distillation targets."""
    trained = cfg.train.baseline_epochs > 0
    return content_hash(
        "baseline-v1", cfg.model, cfg.train, cfg.eval.metrics, cfg.seed if trained else None,
        cfg.deterministic if trained else None,
        data.name, sorted(data.corpus), {s: sorted(q) for s, q in data.qrels.items()},
    )


def evaluate_splits(model: BiEncoder, data: RetrievalData, cfg: RunConfig, splits: tuple[str, ...] | None = None,
                    *, corpus_embeddings: tuple[list[str], torch.Tensor] | None = None) -> dict[str, EvalResult]:
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


def get_baseline(cfg: RunConfig, data: RetrievalData) -> Baseline:
    """Load the cached baseline for (model, data, train settings, seed) or compute and cache it."""
    key = baseline_key(cfg, data)
    folder = cache_root(cfg.cache_dir) / "baselines" / key
    meta_path = folder / "baseline.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        log.info("baseline %s: cached in %s", key, folder)
        return Baseline(
            key=key, model_path=meta["model_path"] or str(folder / "model"),
            metrics={s: EvalResult(**m) for s, m in meta["metrics"].items()},
            train_losses=tuple(meta["train_losses"]), cached=True,
        )
    set_seed(cfg.seed, deterministic=cfg.deterministic)
    model = BiEncoder.from_config(cfg.model).to(resolve_device(cfg.device))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=folder.parent))
    stats = None
    if cfg.train.baseline_epochs > 0:
        corpus, queries, qrels = data.split(cfg.data.train_split)
        stats = train_baseline(model, corpus, queries, qrels, cfg.train, seed=cfg.seed,
                               show_progress=cfg.eval.show_progress)
        model.encoder.save_pretrained(tmp / "model")
        model.tokenizer.save_pretrained(tmp / "model")
    splits = (cfg.data.dev_split, cfg.data.test_split)
    emb = eval_embeddings(model, data, splits, batch_size=cfg.eval.batch_size, show_progress=cfg.eval.show_progress)
    metrics = evaluate_splits(model, data, cfg, splits, corpus_embeddings=(list(emb.doc_ids), emb.docs))
    meta = {
        "key": key,
        "model_path": None if stats else cfg.model.name,
        "model": cfg.model.name,
        "metrics": {s: r.to_dict() for s, r in metrics.items()},
        "train_losses": list(stats.losses) if stats else [],
    }
    (tmp / "baseline.json").write_text(json.dumps(meta, indent=1))
    publish(tmp, folder)
    store_teacher_eval_embeddings(cfg, data, key, emb)  # the students' agreement is measured against these
    return Baseline(key=key, model_path=meta["model_path"] or str(folder / "model"), metrics=metrics,
                    train_losses=tuple(meta["train_losses"]), cached=False)
