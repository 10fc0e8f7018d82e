"""Shared fixtures: a tiny BEIR collection and a tiny randomly initialised BERT with its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

from sma.smoke import TINY_CORPUS, TINY_QRELS, TINY_QUERIES, WORDS, make_tiny_model_dir, write_beir  # noqa: F401, E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny")


def shared_data_dir() -> Path | None:
    env = os.environ.get("SMA_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for c in candidates:
        if (c / "cranfield" / "corpus.jsonl").is_file():
            return c
    return None
