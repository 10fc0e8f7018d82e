"""Content-addressed cache of analysis parts: key = (model weights, probe, part, its settings, code version)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sma.cache import cache_root
from sma.circuits.probe import ProbeSet

CACHE_VERSION = 1
"""Bump when a change alters the numbers an analysis produces."""


def default_cache_dir() -> Path:
    """``$SMA_CACHE_DIR/analysis`` (default ``~/.cache/sma/analysis``)."""
    return cache_root() / "analysis"


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
    payload = {"version": CACHE_VERSION, "model": model_id, "probe": probe.digest(), "part": part,
               "settings": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def load(cache_dir: Path, key: str) -> dict[str, Any] | None:
    path = cache_dir / f"{key}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn write: recompute


def store(cache_dir: Path, key: str, value: dict[str, Any]) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return path
