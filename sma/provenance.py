"""Where a result came from: the ``sma`` command line that made it and the checkout's commit.

Light (no MLflow): ``sma run`` writes both into ``results.json`` whether or not it tracks, so that ``sma log``
can give a run made without tracking the same provenance as a tracked one."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from pathlib import Path


def invocation() -> str | None:
    """This process's ``sma`` command line; ``None`` when it is not the ``sma`` CLI (a Ray worker, a test)."""
    program = sys.argv[0] if sys.argv else ""
    if Path(program).name == "sma" or program.endswith(os.path.join("sma", "cli.py")):
        return shlex.join(["sma", *sys.argv[1:]])
    return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the checkout SMA runs from, or ``unknown`` (an installed copy, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
