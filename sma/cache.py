"""Content-hash keyed cache folders and files for work that trials share (baseline, analysis, teacher targets)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from sma.config import to_dict


def content_hash(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (dataclasses allowed)."""
    norm = [to_dict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts]
    blob = json.dumps(norm, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_root(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("SMA_CACHE_DIR", Path.home() / ".cache" / "sma"))


def publish(tmp: Path, final: Path) -> Path:
    """Atomically move a finished ``tmp`` folder into place; if another process won the race, keep theirs."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def save_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.{id(obj)}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path
