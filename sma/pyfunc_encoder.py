"""An MLflow pyfunc model that embeds queries and documents with a pruned encoder, without SMA.

This file is MLflow *model code* (``mlflow.pyfunc.log_model(python_model=<this file>)``): MLflow stores a
copy of it with the model and runs that copy when the model is loaded, so it imports only torch,
transformers, numpy, pandas and mlflow, never ``sma``. :mod:`sma.registry` logs it.

The pruned model is rebuilt from stock transformers classes by :mod:`sma.stock_encoder`, logged with the
model as code (``code_paths``).

Input: strings (a list, or a DataFrame whose first column holds them); ``params={"kind": "query"}`` or
``"document"`` (default) picks the maximum length. Output: one row per text (pooled and, by default,
L2-normalised, as in ``sma.model.BiEncoder``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

import mlflow

try:  # beside this file in the logged model (``code_paths``), where SMA is not installed
    from stock_encoder import load_encoder
except ImportError:
    from sma.stock_encoder import load_encoder

ENCODER_ARTIFACT = "encoder"
"""The artifact key of the saved pruned model directory."""
DEFAULTS = {"pooling": "mean", "normalize": True, "query_max_length": 64, "doc_max_length": 256, "batch_size": 64}
"""Model config keys (``model_config`` of the logged model) and their defaults."""


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
