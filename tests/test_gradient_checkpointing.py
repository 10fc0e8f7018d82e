"""``--gradient-checkpointing``: layers recompute their activations in backward, gradients do not change."""

from types import SimpleNamespace

import torch

import sma.pipeline as pipeline
from sma.cli import make_parser
from sma.config import RunConfig
from sma.config.options import run_config
from sma.model import gradient_checkpointing
from sma.prune import apply_plan
from sma.prune.arch import unwrap
from sma.tiny import inputs, random_plan, tiny_model


def _grads(model, batch) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same dropout masks in every call
    model.zero_grad(set_to_none=True)
    model(**batch).last_hidden_state.pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_pruned_layers_are_recomputed_in_backward_with_the_same_gradients():
    model = tiny_model().train()
    apply_plan(model, random_plan(model, seed=3))  # emptied attention and FFN blocks, uneven heads
    batch = inputs()
    calls: list[int] = []
    for layer in model.encoder.layer:  # the FFN input block: a hook on the layer itself misses the recompute
        layer.intermediate.register_forward_hook(lambda *_: calls.append(1))
    plain = _grads(model, batch)
    plain_calls, calls[:] = len(calls), []
    with gradient_checkpointing(model):
        checkpointed = _grads(model, batch)
    checkpointed_calls, calls[:] = len(calls), []
    _grads(model, batch)
    layers = len(model.encoder.layer)
    assert (plain_calls, checkpointed_calls, len(calls)) == (layers, 2 * layers, layers)  # off again after
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_the_flag_turns_it_on_for_recovery(monkeypatch):
    assert run_config(make_parser().parse_args(["run", "--gradient-checkpointing"])).gradient_checkpointing
    seen = []
    monkeypatch.setattr(pipeline, "distill_epochs",
                        lambda model, *a, **k: seen.append(unwrap(model).is_activation_checkpointing) or [])
    prep = SimpleNamespace(texts=None, task=None, profile=SimpleNamespace(distill_length=128))
    for flag in (True, False):
        pipeline._distill(RunConfig(gradient_checkpointing=flag), prep, tiny_model().train(), None, epochs=1,
                          rank=0, world=1, seed_offset=0, desc="distill")
    assert seen == [True, False]
