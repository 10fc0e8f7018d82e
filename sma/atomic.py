"""Atomic writes, the one way results, plans, models and cache entries reach the disk.

Everything is written beside its final name (a hidden temporary sibling, same filesystem) and renamed into
place, so a reader, or a rerun after a crash, sees either the previous complete content or the new complete
content, never a half-written file. If the write raises, the temporary is removed and the destination is
left as it was.

:func:`atomic_file` / :func:`atomic_dir` yield the temporary to fill; :func:`write_bytes`, :func:`write_text`,
:func:`write_json` and :func:`torch_save` are the one-call forms.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name beside ``path``. Not ``tempfile.mkstemp``: its files are private (0600), and the
    renamed result must get the permissions of any other file the user writes (the umask's)."""
    return path.with_name(f".{path.name}.{tag}{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file beside ``path``; when the block succeeds it replaces ``path`` in one rename.

    The temporary's name ends in ``.tmp``: give writers that guess a format from the suffix the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    An existing ``path`` is replaced as a whole (``replace=True``: it is renamed aside, the new folder renamed
    in, then the old one deleted) or kept (``replace=False``: the first folder published wins, ours is
    dropped, as for cache entries that two processes may build at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "")
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        if path.exists() and replace:
            old = _sibling(path, "old.")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.is_dir():
                raise
    finally:
        if old is not None and old.exists() and not path.exists():  # the new one did not arrive: old one back
            os.replace(old, path)
        for leftover in (tmp, old):
            if leftover is not None:
                _remove(leftover)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, value: Any, *, indent: int | None = 1, default: Any = None) -> Path:
    """``value`` as JSON plus a final newline. The text is built before the file is touched."""
    return write_text(path, json.dumps(value, indent=indent, default=default) + "\n")


def torch_save(obj: Any, path: str | Path) -> Path:
    import torch  # only tensor files need it: light modules import this one too

    with atomic_file(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
