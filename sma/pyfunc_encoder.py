"""An MLflow pyfunc model that embeds queries and documents with a pruned encoder, without SMA.

This file is MLflow *model code* (``mlflow.pyfunc.log_model(python_model=<this file>)``): MLflow stores a
copy of it with the model and runs that copy when the model is loaded, so it imports only torch,
transformers, numpy, pandas and mlflow, never ``sma``. :mod:`sma.registry` logs it.

A directory written by ``sma.prune.save_pruned`` has a ``config.json`` whose ``model_type`` is
``sma_pruned`` and a ``sma_structure.json`` listing the heads and FFN neurons each layer kept (layers
differ). :func:`load_encoder` rebuilds that model from stock transformers classes: the base architecture
from the config, every projection resized to its layer's kept units, then the weights. A layer that kept
no head gets one all-zero head: its queries, keys and values are zero, so it adds only the attention
output's bias, exactly like the pruned model (whose attention block does the same).

Input: strings (a list, or a DataFrame whose first column holds them); ``params={"kind": "query"}`` or
``"document"`` (default) picks the maximum length. Output: one row per text (pooled and, by default,
L2-normalised, as in ``sma.model.BiEncoder``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import mlflow

ENCODER_ARTIFACT = "encoder"
"""The artifact key of the saved pruned model directory."""
DEFAULTS = {"pooling": "mean", "normalize": True, "query_max_length": 64, "doc_max_length": 256, "batch_size": 64}
"""Model config keys (``model_config`` of the logged model) and their defaults."""
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
    cfg = {k: v for k, v in json.loads((directory / "config.json").read_text()).items() if not k.startswith("sma_")}
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


def _texts(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        return [str(t) for t in model_input.iloc[:, 0]]
    if isinstance(model_input, pd.Series):
        return [str(t) for t in model_input]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in model_input]


class PrunedEncoder(mlflow.pyfunc.PythonModel):
    """Texts -> embeddings with the pruned encoder in the ``encoder`` artifact."""

    def load_context(self, context) -> None:
        from transformers import AutoTokenizer

        directory = context.artifacts[ENCODER_ARTIFACT]
        self.settings = {**DEFAULTS, **(context.model_config or {})}
        self.encoder = load_encoder(directory)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)

    @torch.inference_mode()
    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        s = self.settings
        kind = (params or {}).get("kind", "document")
        max_length = s["query_max_length"] if kind == "query" else s["doc_max_length"]
        texts = _texts(model_input)
        out = []
        for start in range(0, len(texts), int(s["batch_size"])):
            batch = self.tokenizer(texts[start:start + int(s["batch_size"])], padding=True, truncation=True,
                                   max_length=int(max_length), return_tensors="pt")
            hidden = self.encoder(**batch).last_hidden_state
            if s["pooling"] == "cls":
                emb = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if s["normalize"]:
                emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
            out.append(emb.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


mlflow.models.set_model(PrunedEncoder())
