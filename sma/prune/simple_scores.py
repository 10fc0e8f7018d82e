"""Two simple unit scorers, the references real scorers are compared against (benchmarks, tests).

``magnitude_scores``: L2 norm of the weights a unit owns. ``first_n_scores``: lower original id = more
important, so a plan keeps the first N units of every layer (the "naive first-N" baseline).
"""

from __future__ import annotations

import torch
from torch import nn

from sma.prune.arch import encoder_layers
from sma.prune.schema import UnitScores
from sma.prune.units import dense_sizes, unit_ids


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> UnitScores:
    heads, neurons = [], []
    for p in encoder_layers(model):
        d = p.head_size
        h = p.query.in_features
        qkv = torch.cat([lin.weight.float().view(p.num_heads, d * h) for lin in (p.query, p.key, p.value)], dim=1)
        out = p.attn_out.weight.float().t().reshape(p.num_heads, d * p.attn_out.out_features)
        heads.append(torch.cat([qkv, out], dim=1).norm(dim=1))
        neurons.append(torch.cat([p.ffn_in.weight.float(), p.ffn_out.weight.float().t()], dim=1).norm(dim=1))
    return UnitScores.from_current(model, heads=heads, neurons=neurons, method="magnitude")


def first_n_scores(model: nn.Module) -> UnitScores:
    n_heads, n_neurons = dense_sizes(model)
    layers = len(unit_ids(model))
    return UnitScores(heads=[[-float(i) for i in range(n_heads)]] * layers,
                      neurons=[[-float(i) for i in range(n_neurons)]] * layers, method="first_n")
