"""``sma run --workers 2``: one pipeline on two Ray Train workers (gloo DDP on CPUs), through the real CLI, which
starts a local Ray and stops it; its results and MLflow runs are those of a one-process ``sma run``."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from servers import MARKER, stop_marked

from sma.config import RunConfig, apply_overrides

REPO = Path(__file__).resolve().parents[1]
SMA = Path(sys.executable).with_name("sma")


def test_only_several_workers_or_gpus_go_through_ray():
    assert not RunConfig().workers.on_ray
    assert apply_overrides(RunConfig(), {"workers.num_workers": 2}).workers.on_ray
    assert apply_overrides(RunConfig(), {"workers.gpus_per_worker": 1}).workers.on_ray


@pytest.mark.slow
def test_sma_run_on_two_ddp_workers(tmp_path):
    from mlflow.tracking import MlflowClient

    argv = ["run", "--smoke-test", "--workers", "2", "--experiment", "ddp-run", "--output-dir", str(tmp_path / "res"),
            "--cache-dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env[MARKER] = marker = uuid.uuid4().hex
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(SMA), *argv], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=600)
        finally:
            leftovers = stop_marked(marker, head=proc)  # the CLI and the local Ray it started, whatever happened
    assert not leftovers, f"processes of the run's Ray cluster left running: {leftovers}"
    text = log.read_text()
    assert rc == 0, text[-3000:]
    run_dir = tmp_path / "res" / "ddp-run"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2
    assert [r["sparsity"] for r in results["sparsities"]] == [0.3, 0.5]
    for r in results["sparsities"]:
        assert 0.0 < r["test_retention"] and Path(r["artifacts"]["model"]).is_dir()
    rank0 = re.search(r"pid=(\d+)\) world_rank=0", text).group(1)
    printers = set(re.findall(r"pid=(\d+)\)\S* Dense ", text))
    assert printers == {rank0} and "Sparsity   Actual" in text  # only rank 0 printed the tables
    assert (run_dir / "ray").is_dir()  # Ray Train's record of the two workers

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'res' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ddp-run")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.role = 'run'")
    children = client.search_runs([exp.experiment_id], filter_string="tags.role = 'sparsity'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # rank 1 logged nothing
    assert parents[0].data.tags["command"] == shlex.join(["sma", *argv])
    assert sorted(float(c.data.params["sparsity"]) for c in children) == [0.3, 0.5]
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
