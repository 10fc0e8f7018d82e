"""Tiny random encoders, inputs and random plans for tests and examples (used by tests/test_prune_*.py)."""

from __future__ import annotations

import random

import torch
from transformers import AutoModel, BertConfig, DistilBertConfig, RobertaConfig

from sma.prune.schema import PruningPlan
from sma.prune.units import unit_ids

HIDDEN, HEADS, LAYERS, FFN, VOCAB = 32, 4, 3, 64, 100
HEAD_SIZE = HIDDEN // HEADS


def tiny_config(family: str = "bert", *, vocab_size: int = VOCAB):
    """hidden 32, 4 heads of 8, 3 layers, FFN 64: ``bert``, ``roberta`` or ``distilbert``."""
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
                                max_position_embeddings=64)
    cls = RobertaConfig if family == "roberta" else BertConfig
    return cls(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               intermediate_size=FFN, max_position_embeddings=64)


def tiny_model(family: str = "bert", seed: int = 0, *, vocab_size: int = VOCAB):
    """A random tiny encoder in eval mode, with every parameter perturbed (biases and LayerNorms too)."""
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(family, vocab_size=vocab_size)).eval()
    with torch.no_grad():  # non-trivial biases/LayerNorms so that emptied blocks are visible in the output
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(seed: int = 0, batch: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def run(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def random_plan(model, seed: int, *, empty_layers: bool = True) -> PruningPlan:
    """Random subsets of the units the model still holds; with ``empty_layers`` layer 0 loses every head,
    layer 1 every neuron and the last layer both (when the model has them)."""
    rng = random.Random(seed)
    heads, neurons = {}, {}
    ids = unit_ids(model)
    for layer, units in enumerate(ids):
        h, n = list(units.heads), list(units.neurons)
        heads[layer] = rng.sample(h, rng.randint(0, len(h)))
        neurons[layer] = rng.sample(n, rng.randint(0, len(n)))
    if empty_layers:
        heads[0] = list(ids[0].heads)
        neurons[1] = list(ids[1].neurons)
        heads[len(ids) - 1], neurons[len(ids) - 1] = list(ids[-1].heads), list(ids[-1].neurons)
    return PruningPlan(heads=heads, neurons=neurons)
