"""``run_analysis``: probe -> importance of every head and neuron by each method -> circuits -> files.

Writes ``<out_dir>/phase1/importance_scores.json`` (every unit, every method), ``circuits.json``,
``faithfulness.md`` and PNG plots. Results are cached by (model weights, probe, settings, seed).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sma.circuits import cache as cache_mod
from sma.circuits.ablation import ablation_scores
from sma.circuits.attribution import attribution_scores
from sma.circuits.baselines import UnitScores, magnitude_scores, random_scores
from sma.circuits.circuits import Unit, find_circuit
from sma.circuits.config import AnalysisConfig
from sma.circuits.objective import evaluate_probe, tokenize_probe
from sma.circuits.patching import collecting_stats, local_effects
from sma.circuits.plots import plot_all
from sma.circuits.probe import ProbeSet, build_probe
from sma.config import to_dict
from sma.data import RetrievalData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisResult:
    scores: dict[str, UnitScores]
    """Importance of every unit, per method (``random`` uses ``cfg.seed``)."""
    circuits: dict[str, dict[str, Any]]
    """Per method: :meth:`sma.circuits.circuits.Circuit.to_dict` (units, share, faithfulness, top units)."""
    details: dict[str, Any]
    probe: dict[str, Any]
    cache_key: str
    from_cache: bool
    files: tuple[Path, ...]

    def circuit(self, method: str) -> tuple[Unit, ...]:
        """The method's circuit as ``(kind, layer, id)`` tuples, usable as ``plan_for_sparsity(protected=...)``."""
        return tuple((str(k), int(n), int(i)) for k, n, i in self.circuits[method]["units"])


def _scores_to_json(s: UnitScores) -> dict[str, Any]:
    return {"method": s.method, "heads": [list(h) for h in s.heads], "neurons": [list(n) for n in s.neurons]}


def _scores_from_json(d: dict[str, Any]) -> UnitScores:
    return UnitScores(heads=tuple(tuple(h) for h in d["heads"]), neurons=tuple(tuple(n) for n in d["neurons"]),
                      method=d["method"])


def compute(model, probe: ProbeSet, cfg: AnalysisConfig) -> dict[str, Any]:
    """The whole analysis as a JSON-ready dict (what the cache stores)."""
    batches = tokenize_probe(model, probe, cfg=cfg)
    small = tokenize_probe(model, probe.subset(cfg.ablation_queries), cfg=cfg)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with collecting_stats(model) as stats:
        full = evaluate_probe(model, batches, temperature=cfg.temperature, stats=stats)
    means = stats.means() if cfg.ablation == "mean" else None
    local_heads, local_neurons = local_effects(model, stats, ablation=cfg.ablation)
    timings["probe_statistics"] = time.perf_counter() - t0
    scores: dict[str, UnitScores] = {}
    details: dict[str, Any] = {"probe_full_model": {"loss": full.loss, "ndcg_at_10": full.ndcg},
                               "local_effect": {"heads": [h.tolist() for h in local_heads],
                                                "neurons": [n.tolist() for n in local_neurons]}}
    for method in cfg.methods:
        t0 = time.perf_counter()
        log.info("analysis: scoring units by %s", method)
        if method == "ablation":
            res = ablation_scores(model, small, temperature=cfg.temperature, means=means,
                                  local_neurons=local_neurons, group_size=cfg.neuron_group_size)
            scores[method] = res.scores
            details[method] = res.to_dict()
        elif method == "attribution":
            att = attribution_scores(model, batches, temperature=cfg.temperature, means=means,
                                     steps=cfg.attribution_steps, sparsity=cfg.attribution_sparsity)
            scores[method] = att.scores
            details[method] = {"rounds": list(att.rounds), "first_round": _scores_to_json(att.first_round),
                               "signed_loss_increase": _scores_to_json(att.signed)}
        elif method == "magnitude":
            scores[method] = magnitude_scores(model)
        else:
            scores[method] = random_scores(model, seed=cfg.seed)
        timings[method] = time.perf_counter() - t0
    circuits = {}
    for method, s in scores.items():
        t0 = time.perf_counter()
        circuit = find_circuit(model, small, s, temperature=cfg.temperature, means=means, share=cfg.circuit_share)
        circuits[method] = circuit.to_dict()
        timings[f"circuit_{method}"] = time.perf_counter() - t0
    details["seconds"] = timings
    return {"scores": {m: _scores_to_json(s) for m, s in scores.items()}, "circuits": circuits,
            "details": details}


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
    """Score every head and neuron by ``cfg.methods``, find circuits, write ``<out_dir>/phase1``."""
    probe = build_probe(data, cfg=cfg, model=model)
    model_id = cache_mod.model_digest(model)
    key = cache_mod.cache_key(model_id=model_id, probe=probe, cfg=cfg)
    folder = Path(cache_dir) if cache_dir is not None else cache_mod.default_cache_dir()
    payload = cache_mod.load(folder, key) if use_cache else None
    from_cache = payload is not None
    if payload is None:
        payload = compute(model, probe, cfg)
        if use_cache:
            cache_mod.store(folder, key, payload)
    else:
        log.info("analysis: reusing cached result %s", key)
    scores = {m: _scores_from_json(d) for m, d in payload["scores"].items()}
    files: list[Path] = []
    if out_dir is not None:
        phase1 = Path(out_dir) / "phase1"
        phase1.mkdir(parents=True, exist_ok=True)
        header = {"model": model_id, "dataset": data.name, "probe": probe.summary(), "config": to_dict(cfg),
                  "cache_key": key}
        (phase1 / "importance_scores.json").write_text(json.dumps(
            {**header, "methods": payload["scores"], "details": payload["details"]}, indent=1) + "\n")
        (phase1 / "circuits.json").write_text(json.dumps(
            {**header, "circuit_share": cfg.circuit_share, "ablation": cfg.ablation,
             "circuits": payload["circuits"]}, indent=1) + "\n")
        (phase1 / "faithfulness.md").write_text(faithfulness_table(payload["circuits"]))
        files = [phase1 / n for n in ("importance_scores.json", "circuits.json", "faithfulness.md")]
        circuit_units = {m: [tuple(u) for u in c["units"]] for m, c in payload["circuits"].items()}
        files += plot_all(scores, phase1, circuits=circuit_units)
    return AnalysisResult(scores=scores, circuits=payload["circuits"], details=payload["details"],
                          probe=probe.summary(), cache_key=key, from_cache=from_cache, files=tuple(files))
