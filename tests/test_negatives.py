"""BM25 hard negatives (bm25s), and JAX kept off the GPU when bm25s imports it."""

from __future__ import annotations

import importlib.abc
import sys

import pytest

from sma.negatives import bm25_ranking, mine_negatives

CORPUS = {
    "d1": {"title": "", "text": "wing flutter at supersonic speed"},
    "d2": {"title": "", "text": "boundary layer transition on a flat plate"},
    "d3": {"title": "", "text": "heat transfer in the boundary layer"},
}


def test_bm25_ranks_the_documents_sharing_the_query_terms_first():
    ranking = bm25_ranking(CORPUS, {"q": "boundary layer heat"}, ["q"], k=3)
    # d3 has all three terms, d2 two of them, d1 none
    assert ranking["q"][:2] == ["d3", "d2"]
    assert mine_negatives(ranking, {"q": {"d3": 1}}, per_query=1) == {"q": ["d2"]}


class _JaxWatcher(importlib.abc.MetaPathFinder):
    """Stands in for an installed JAX: records ``JAX_PLATFORMS`` when ``jax`` is imported, then reports it
    missing (so bm25s falls back to numpy)."""

    def __init__(self):
        self.platforms: list[str | None] = []

    def find_spec(self, name, path=None, target=None):
        if name == "jax" or name.startswith("jax."):
            import os

            self.platforms.append(os.environ.get("JAX_PLATFORMS"))
            raise ImportError("no jax here")
        return None


@pytest.mark.parametrize("preset, expected", [(None, "cpu"), ("cuda", "cuda")])
def test_bm25s_imports_jax_with_jax_kept_on_the_cpu_unless_the_user_chose(monkeypatch, preset, expected):
    # bm25s runs a JAX op at import: on a GPU machine JAX would reserve 75 % of the GPU in every process
    for name in [m for m in sys.modules if m == "bm25s" or m.startswith(("bm25s.", "jax"))]:
        monkeypatch.delitem(sys.modules, name)
    if preset is None:
        monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    else:
        monkeypatch.setenv("JAX_PLATFORMS", preset)
    watcher = _JaxWatcher()
    monkeypatch.setattr(sys, "meta_path", [watcher, *sys.meta_path])
    assert bm25_ranking(CORPUS, {"q": "wing flutter"}, ["q"], k=1) == {"q": ["d1"]}
    assert watcher.platforms and set(watcher.platforms) == {expected}
