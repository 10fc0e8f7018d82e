"""A pruned encoder rebuilt from stock transformers classes, without SMA: the one loader that the MLflow
pyfunc (:mod:`sma.pyfunc_encoder`) and the sentence-transformers export (:mod:`sma.export`) ship beside the
weights. It imports only json, torch, transformers and safetensors, so a copy of this file runs where SMA is
not installed.

A directory written by ``sma.prune.save_pruned`` has a ``config.json`` whose ``model_type`` is
``sma_pruned`` and a ``sma_structure.json`` listing the heads and FFN neurons each layer kept (layers
differ). :func:`load_encoder` builds the base architecture from the config, resizes every projection to its
layer's kept units, then loads the weights. A layer that kept no head gets one all-zero head: its queries,
keys and values are zero, so it adds only the attention output's bias, exactly like the pruned model (whose
attention block does the same).

For ``AutoModel.from_pretrained(path, trust_remote_code=True)`` (and so sentence-transformers' stock
``Transformer`` module), an exported ``config.json`` names :class:`SmaPrunedConfig` and
:class:`SmaPrunedModel` of this file in its ``auto_map``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig

MODEL_TYPE = "sma_pruned"
_LAYOUTS = {
    # family: (path to the layer list, attention module, q, k, v, attention output, FFN in, FFN out)
    "bert": ("encoder.layer", "attention.self", "query", "key", "value", "attention.output.dense",
             "intermediate.dense", "output.dense"),
    "distilbert": ("transformer.layer", "attention", "q_lin", "k_lin", "v_lin", "attention.out_lin",
                   "ffn.lin1", "ffn.lin2"),
}


def _layout(model: nn.Module) -> tuple[str, ...]:
    for layout in _LAYOUTS.values():
        try:
            model.get_submodule(layout[0])
            return layout
        except AttributeError:
            continue
    raise TypeError(f"unsupported encoder architecture: {type(model).__name__}")


def _resize(layer: nn.Module, name: str, *, in_features: int, out_features: int) -> None:
    old = layer.get_submodule(name)
    parent, _, attr = name.rpartition(".")
    new = nn.Linear(in_features, out_features, bias=old.bias is not None, dtype=old.weight.dtype)
    setattr(layer.get_submodule(parent) if parent else layer, attr, new)


def load_encoder(directory: str | Path) -> nn.Module:
    """The pruned encoder saved in ``directory`` (by ``sma.prune.save_pruned``), in eval mode."""
    from safetensors.torch import load_file
    from transformers import CONFIG_MAPPING, AutoModel

    directory = Path(directory)
    structure = json.loads((directory / "sma_structure.json").read_text())
    cfg = {k: v for k, v in json.loads((directory / "config.json").read_text()).items()
           if not k.startswith("sma_") and k != "auto_map"}
    cfg.update(model_type=structure["base_model_type"], architectures=structure.get("architectures"))
    model = AutoModel.from_config(CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg),
                                  attn_implementation=structure["attn_implementation"])
    if not structure["has_pooler"] and getattr(model, "pooler", None) is not None:
        model.pooler = None
    model.to(getattr(torch, structure["dtype"]))
    stack, attention, q, k, v, attn_out, ffn_in, ffn_out = _layout(model)
    state = load_file(str(directory / "model.safetensors"))
    for i, (layer, kept) in enumerate(zip(model.get_submodule(stack), structure["layers"], strict=True)):
        att = layer.get_submodule(attention)
        size = int(att.attention_head_size)
        hidden = layer.get_submodule(f"{attention}.{q}").in_features
        heads = max(1, len(kept["heads"]))  # one zero head stands for none
        for name in (q, k, v):
            _resize(layer, f"{attention}.{name}", in_features=hidden, out_features=heads * size)
        _resize(layer, attn_out, in_features=heads * size, out_features=hidden)
        _resize(layer, ffn_in, in_features=hidden, out_features=len(kept["neurons"]))
        _resize(layer, ffn_out, in_features=len(kept["neurons"]), out_features=hidden)
        for attr in ("num_attention_heads", "n_heads"):
            if hasattr(att, attr):
                setattr(att, attr, heads)
        if hasattr(att, "all_head_size"):
            att.all_head_size = heads * size
        if not kept["heads"]:
            prefix = f"{stack}.{i}."
            for name in (q, k, v):
                for part in ("weight", "bias"):
                    key = f"{prefix}{attention}.{name}.{part}"
                    if key in state:
                        state[key] = state[key].new_zeros((size, *state[key].shape[1:]))
            key = f"{prefix}{attn_out}.weight"
            state[key] = state[key].new_zeros((state[key].shape[0], size))
    model.load_state_dict(state, strict=True)
    return model.eval()


class SmaPrunedConfig(PretrainedConfig):
    """``AutoConfig`` entry of an exported pruned encoder: the base config's fields plus ``sma_*`` keys."""

    model_type = MODEL_TYPE


class SmaPrunedModel:
    """``AutoModel`` entry of an exported pruned encoder: :func:`load_encoder` (a stock model, resized)."""

    config_class = SmaPrunedConfig

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """Called by ``AutoModel`` on remote-code classes; this class is not registered anywhere."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> nn.Module:
        model = load_encoder(pretrained_model_name_or_path)
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model
