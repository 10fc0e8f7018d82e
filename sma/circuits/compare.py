"""Which selection keeps retrieval best? One-shot pruning by each method's scores, no fine-tuning.

For every method (random over several seeds, plus the naive first-N reference) the dense model is pruned
physically to ``sparsity`` with :func:`sma.prune.plan_for_sparsity` / :func:`sma.prune.apply_plan` and
evaluated on the test split; retention = pruned nDCG@10 / dense nDCG@10. The default allocation,
``per_layer`` + ``proportional``, removes the same number of heads and of neurons from every layer, so the
methods differ only in WHICH units they keep.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sma.atomic import write_json, write_text
from sma.circuits.config import AnalysisConfig
from sma.circuits.controls import UnitScores, random_scores
from sma.circuits.run import run_analysis
from sma.data import RetrievalData
from sma.evaluate import encode_corpus, evaluate
from sma.prune import apply_plan, encoder_sparsity, first_n_scores, plan_for_sparsity


@dataclass(frozen=True)
class CompareRow:
    method: str
    ndcg_at_10: float
    retention: float
    actual_sparsity: float
    eval_seconds: float


@dataclass(frozen=True)
class Comparison:
    dataset: str
    split: str
    sparsity: float
    allocation: str
    dense_ndcg_at_10: float
    rows: tuple[CompareRow, ...]
    analysis_seconds: float
    total_seconds: float
    analysis_from_cache: bool

    def table(self) -> str:
        lines = [f"One-shot pruning to {self.sparsity:.0%} encoder sparsity ({self.allocation}), no fine-tuning, "
                 f"{self.dataset} {self.split}: dense nDCG@10 = {self.dense_ndcg_at_10:.4f}", "",
                 "| method | nDCG@10 | retention | actual sparsity |", "|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.method} | {r.ndcg_at_10:.4f} | {r.retention:.1%} | {r.actual_sparsity:.1%} |")
        randoms = [r.retention for r in self.rows if r.method.startswith("random")]
        if len(randoms) > 1:
            mean = sum(randoms) / len(randoms)
            lines.append(f"| random, mean of {len(randoms)} seeds | | {mean:.1%} "
                         f"(min {min(randoms):.1%}, max {max(randoms):.1%}) | |")
        lines += ["", f"analysis {self.analysis_seconds:.0f} s{' (cached)' if self.analysis_from_cache else ''}, "
                      f"total {self.total_seconds:.0f} s"]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}


def compare_methods(model, data: RetrievalData, cfg: AnalysisConfig, *, sparsity: float = 0.5,
                    random_seeds: int = 3, allocation: str = "per_layer", split: str = "proportional",
                    eval_split: str = "test", out_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None, batch_size: int = 64,
                    show_progress: bool = True) -> Comparison:
    """Analyse (cached), then prune a copy of ``model`` by every method's scores and evaluate each."""
    start = time.perf_counter()
    analysis = run_analysis(model, data, cfg, out_dir, cache_dir=cache_dir)
    analysis_seconds = time.perf_counter() - start
    corpus, queries, qrels = data.split(eval_split)

    def score(m) -> tuple[float, float]:
        t0 = time.perf_counter()
        emb = encode_corpus(m, corpus, batch_size=batch_size, show_progress=show_progress)
        res = evaluate(m, corpus, queries, qrels, metrics=("nDCG@10",), corpus_embeddings=emb)
        return res.mean["ndcg_at_10"], time.perf_counter() - t0

    dense, _ = score(model)
    candidates: list[UnitScores] = [analysis.scores[m] for m in cfg.methods if m != "random"]
    if "random" in cfg.methods:
        candidates += [random_scores(model, seed=cfg.seed + i) for i in range(random_seeds)]
    candidates.append(first_n_scores(model))
    rows = []
    for scores in candidates:
        plan = plan_for_sparsity(model, scores, sparsity, allocation=allocation, split=split)
        pruned = apply_plan(copy.deepcopy(model), plan)
        ndcg, seconds = score(pruned)
        rows.append(CompareRow(method=scores.method, ndcg_at_10=ndcg, retention=ndcg / dense if dense else 0.0,
                               actual_sparsity=encoder_sparsity(pruned).sparsity, eval_seconds=seconds))
        del pruned
    result = Comparison(dataset=data.name, split=eval_split, sparsity=sparsity, allocation=f"{allocation}/{split}",
                        dense_ndcg_at_10=dense, rows=tuple(rows), analysis_seconds=analysis_seconds,
                        total_seconds=time.perf_counter() - start, analysis_from_cache=analysis.from_cache)
    if out_dir is not None:
        folder = Path(out_dir) / "phase1"
        name = f"compare_s{sparsity:.2f}"
        write_json(folder / f"{name}.json", result.to_dict())
        write_text(folder / f"{name}.md", result.table())
    return result
