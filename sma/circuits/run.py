"""``run_analysis``: probe -> importance of every head and neuron by each method -> circuits -> files.

Writes ``<out_dir>/phase1/importance_scores.json`` (every unit, every method), ``circuits.json``,
``faithfulness.md`` and PNG plots. Each part is cached by (model weights, probe, its settings, seed).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sma.atomic import write_json, write_text
from sma.circuits import cache as cache_mod
from sma.circuits.ablation import ablation_scores
from sma.circuits.attribution import attribution_scores
from sma.circuits.circuit_search import Unit, find_circuit, reference_scores
from sma.circuits.config import AnalysisConfig
from sma.circuits.controls import UnitScores, magnitude_scores, random_scores
from sma.circuits.objective import ProbeBatches, ProbeScore, embed_probe, score_embeddings, tokenize_probe
from sma.circuits.patching import UnitMeans, collecting_stats, local_effects
from sma.circuits.plots import plot_all
from sma.circuits.probe import build_probe
from sma.config import to_dict
from sma.data import RetrievalData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisResult:
    scores: dict[str, UnitScores]
    """Importance of every unit, per method (``random`` uses ``cfg.seed``)."""
    circuits: dict[str, dict[str, Any]]
    """Per method: :meth:`sma.circuits.circuit_search.Circuit.to_dict` (units, share, faithfulness, top units)."""
    details: dict[str, Any]
    probe: dict[str, Any]
    cache_key: str
    from_cache: bool
    files: tuple[Path, ...]

    def circuit(self, method: str) -> tuple[Unit, ...]:
        """The method's circuit as ``(kind, layer, id)`` tuples, usable as ``plan_for_sparsity(protected=...)``."""
        return tuple((str(k), int(n), int(i)) for k, n, i in self.circuits[method]["units"])


COMMON = ("probe_splits", "probe_queries", "probe_pseudo_queries", "positives_per_query", "negatives_per_query",
          "negative_source", "ablation", "temperature", "query_max_length", "doc_max_length", "batch_size", "seed")
"""Settings every cached part depends on; each method adds its own (:data:`PART_SETTINGS`)."""
PART_SETTINGS = {
    "stats": (),
    "ablation": ("ablation_queries", "neuron_group_size", "circuit_share"),
    "attribution": ("attribution_steps", "attribution_sparsity", "ablation_queries", "circuit_share"),
    "magnitude": ("ablation_queries", "circuit_share"),
    "random": ("ablation_queries", "circuit_share"),
}
PART_VERSIONS = {"stats": 1, "ablation": 2, "attribution": 1, "magnitude": 1, "random": 1}
"""Bump a part's version when a code change alters its numbers (its cache entries are then recomputed)."""


def means_from(stats: dict[str, Any]) -> UnitMeans | None:
    """The mean-ablation baselines stored in a ``stats`` part (``None`` for zero-ablation)."""
    m = stats["means"]
    if m is None:
        return None
    return UnitMeans(heads=tuple(torch.tensor(h, dtype=torch.float64) for h in m["heads"]),
                     neurons=tuple(torch.tensor(n, dtype=torch.float64) for n in m["neurons"]))


@dataclass
class _Context:
    """What the methods share within one analysis: tokenized probes, statistics, reference scores."""

    model: Any
    cfg: AnalysisConfig
    batches: ProbeBatches
    small: ProbeBatches
    stats: dict[str, Any]
    means: UnitMeans | None
    embeddings: tuple[Any, Any] | None = None
    """The intact model's probe embeddings when this run computed them (saves attribution a pass)."""
    references: tuple[ProbeScore, ProbeScore] | None = None


def compute_stats(model, batches: ProbeBatches, cfg: AnalysisConfig) -> tuple[dict[str, Any], tuple]:
    """Unit means, local effects and the intact model's probe score (JSON-ready) + the probe embeddings."""
    with collecting_stats(model) as stats:
        embeddings = embed_probe(model, batches, stats=stats, desc="probe statistics")
    full = score_embeddings(*embeddings, batches.probe, temperature=cfg.temperature)
    means = stats.means()
    local_heads, local_neurons = local_effects(model, stats, ablation=cfg.ablation)
    return {
        "means": None if cfg.ablation == "zero" else {"heads": [h.tolist() for h in means.heads],
                                                      "neurons": [n.tolist() for n in means.neurons]},
        "local_effect": {"heads": [h.tolist() for h in local_heads], "neurons": [n.tolist() for n in local_neurons]},
        "probe_full_model": {"loss": full.loss, "ndcg_at_10": full.ndcg},
    }, embeddings


def compute_method(ctx: _Context, method: str) -> dict[str, Any]:
    """One method's scores, details and circuit (JSON-ready: what the cache stores)."""
    model, cfg = ctx.model, ctx.cfg
    t0 = time.perf_counter()
    details: dict[str, Any] = {}
    log.info("analysis: scoring units by %s", method)
    if method == "ablation":
        local = [torch.tensor(n) for n in ctx.stats["local_effect"]["neurons"]]
        res = ablation_scores(model, ctx.small, temperature=cfg.temperature, means=ctx.means, local_neurons=local,
                              group_size=cfg.neuron_group_size)
        scores, details = res.scores, res.to_dict()
    elif method == "attribution":
        att = attribution_scores(model, ctx.batches, temperature=cfg.temperature, means=ctx.means,
                                 steps=cfg.attribution_steps, sparsity=cfg.attribution_sparsity,
                                 embeddings=ctx.embeddings)
        scores = att.scores
        details = {"rounds": list(att.rounds), "first_round": att.first_round.to_dict(),
                   "signed_loss_increase": att.signed.to_dict()}
    elif method == "magnitude":
        scores = magnitude_scores(model)
    else:
        scores = random_scores(model, seed=cfg.seed)
    seconds = time.perf_counter() - t0
    if ctx.references is None:
        ctx.references = reference_scores(model, ctx.small, temperature=cfg.temperature, means=ctx.means)
    t0 = time.perf_counter()
    circuit = find_circuit(model, ctx.small, scores, temperature=cfg.temperature, means=ctx.means,
                           share=cfg.circuit_share, references=ctx.references)
    return {"scores": scores.to_dict(), "details": details, "circuit": circuit.to_dict(),
            "seconds": {"scores": seconds, "circuit": time.perf_counter() - t0}}


