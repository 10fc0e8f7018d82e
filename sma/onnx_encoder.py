"""A pruned :class:`sma.model.BiEncoder` served by ONNX Runtime: the same tokenization, lengths and longest-first
batching (``encode``), with the forward pass (encoder, pooling, normalisation) run by an ONNX Runtime session
of the exported model, float32 or int8 (``bench.int8_runtime=onnxruntime``). It encodes; it does not train."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from sma.model import BiEncoder


class OnnxBiEncoder(BiEncoder):
    """``model``'s queries and documents embedded by ONNX Runtime on the CPU (:func:`sma.export.onnx_session`;
    with ``int8`` its matrix multiplications int8, ``keep_float`` linear layers left float32)."""

    def __init__(self, model: BiEncoder, *, threads: int, int8: bool = False,
                 keep_float: Collection[str] = ()) -> None:
        from sma.export import onnx_session

        super().__init__(nn.Identity(), model.tokenizer, pooling=model.pooling,
                         query_max_length=model.query_max_length, doc_max_length=model.doc_max_length,
                         normalize=model.normalize)
        self.session = onnx_session(model.encoder, threads=threads, int8=int8, keep_float=keep_float,
                                    pooling=model.pooling, normalize=model.normalize)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled (and normalised) embeddings of one tokenized batch, as the exported model computes them (the
        export has no token type input: BERT-family encoders read all zeros, as the tokenizer gives one text)."""
        (emb,) = self.session.run(["sentence_embedding"], {"input_ids": input_ids.cpu().numpy(),
                                                          "attention_mask": attention_mask.cpu().numpy()})
        return torch.from_numpy(emb)
