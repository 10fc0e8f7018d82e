"""Shared fixtures: the tiny BEIR collection and the tiny randomly initialised BERT of :mod:`sma.tiny`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

# the tiny collection's parts are importable from here too (``from conftest import TINY_CORPUS``)
from sma.tiny import TINY_CORPUS, TINY_QRELS, TINY_QUERIES, WORDS, make_tiny_model_dir, write_beir  # noqa: F401, E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny")


def check_page_in_browser(page: Path, screenshot: str) -> None:
    """Every image of ``page`` loaded (naturalWidth > 0), no console errors, in headless Chromium; a screenshot
    kept as ``.test-artifacts/<screenshot>``. Skips when Debian's chromium / chromium-driver are missing."""
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,2000"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(page.as_uri())
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert widths and all(w > 0 for w in widths), widths
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        assert driver.find_elements("tag name", "table")
        shots = Path(__file__).resolve().parents[1] / ".test-artifacts"
        shots.mkdir(exist_ok=True)
        driver.save_screenshot(str(shots / screenshot))
    finally:
        driver.quit()
