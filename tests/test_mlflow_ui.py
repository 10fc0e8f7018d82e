"""A smoke search (1 sparsity x 2 trials) logging over HTTP to ``mlflow/server.sh`` on a free loopback port,
then checked as a person sees it: the MLflow UI in headless Chromium (runs table with the study's parent run
and its trials, the comparison of two trials, the study's Pareto plot, the registered model) and the same
facts through the API (dataset inputs, per-epoch metrics logged while the trial ran, the registered pyfunc
embedding like ``sma.load_pruned``). Screenshots are kept in ``.test-artifacts/``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from servers import free_port, listening_hosts, local_ray, stop_group, wait_http
from test_tune_search import smoke_search

from sma.model import BiEncoder
from sma.registry import TRIAL_RUN_TAG
from sma.tracking_ui import DATASET_CONTEXT_TAG, EXPERIMENT_KIND_TAG, STUDY_PLOT, TRAINING_KIND, runs_url
from tune.search import search

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / ".test-artifacts"
EXPERIMENT, STUDY = "ui", "ui-s0.50"
COMPARED = ("alpha", "gentleness", "post_prune_epochs", "dev_retention")
FILTERED_PARAMS = ("sparsity", "criterion", "dataset", "model")
FILTERED_METRICS = ("dev_retention", "test_retention", "speedup", "memory_ratio")
TEXTS = ["wing lift drag", "what is the boundary layer of a cone", "shock wave"]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    """``bash mlflow/server.sh`` with a temporary store on a free port; it must listen on 127.0.0.1 only."""
    store = tmp_path_factory.mktemp("mlflow-store")
    env = {**os.environ, "MLFLOW_STORE": str(store), "MLFLOW_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_HOST", None)
    log = store / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(["bash", str(REPO / "mlflow" / "server.sh"), "--workers", "1"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
        wait_http(f"{url}/health", server, log)
        assert listening_hosts(server.pid) == {"127.0.0.1"}
        yield url
    finally:
        stop_group(server)


@pytest.fixture(scope="module")
def searched(mlflow_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui-search")
    cfg = smoke_search(tmp, experiment=EXPERIMENT, sparsity=(0.5,), trials_per_study=2,
                       **{"space.post_prune_epochs": "1 2", "run.mlflow_tracking_uri": mlflow_url})
    with local_ray():
        results = search(cfg)
    assert results[0].progress.complete == 2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    parent = client.get_run(results[0].parent_run_id)
    children = sorted(client.search_runs([exp.experiment_id], filter_string=f"tags.role = 'trial' AND "
                                         f"tags.study = '{STUDY}'"), key=lambda r: int(r.data.tags["optuna_trial"]))
    return cfg, client, exp, parent, children


def test_runs_carry_what_a_person_filters_and_sorts_on(searched):
    cfg, client, exp, parent, children = searched
    assert exp.tags.get(EXPERIMENT_KIND_TAG) == TRAINING_KIND
    assert len(children) == 2
    for run in (parent, *children):
        (given,) = run.inputs.dataset_inputs  # the runs table's Dataset column
        assert given.dataset.name == Path(cfg.run.data.dataset).name
        assert {t.key: t.value for t in given.tags}[DATASET_CONTEXT_TAG] == "train"
    for run in children:
        assert set(FILTERED_PARAMS) <= set(run.data.params) and set(FILTERED_METRICS) <= set(run.data.metrics)
        assert run.data.params["dataset"] == cfg.run.data.dataset
    assert STUDY_PLOT in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_per_epoch_metrics_reach_mlflow_while_the_trial_runs(searched):
    """Each epoch's dev retention and train loss (but the last) were logged before the trial's pipeline ended, not
    with the final metrics (logged after Ray Train has torn the workers down, ``ray_teardown_seconds`` later)."""
    _, client, _, _, children = searched
    for run in children:
        epochs = int(run.data.params["post_prune_epochs"])
        final_at = client.get_metric_history(run.info.run_id, "speedup")[0].timestamp / 1000
        pipeline_ended_at = final_at - run.data.metrics["ray_teardown_seconds"]
        for key in ("dev_retention", "train_loss"):
            history = client.get_metric_history(run.info.run_id, key)
            live = [m for m in history if m.timestamp / 1000 < pipeline_ended_at]
            # every epoch but the last was logged while the pipeline still ran (the last one's report and the
            # pipeline's end are a moment apart on the tiny model, and Tune relays reports asynchronously)
            assert {m.step for m in live} >= set(range(1, epochs)), (key, live)
            assert {m.step for m in history} >= set(range(1, epochs + 1)), (key, history)


def test_the_best_trial_is_registered_and_embeds_like_load_pruned(searched, tmp_path, monkeypatch):
    import mlflow

    cfg, client, _, parent, children = searched
    best = max(children, key=lambda r: r.data.metrics["dev_retention"])  # chosen on dev
    version = max(client.search_model_versions(f"name = '{STUDY}'"), key=lambda v: int(v.version))
    assert int(version.version) == 1 and version.run_id == parent.info.run_id
    assert version.tags[TRIAL_RUN_TAG] == best.info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # models:/ resolves through the server
    model = mlflow.pyfunc.load_model(f"models:/{STUDY}/latest")
    best_dir = client.download_artifacts(parent.info.run_id, "best_model", str(tmp_path))
    m = cfg.run.model
    reference = BiEncoder.from_pretrained(best_dir, pooling=m.pooling, query_max_length=m.query_max_length,
                                          doc_max_length=m.doc_max_length, normalize=m.normalize)
    for kind in ("query", "document"):
        got = model.predict(TEXTS, params={"kind": kind})
        np.testing.assert_allclose(got, reference.encode(TEXTS, kind=kind).numpy(), atol=1e-5, rtol=0)


# -- the UI in headless Chromium ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    SHOTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def page_shows(driver, *texts: str, timeout: float = 90) -> str:
    """The page's text once it contains every one of ``texts`` (a screenshot of the failure otherwise)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def body() -> str:
        return driver.find_element("tag name", "body").text

    try:
        WebDriverWait(driver, timeout).until(lambda _: all(t in body() for t in texts))
    except TimeoutException:
        driver.save_screenshot(str(SHOTS / "mlflow-failed.png"))
        pytest.fail(f"the page {driver.current_url} never showed {texts}; it shows:\n{body()[:3000]}")
    return body()


