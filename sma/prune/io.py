"""Save and load physically pruned encoders (per-layer structure + original unit ids + safetensors).

A saved directory holds ``model.safetensors``, the tokenizer, ``sma_structure.json`` (per layer: the
original head and neuron ids kept) and a ``config.json`` whose ``model_type`` is ``sma_pruned``: stock
configs cannot describe per-layer sizes, and a stock ``model_type`` would let ``AutoModel`` build a dense
skeleton and fail on (or, with ``ignore_mismatched_sizes``, silently re-initialise) the pruned weights.
Importing :mod:`sma.prune` registers ``sma_pruned`` with ``AutoConfig``/``AutoModel``, so
``AutoModel.from_pretrained(dir)`` then returns the same model as :func:`load_pruned`; without sma
imported, transformers refuses the unknown model type ``sma_pruned``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from sma.atomic import atomic_dir
from sma.layout import STRUCTURE_FILE
from sma.prune.apply import apply_plan
from sma.prune.arch import unwrap
from sma.prune.schema import PruningPlan
from sma.prune.sparsity import encoder_sparsity
from sma.prune.units import dense_sizes, unit_ids

WEIGHTS_FILE = "model.safetensors"
MODEL_TYPE = "sma_pruned"
FORMAT_VERSION = 1


def is_pruned_dir(path: str | Path) -> bool:
    return (Path(path) / STRUCTURE_FILE).is_file()


def _tokenizer_of(model: nn.Module):
    while True:
        if hasattr(model, "tokenizer"):
            return model.tokenizer
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner


def save_pruned(model: nn.Module, directory: str | Path, tokenizer=None) -> Path:
    """Write weights, tokenizer (given, or the BiEncoder's), structure and config to ``directory``.

    The folder is built beside ``directory`` and renamed into place (:func:`sma.atomic.atomic_dir`): a crash
    leaves the previous folder (or none), never a partial one; an existing ``directory`` is replaced whole."""
    enc = unwrap(model)
    out = Path(directory)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in enc.state_dict().items()}
    n_heads, n_neurons = dense_sizes(enc)
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    cfg = enc.config.to_dict()
    structure = {
        "format_version": FORMAT_VERSION,
        "base_model_type": cfg["model_type"],
        "architectures": cfg.get("architectures"),
        "model_class": type(enc).__name__,
        "attn_implementation": enc.config._attn_implementation,
        "dtype": str(floats[0]).removeprefix("torch.") if floats else "float32",
        "has_pooler": getattr(enc, "pooler", None) is not None,
        "dense": {"heads": n_heads, "neurons": n_neurons},
        "layers": [u.to_dict() for u in unit_ids(enc)],
        "sparsity": encoder_sparsity(enc).to_dict(),
    }
    cfg.update(model_type=MODEL_TYPE, architectures=["SmaPrunedModel"], sma_base_model_type=cfg["model_type"],
               sma_structure=structure["layers"], sma_load_with="sma.load_pruned(path)")
    tokenizer = tokenizer if tokenizer is not None else _tokenizer_of(model)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / STRUCTURE_FILE).write_text(json.dumps(structure, indent=1))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return out


def _base_config(directory: Path, structure: dict[str, Any]) -> PreTrainedConfig:
    cfg = json.loads((directory / "config.json").read_text())
    for key in [k for k in cfg if k.startswith("sma_")]:
        del cfg[key]
    cfg["model_type"] = structure["base_model_type"]
    cfg["architectures"] = structure.get("architectures")
    return CONFIG_MAPPING[structure["base_model_type"]].from_dict(cfg)


def load_pruned(directory: str | Path, *, dtype: torch.dtype | None = None,
                device: str | torch.device | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`: dense skeleton from config, structure, then weights.

    Outputs are bit-identical to the saved model's (same dtype and attention implementation); the model
    is returned in eval mode and remembers its original unit ids.
    """
    directory = Path(directory)
    if not is_pruned_dir(directory):
        raise FileNotFoundError(f"{directory} has no {STRUCTURE_FILE}: not a directory written by save_pruned")
    structure = json.loads((directory / STRUCTURE_FILE).read_text())
    if structure.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported {STRUCTURE_FILE} format {structure.get('format_version')}")
    model = AutoModel.from_config(_base_config(directory, structure),
                                  attn_implementation=structure["attn_implementation"])
    if not structure["has_pooler"] and getattr(model, "pooler", None) is not None:
        model.pooler = None
    model.to(getattr(torch, structure["dtype"]))
    n_heads, n_neurons = structure["dense"]["heads"], structure["dense"]["neurons"]
    layers = structure["layers"]
    plan = PruningPlan(
        heads={i: tuple(sorted(set(range(n_heads)) - set(u["heads"]))) for i, u in enumerate(layers)},
        neurons={i: tuple(sorted(set(range(n_neurons)) - set(u["neurons"]))) for i, u in enumerate(layers)},
        method="load_pruned")
    apply_plan(model, plan)
    if [u.to_dict() for u in unit_ids(model)] != layers:
        raise ValueError(f"{STRUCTURE_FILE}: unit ids must be listed in ascending order per layer")
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    if dtype is not None:
        model.to(dtype)
    if device is not None:
        model.to(device)
    return model.eval()


def load_pruned_encoder(path: str | Path) -> nn.Module:
    """Used by :meth:`sma.model.BiEncoder.from_pretrained` for directories written by :func:`save_pruned`."""
    return load_pruned(path)


class SmaPrunedConfig(PreTrainedConfig):
    """Config of a saved pruned encoder: the base config's fields plus ``sma_*`` structure keys."""

    model_type = MODEL_TYPE


class SmaPrunedModel:
    """``AutoModel`` entry for ``model_type == "sma_pruned"``: delegates to :func:`load_pruned`."""

    config_class = SmaPrunedConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args, **kwargs) -> nn.Module:
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        return load_pruned(pretrained_model_name_or_path, dtype=dtype if isinstance(dtype, torch.dtype) else None)


def register_with_transformers() -> None:
    """Let ``AutoConfig``/``AutoModel``/``AutoTokenizer`` open saved pruned directories (idempotent)."""
    AutoConfig.register(MODEL_TYPE, SmaPrunedConfig, exist_ok=True)
    AutoModel.register(SmaPrunedConfig, SmaPrunedModel, exist_ok=True)


register_with_transformers()
