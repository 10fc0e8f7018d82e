"""One content-addressed cache for the work that runs and trials share.

Every stage goes through :class:`Cache`: the dense teacher (a folder), its evaluation and distillation
embeddings (tensor files), the parts of the mechanistic analysis (JSON files) and BEIR collections downloaded
from the hub (folders). An entry lives at ``<root>/<kind>/<key>[.pt|.json]``, where ``key`` hashes the kind, its
version in :data:`VERSIONS` and whatever the value depends on. Entries are published atomically (written
beside their final name, then renamed: :mod:`sma.atomic`) and checked on load: a file carries the SHA-256 of
its payload, a folder a manifest of its files' sizes and SHA-256 written last. A torn or corrupt entry is
logged, deleted and recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sma.atomic import atomic_dir, write_bytes

log = logging.getLogger(__name__)

VERSIONS: dict[str, int] = {
    "teacher": 1,  # folder: the teacher's metrics (+ fine-tuned weights)
    "teacher-eval": 1,  # .pt: teacher embeddings of the corpus and the dev/test queries (student agreement)
    "teacher-targets": 1,  # .pt: teacher embeddings of the distillation texts
    "analysis": 1,  # .json: one part of the mechanistic analysis (parts also carry their own version)
    "beir": 1,  # folder: a BEIR collection downloaded from the HF hub
}
"""Bump a kind's version when a code change alters what its entries hold: its old entries are then ignored."""

MAGIC = b"SMA-CACHE-1 "
MANIFEST = ".sma-complete"
"""Written last into a folder entry: its files with their sizes and SHA-256."""
FORMATS = ("pt", "json")


def content_hash(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (dataclasses allowed)."""
    norm = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) and not isinstance(p, type) else p for p in parts]
    blob = json.dumps(norm, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_key(kind: str, *parts: Any) -> str:
    """Content hash of ``parts`` under ``kind`` and its version (:data:`VERSIONS`): an entry's name."""
    return content_hash(kind, VERSIONS[kind], *parts)


def cache_root(configured: str | Path | None = None) -> Path:
    """``configured`` (``RunConfig.cache_dir``), else ``$SMA_CACHE_DIR``, else ``~/.cache/sma``."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("SMA_CACHE_DIR", Path.home() / ".cache" / "sma"))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(folder: Path) -> dict[str, list]:
    return {str(p.relative_to(folder)): [p.stat().st_size, _sha256_file(p)]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def _encode(value: Any, fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(value).encode()
    import torch  # only the tensor entries need it: ``sma.data`` stays light

    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def _decode(blob: bytes) -> bytes:
    """The payload of a cache file; ``ValueError`` when the header or its checksum does not match."""
    head, sep, payload = blob.partition(b"\n")
    if not sep or not head.startswith(MAGIC):
        raise ValueError("no cache header")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(MAGIC):]:
        raise ValueError("checksum mismatch (truncated or corrupt)")
    return payload


class Cache:
    """The cache under one root. ``key`` names an entry; ``get``/``load``/``save`` handle files,
    ``folder``/``build_folder`` handle folders."""

    def __init__(self, root: str | Path | None = None):
        self.root = cache_root(root)

    key = staticmethod(entry_key)

    def path(self, kind: str, key: str, fmt: str | None = None) -> Path:
        return self.root / kind / (f"{key}.{fmt}" if fmt else key)

    def _discard(self, path: Path, why: str) -> None:
        log.warning("cache: %s is %s; deleting it and recomputing", path, why)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def load(self, kind: str, key: str, fmt: str = "pt") -> Any | None:
        """The stored value, or ``None`` when absent (or corrupt: then it is deleted)."""
        path = self.path(kind, key, fmt)
        if not path.is_file():
            return None
        try:
            payload = _decode(path.read_bytes())
            if fmt == "json":
                return json.loads(payload)
            import torch

            return torch.load(io.BytesIO(payload), weights_only=True)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the entry is unusable
            self._discard(path, f"unreadable ({exc})")
            return None

    def save(self, kind: str, key: str, value: Any, fmt: str = "pt") -> Path:
        """Store ``value`` (``torch.save``-able for ``pt``, JSON-able for ``json``) with its checksum."""
        if fmt not in FORMATS:
            raise ValueError(f"cache format must be one of {FORMATS}, got {fmt!r}")
        payload = _encode(value, fmt)
        path = self.path(kind, key, fmt)
        return write_bytes(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)

    def get(self, kind: str, key: str, compute: Callable[[], Any], fmt: str = "pt") -> Any:
        """The stored value, else ``compute()`` stored and returned."""
        value = self.load(kind, key, fmt)
        if value is None:
            value = compute()
            self.save(kind, key, value, fmt)
        return value

    def folder(self, kind: str, key: str) -> Path | None:
        """The complete folder entry, or ``None`` (a folder whose manifest is missing or wrong is deleted)."""
        path = self.path(kind, key)
        if not path.is_dir():
            return None
        marker = path / MANIFEST
        try:
            expected = json.loads(marker.read_text())
        except (OSError, ValueError):
            self._discard(path, "incomplete (no valid manifest)")
            return None
        if _manifest(path) != expected:
            self._discard(path, "corrupt (files differ from its manifest)")
            return None
        return path

    def build_folder(self, kind: str, key: str, fill: Callable[[Path], Any]) -> Path:
        """Run ``fill(tmp)`` on a fresh temporary folder, seal it with its manifest and publish it."""
        path = self.path(kind, key)
        with atomic_dir(path, replace=False) as tmp:  # built by two processes at once: the first one stays
            fill(tmp)
            (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp)))
        return path
