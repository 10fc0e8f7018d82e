"""Make a plan real (:func:`apply_plan`, physical) or simulate it (:func:`masked`, gates on a dense model).

Physical pruning slices Q/K/V output rows and attention-output input columns per head, FFN input rows
and output columns per neuron, and keeps ``num_attention_heads``/``all_head_size`` (``n_heads`` for
DistilBERT) true. A layer left without heads gets an :class:`EmptyAttention`, so its attention block
adds only the output bias to the residual, exactly what masking every head gives; a layer left without
neurons keeps ``Linear(h, 0)``/``Linear(0, h)``, whose output is the output bias.

Pruned parameters are NEW ``nn.Parameter`` objects (same dtype, device and ``requires_grad``): rebuild
any optimizer afterwards, and re-wrap a DDP model (pass the DDP wrapper or its ``.module``; the inner
module is pruned in place and every rank must apply the same plan).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sma.prune.arch import LayerParts, encoder_layers, unwrap
from sma.prune.gates import Gates, gated
from sma.prune.schema import PruningPlan
from sma.prune.units import LayerUnits, encoder_stack, set_unit_ids, unit_ids


class EmptyAttention(nn.Module):
    """Stands in for a self-attention module whose heads were all removed.

    It keeps the original children (zero-row Q/K/V linears and, for DistilBERT, the output linear) so
    parameter names do not change, and returns an empty ``(..., 0)`` context (or the output linear applied
    to it, which is its bias) with empty ``(batch, 0, seq, seq)`` attention weights. :func:`apply_plan`
    uses a subclass that is also an instance of the original attention class (see :func:`empty_attention`),
    so transformers' ``output_attentions`` capture still sees the layer.
    """

    def __init__(self, original: nn.Module, *, output: str | None) -> None:
        nn.Module.__init__(self)  # not the original class's __init__ (it would build new weights)
        for name, child in original.named_children():
            self.add_module(name, child)
        for hooks in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            getattr(self, hooks).update(getattr(original, hooks))  # e.g. transformers' output capture
        self.config = getattr(original, "config", None)
        self.attention_head_size = int(original.attention_head_size)
        self.scaling = getattr(original, "scaling", None)
        self.num_attention_heads = 0
        self.all_head_size = 0
        self.n_heads = 0
        self.output_name = output
        names = ("query", "key", "value") if hasattr(original, "query") else ("q_lin", "k_lin", "v_lin")
        self.projection_names = names
        self.train(original.training)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        # (..., 0) context; running the zero-row projections costs nothing and keeps every parameter in
        # the autograd graph (DDP without find_unused_parameters requires it)
        empty = sum(getattr(self, n)(hidden_states) for n in self.projection_names)
        b, s = hidden_states.shape[0], hidden_states.shape[-2]
        weights = hidden_states.new_zeros((b, 0, s, s))
        if self.output_name is not None:
            return getattr(self, self.output_name)(empty), weights
        return empty, weights


_EMPTY_CLASSES: dict[type, type] = {}


def empty_attention(original: nn.Module, *, output: str | None) -> EmptyAttention:
    """An :class:`EmptyAttention` that is also an instance of ``type(original)`` (one class per family)."""
    base = type(original)
    if isinstance(original, EmptyAttention):
        return original
    if base not in _EMPTY_CLASSES:
        name = f"Empty{base.__name__}"
        _EMPTY_CLASSES[base] = type(name, (EmptyAttention, base), {"__module__": __name__, "__qualname__": name})
        globals().setdefault(name, _EMPTY_CLASSES[base])  # findable by pickle within this process
    return _EMPTY_CLASSES[base](original, output=output)


def _slice_linear(lin: nn.Linear, index: torch.Tensor, *, dim: int) -> None:
    """Keep rows (``dim=0``, outputs) or columns (``dim=1``, inputs) ``index`` of ``lin``, in place."""
    index = index.to(lin.weight.device)
    weight = lin.weight.detach().index_select(dim, index).clone()
    lin.weight = nn.Parameter(weight, requires_grad=lin.weight.requires_grad)
    if dim == 0:
        if lin.bias is not None:
            bias = lin.bias.detach().index_select(0, index).clone()
            lin.bias = nn.Parameter(bias, requires_grad=lin.bias.requires_grad)
        lin.out_features = int(index.numel())
    else:
        lin.in_features = int(index.numel())


def _replace_child(root: nn.Module, target: nn.Module, new: nn.Module) -> None:
    for name, mod in root.named_modules():
        if mod is target and name:
            parent_name, _, attr = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)
            return
    raise RuntimeError("attention module not found under its layer")


def _prune_heads(layer: nn.Module, p: LayerParts, keep: list[int]) -> None:
    d = p.head_size
    rows = torch.tensor([h * d + j for h in keep for j in range(d)], dtype=torch.long)
    for lin in (p.query, p.key, p.value):
        _slice_linear(lin, rows, dim=0)
    _slice_linear(p.attn_out, rows, dim=1)
    att = p.attention
    for attr in ("num_attention_heads", "n_heads"):
        if hasattr(att, attr):
            setattr(att, attr, len(keep))
    if hasattr(att, "all_head_size"):
        att.all_head_size = len(keep) * d
    if not keep and not isinstance(att, EmptyAttention):
        output = next((n for n, c in att.named_children() if c is p.attn_out), None)
        _replace_child(layer, att, empty_attention(att, output=output))


def _prune_neurons(p: LayerParts, keep: list[int]) -> None:
    index = torch.tensor(keep, dtype=torch.long)
    _slice_linear(p.ffn_in, index, dim=0)
    _slice_linear(p.ffn_out, index, dim=1)


def check_plan(plan: PruningPlan, ids: list[LayerUnits]) -> None:
    """Raise ``ValueError`` unless every unit the plan lists is present (original ids, valid layers)."""
    for kind, table in (("head", plan.heads), ("neuron", plan.neurons)):
        for layer, units in table.items():
            if layer >= len(ids):
                raise ValueError(f"plan names layer {layer}; the model has {len(ids)} layers")
            present = set(ids[layer].heads if kind == "head" else ids[layer].neurons)
            missing = sorted(set(units) - present)
            if missing:
                raise ValueError(f"layer {layer}: {kind}s {missing} are not present (already removed or out of "
                                 "range); plans use ORIGINAL ids of the dense model")


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Remove the plan's units physically, in place; returns ``model`` (BiEncoder, HF encoder or DDP).

    The plan is validated completely before anything changes. Afterwards rebuild optimizers (the pruned
    weights are new Parameters) and re-wrap DDP.
    """
    enc = unwrap(model)
    ids = unit_ids(enc)
    check_plan(plan, ids)
    stack = encoder_stack(enc)
    new_ids = []
    with torch.no_grad():
        for p, units in zip(encoder_layers(enc), ids, strict=True):
            drop_h, drop_n = set(plan.heads.get(p.index, ())), set(plan.neurons.get(p.index, ()))
            keep_h = [i for i, u in enumerate(units.heads) if u not in drop_h]
            keep_n = [i for i, u in enumerate(units.neurons) if u not in drop_n]
            if drop_h:
                _prune_heads(stack.layer[p.index], p, keep_h)
            if drop_n:
                _prune_neurons(p, keep_n)
            new_ids.append(LayerUnits(heads=tuple(units.heads[i] for i in keep_h),
                                      neurons=tuple(units.neurons[i] for i in keep_n)))
    set_unit_ids(enc, new_ids)
    return model


@contextmanager
def masked(model: nn.Module, plan: PruningPlan) -> Iterator[Gates]:
    """Simulate ``plan`` with zero gates on the plan's units (hooks always removed on exit).

    Works on dense and on already pruned models (plan ids are original ids). Yields the gates.
    """
    ids = unit_ids(model)
    check_plan(plan, ids)
    def gate(present: tuple[int, ...], removed: tuple[int, ...]) -> torch.Tensor:
        drop = set(removed)
        return torch.tensor([0.0 if u in drop else 1.0 for u in present])

    heads = [gate(units.heads, plan.heads.get(i, ())) for i, units in enumerate(ids)]
    neurons = [gate(units.neurons, plan.neurons.get(i, ())) for i, units in enumerate(ids)]
    with gated(model, head_values=heads, neuron_values=neurons) as gates:
        yield gates
