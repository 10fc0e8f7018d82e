"""Benchmark: ``build_report`` on an experiment of N result runs (default 100) in a fresh SQLite MLflow store:
a first build (artifacts downloaded) and a second (artifacts cached), timed in one process.

    python -m analysis.bench_report [--runs 100] [--dir /tmp/sma-bench-report]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path


def make_store(root: Path, runs: int, *, queries: int = 100, seed: int = 0) -> str:
    """``runs`` result runs of experiment ``bench``: 4 sparsities, ablation cells and seeds, per-query files."""
    from mlflow.tracking import MlflowClient

    rng = random.Random(seed)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())
    cells = ("reference", "criterion=magnitude", "criterion=random", "distill=0.0", "gentleness=0.0")
    for i in range(runs):
        sparsity, cell, seed_i = (0.3, 0.5, 0.7, 0.8)[i % 4], cells[(i // 4) % len(cells)], i // 20
        run = client.create_run(exp, tags={"result": "1", "role": "cell", "cell": cell})
        rid = run.info.run_id
        for k, v in {"sparsity": sparsity, "criterion": "mechanistic", "alpha": 1.0, "gentleness": 0.5,
                     "post_prune_epochs": 8, "protect_circuits": True, "seed": seed_i}.items():
            client.log_param(rid, k, v)
        retention = 1.0 - 0.3 * sparsity ** 2 - 0.02 * rng.random()
        for k, v in {"actual_sparsity": sparsity, "dev_retention": retention + 0.01, "test_retention": retention,
                     "speedup": 1 / (1 - 0.9 * sparsity), "memory_ratio": 1 - sparsity,
                     "test_ndcg_at_10": 0.5 * retention, "test_dense_ndcg_at_10": 0.5}.items():
            client.log_metric(rid, k, v)
        per_query = {f"q{q}": {"ndcg_at_10": rng.random()} for q in range(queries)}
        blob = root / "tmp" / rid / "metrics.json"
        blob.parent.mkdir(parents=True)
        blob.write_text(json.dumps({"per_query": {"test": per_query}}))
        client.log_artifact(rid, str(blob))
        client.set_terminated(rid)
    return uri


def main() -> None:
    from analysis.report import build_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="sma-bench-report-"))
    try:
        start = time.perf_counter()
        uri = make_store(root, args.runs)
        print(f"store of {args.runs} runs built in {time.perf_counter() - start:.1f} s")
        for label in ("first build (downloads artifacts)", "second build (artifacts cached)"):
            start = time.perf_counter()
            build_report("bench", uri=uri, results_dir=root / "results", resamples=10_000)
            print(f"{label}: {time.perf_counter() - start:.1f} s")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
