"""optuna-dashboard opens the search's studies from the same storage URL, bound to 127.0.0.1 (README)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from servers import free_port, listening_hosts, stop_group, wait_http

from tune.studies import rdb_storage, study_name


def test_dashboard_lists_the_search_studies(tmp_path):
    cli = Path(sys.executable).parent / "optuna-dashboard"
    if not cli.is_file() and shutil.which("optuna-dashboard") is None:
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[dev]')")
    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = rdb_storage(url)
    names = [study_name("dash", s) for s in (0.3, 0.5)]
    for i, name in enumerate(names):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        for value in range(i + 1):
            study.add_trial(optuna.trial.create_trial(params={"alpha": 0.1 * value},
                                                      distributions={"alpha": optuna.distributions.FloatDistribution(0, 1)},
                                                      value=0.9 - 0.1 * value))
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    server = subprocess.Popen([str(cli), url, "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api/studies"
        wait_http(api, server, tmp_path / "dashboard.log", timeout=60)
        with urllib.request.urlopen(api, timeout=10) as resp:
            listed = json.load(resp)["study_summaries"]
        assert sorted((s["study_name"], s["directions"]) for s in listed) == [(n, ["maximize"]) for n in names]
        assert listening_hosts(server.pid) == {"127.0.0.1"}
    finally:
        stop_group(server)
