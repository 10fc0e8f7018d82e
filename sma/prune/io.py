"""Placeholder until the pruning engine lands (issue 3)."""

from __future__ import annotations

from pathlib import Path

STRUCTURE_FILE = "sma_structure.json"


def is_pruned_dir(path: str | Path) -> bool:
    return (Path(path) / STRUCTURE_FILE).is_file()


def load_pruned_encoder(path: str | Path):
    raise NotImplementedError("pruned model loading lands with the pruning engine")
