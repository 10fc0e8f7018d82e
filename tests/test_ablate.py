"""``sma ablate --smoke-test`` then ``sma report`` end to end: a real local Ray cluster started by the command,
a real MLflow SQLite store, the report opened in headless Chromium; rerunning the ablation resumes (runs
nothing that finished)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import check_page_in_browser
from servers import MARKER, stop_marked

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # its commands have their own timeouts

REPO = Path(__file__).resolve().parents[1]


def _sma(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "SMA_CACHE_DIR": str(cwd / "cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    env[MARKER] = marker = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "sma.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        stop_marked(marker, head=proc)  # the CLI and the local Ray it started, even if the test fails
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_ablation_on_two_collections_then_report(tmp_path):
    import shutil

    import pandas as pd
    from mlflow.tracking import MlflowClient

    from sma.tiny import smoke_assets

    _, beir = smoke_assets(tmp_path / "cache" / "smoke")  # the smoke collection, under two collection names
    for name in ("alpha", "beta"):
        shutil.copytree(beir, tmp_path / name)
    args = ("ablate", "--smoke-test", "--experiment", "abl", "--factors", "distill", "--seeds", "1",
            "--datasets", "alpha", "beta/")
    first = _sma(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "abl" / "ablate" / "summary.json").read_text())
    assert (summary["units"], summary["finished"]) == (4, 4)  # 2 collections x 2 cells x 1 sparsity x 1 seed
    client = MlflowClient(tracking_uri=summary["tracking_uri"])
    exp = client.get_experiment_by_name("abl")
    cells = client.search_runs([exp.experiment_id], "tags.role = 'cell' AND tags.result = '1'")
    assert sorted(r.data.tags["cell"] for r in cells) == ["distill=0.0"] * 2 + ["reference"] * 2
    assert all(r.info.status == "FINISHED" and "test_retention" in r.data.metrics for r in cells)
    assert sorted((Path(r.data.params["dataset"]), r.data.params["seed"]) for r in cells) == sorted(
        [(tmp_path / d, "42") for d in ("alpha", "beta")] * 2)  # absolute paths: trials run elsewhere

    again = _sma(*args, cwd=tmp_path)  # resume: everything finished, nothing runs twice
    assert again.returncode == 0 and "4 finished before, 0 to run" in again.stderr, again.stderr[-2000:]
    assert len(client.search_runs([exp.experiment_id], "tags.role = 'cell'")) == 4

    report = _sma("report", "--smoke-test", "--experiment", "abl", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    folder = tmp_path / "results" / "abl" / "report"
    table = pd.read_csv(folder / "ablation.csv")
    # one paired comparison per collection, never pooled
    assert sorted(zip(table["collection"], table["cell"], strict=True)) == [("alpha", "distill=0.0"),
                                                                            ("beta", "distill=0.0")]
    assert all(r.info.run_id in (folder / "ablation.csv").read_text() for r in cells
               if r.data.tags["cell"] != "reference")
    assert sorted(pd.read_csv(folder / "results.csv")["Collection"]) == ["alpha", "beta"]
    assert client.search_runs([exp.experiment_id], "tags.role = 'report'")
    check_page_in_browser(folder / "report.html", "report-ablation.png")
