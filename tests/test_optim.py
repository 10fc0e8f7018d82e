"""The optimizer of every training phase (sma.optim.adamw): torch's fused AdamW over the trainable parameters."""

import pytest
import torch
from torch import nn

from sma.optim import adamw


def test_one_step_is_adamw_worked_out_by_hand():
    # AdamW's first step: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected m / (sqrt(v) + eps) = g / (|g| + eps),
    # and the decoupled decay: p <- p (1 - lr wd) - lr g / (|g| + eps)
    lin = nn.Linear(3, 2)
    p0 = (lin.weight.detach().clone(), lin.bias.detach().clone())
    opt = adamw(lin, lr=0.1, weight_decay=0.5)
    assert opt.defaults["fused"] is True  # CPU float32 parameters: torch's fused kernel
    x = torch.tensor([[1.0, -2.0, 0.5]])
    lin(x).sum().backward()
    grads = (lin.weight.grad.clone(), lin.bias.grad.clone())  # d/dW = x for each output row, d/db = 1
    assert torch.equal(grads[0], x.expand(2, 3)) and torch.equal(grads[1], torch.ones(2))
    opt.step()
    for p, start, g in zip((lin.weight, lin.bias), p0, grads, strict=True):
        expected = start * (1 - 0.1 * 0.5) - 0.1 * g / (g.abs() + 1e-8)
        assert torch.allclose(p.detach(), expected, atol=1e-6)


def test_frozen_parameters_are_left_out_and_stay_put():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 1))
    model[0].weight.requires_grad_(False)
    table = model[0].weight.detach().clone()
    opt = adamw(model, lr=0.1)
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(model[1].weight), id(model[1].bias)]
    model(torch.tensor([1, 2])).sum().backward()
    opt.step()
    assert torch.equal(model[0].weight, table) and model[0].weight.grad is None
    with pytest.raises(ValueError, match="no trainable parameters"):
        adamw(nn.Linear(2, 2).requires_grad_(False), lr=0.1)