def scrolled_text(driver, *, steps: int = 60) -> str:
    """The page's text seen while every scrollable box scrolls down step by step (tables render the rows in
    view only)."""
    import time

    seen = []
    for _ in range(steps):
        seen.append(driver.find_element("tag name", "body").text)
        moved = driver.execute_script(
            "let moved = false; document.querySelectorAll('*').forEach(e => {"
            " if (e.scrollHeight > e.clientHeight + 1 && e.scrollTop + e.clientHeight < e.scrollHeight - 1) {"
            " e.scrollTop += 120; moved = true; } }); return moved;")
        if not moved:
            break
        time.sleep(0.3)
    return "\n".join(seen)


def test_ui_lists_the_study_run_with_its_trials(searched, mlflow_url, browser):
    cfg, _, exp, parent, children = searched
    url = runs_url(mlflow_url, exp.experiment_id)
    browser.get(url)
    page_shows(browser, STUDY, "Dataset")
    assert "/runs" in browser.current_url  # the training runs, not the GenAI overview
    browser.find_element("css selector", "button[data-component-id*='runnamecellrenderer']").click()  # expand
    text = page_shows(browser, *[c.info.run_name for c in children])
    assert Path(cfg.run.data.dataset).name in text  # the Dataset column
    browser.save_screenshot(str(SHOTS / "mlflow-runs.png"))


def test_ui_compares_two_trials(searched, mlflow_url, browser):
    _, _, exp, _, children = searched
    query = urllib.parse.urlencode({"runs": json.dumps([c.info.run_id for c in children]),
                                    "experiments": json.dumps([exp.experiment_id]),
                                    "workflowType": "machine_learning"})
    browser.get(f"{mlflow_url}/#/compare-runs?{query}")
    text = page_shows(browser, "Comparing 2 Runs", *COMPARED[:-1]) + scrolled_text(browser)
    assert all(name in text for name in COMPARED), text[-3000:]
    for run in children:
        assert run.info.run_name in text and run.data.params["alpha"] in text
    browser.save_screenshot(str(SHOTS / "mlflow-compare.png"))


def test_ui_shows_the_study_plot_and_the_registered_model(searched, mlflow_url, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, exp, parent, _ = searched
    browser.get(f"{mlflow_url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/"
                f"{STUDY_PLOT}?workflowType=machine_learning")
    page_shows(browser, STUDY_PLOT)
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "return Array.from(document.images).some(i => i.complete && i.naturalWidth > 300)"))
    browser.save_screenshot(str(SHOTS / "mlflow-study-plot.png"))
    browser.get(f"{mlflow_url}/#/models/{STUDY}?workflowType=machine_learning")
    page_shows(browser, STUDY, "Version 1")
    browser.save_screenshot(str(SHOTS / "mlflow-registered-model.png"))