def faithfulness_table(circuits: dict[str, dict[str, Any]]) -> str:
    lines = ["| method | kept fraction | params | retained share | full loss / nDCG@10 | circuit only | "
             "circuit removed | all ablated |", "|---|---|---|---|---|---|---|---|"]
    for method, c in circuits.items():
        f = c["faithfulness"]
        cell = [f"{f[k]['loss']:.3f} / {f[k]['ndcg_at_10']:.3f}"
                for k in ("full", "circuit_only", "circuit_removed", "all_ablated")]
        lines.append(f"| {method} | {c['keep_fraction']:.3f} | {c['param_share']:.1%} | {c['retained_share']:.3f} | "
                     + " | ".join(cell) + " |")
    return "\n".join(lines) + "\n"


def run_analysis(model, data: RetrievalData, cfg: AnalysisConfig, out_dir: str | Path | None, *,
                 cache_dir: str | Path | None = None, use_cache: bool = True) -> AnalysisResult:
    """Score every head and neuron by ``cfg.methods``, find circuits, write ``<out_dir>/phase1``.

    Each part (activation statistics, each method with its circuit) is cached on its own, keyed by the
    model's weights, the probe and the settings it depends on, so analyses that share parts share work.
    """
    probe = build_probe(data, cfg=cfg, model=model)
    model_id = cache_mod.model_digest(model)
    folder = Path(cache_dir) if cache_dir is not None else cache_mod.default_cache_dir()
    settings = to_dict(cfg)
    keys = {part: cache_mod.cache_key(model_id=model_id, probe=probe, part=part,
                                      settings={"version": PART_VERSIONS[part],
                                                **{k: settings[k] for k in COMMON + PART_SETTINGS[part]}})
            for part in ("stats", *cfg.methods)}
    parts = {part: cache_mod.load(folder, key) if use_cache else None for part, key in keys.items()}
    from_cache = all(v is not None for v in parts.values())
    if not from_cache:
        batches = tokenize_probe(model, probe, cfg=cfg)
        embeddings = None
        if parts["stats"] is None:
            parts["stats"], embeddings = compute_stats(model, batches, cfg)
            if use_cache:
                cache_mod.store(folder, keys["stats"], parts["stats"])
        ctx = _Context(model=model, cfg=cfg, batches=batches, stats=parts["stats"], means=means_from(parts["stats"]),
                       embeddings=embeddings, small=tokenize_probe(model, probe.subset(cfg.ablation_queries), cfg=cfg))
        for part in cfg.methods:
            if parts[part] is None:
                parts[part] = compute_method(ctx, part)
                if use_cache:  # stored at once: an interrupted analysis resumes with the parts it finished
                    cache_mod.store(folder, keys[part], parts[part])
    else:
        log.info("analysis: every part cached (%s)", ", ".join(keys.values()))
    scores = {m: UnitScores.from_dict(parts[m]["scores"]) for m in cfg.methods}
    circuits = {m: parts[m]["circuit"] for m in cfg.methods}
    details = {"probe_full_model": parts["stats"]["probe_full_model"],
               "local_effect": parts["stats"]["local_effect"],
               **{m: parts[m]["details"] for m in cfg.methods if parts[m]["details"]},
               "seconds": {m: parts[m]["seconds"] for m in cfg.methods}}
    key = hashlib.sha256("".join(keys.values()).encode()).hexdigest()[:20]
    files: list[Path] = []
    if out_dir is not None:
        files = write_phase1(Path(out_dir) / "phase1", scores=scores, circuits=circuits, details=details,
                             header={"model": model_id, "dataset": data.name, "probe": probe.summary(),
                                     "config": settings, "cache_key": key})
    return AnalysisResult(scores=scores, circuits=circuits, details=details, probe=probe.summary(), cache_key=key,
                          from_cache=from_cache, files=tuple(files))


def write_phase1(phase1: Path, *, scores: dict[str, UnitScores], circuits: dict[str, dict[str, Any]],
                 details: dict[str, Any], header: dict[str, Any]) -> list[Path]:
    write_json(phase1 / "importance_scores.json",
               {**header, "methods": {m: s.to_dict() for m, s in scores.items()}, "details": details})
    write_json(phase1 / "circuits.json",
               {**header, "circuit_share": header["config"]["circuit_share"], "ablation": header["config"]["ablation"],
                "circuits": circuits})
    write_text(phase1 / "faithfulness.md", faithfulness_table(circuits))
    files = [phase1 / n for n in ("importance_scores.json", "circuits.json", "faithfulness.md")]
    return files + plot_all(scores, phase1, circuits={m: [tuple(u) for u in c["units"]] for m, c in circuits.items()})
