"""Analysis parts in the project cache (:mod:`sma.cache`, kind ``analysis``): key = (model weights, probe,
part, its settings). ``cache_dir`` arguments are cache roots: parts live in ``<root>/analysis/<key>.json``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sma.cache import Cache, cache_root, entry_key
from sma.circuits.probe import ProbeSet

KIND = "analysis"


def default_cache_dir() -> Path:
    """The project cache root (``$SMA_CACHE_DIR``, default ``~/.cache/sma``)."""
    return cache_root()


def model_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, shapes, dtypes, bytes): the model's identity."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def cache_key(*, model_id: str, probe: ProbeSet, part: str, settings: dict[str, Any]) -> str:
    """Key of one cached part of an analysis (``part``: ``stats`` or a method) under ``settings``."""
    return entry_key(KIND, model_id, probe.digest(), part, settings)


def load(cache_dir: Path, key: str) -> dict[str, Any] | None:
    """The part stored under ``key`` in the cache rooted at ``cache_dir`` (``None``: absent or corrupt)."""
    return Cache(cache_dir).load(KIND, key, "json")


def store(cache_dir: Path, key: str, value: dict[str, Any]) -> Path:
    return Cache(cache_dir).save(KIND, key, value, "json")
