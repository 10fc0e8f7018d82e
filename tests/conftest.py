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
