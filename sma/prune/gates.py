"""Multiplicative gates on attention-head outputs and FFN neuron activations, installed by hooks.

A gate of 1 changes nothing, 0 removes the unit's contribution exactly as physical pruning would (the
output projection's bias stays). Gates that require grad give ``dL/dgate`` (attribution patching).
Hooks are always removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sma.prune.arch import encoder_layers


@dataclass
class Gates:
    """Per-layer gate vectors: ``heads[layer]`` has one entry per head, ``neurons[layer]`` per neuron."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    _handles: list[RemovableHandle] = field(default_factory=list, repr=False)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _head_hook(gate: torch.Tensor, head_size: int):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        shape = x.shape
        # explicit head count: ``-1`` cannot be inferred for a layer whose heads were all removed
        x = (x.view(*shape[:-1], gate.numel(), head_size) * gate.to(x.dtype).unsqueeze(-1)).view(shape)
        return (x, *args[1:])

    return hook


def _neuron_hook(gate: torch.Tensor):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (args[0] * gate.to(args[0].dtype), *args[1:])

    return hook


def install_gates(model: nn.Module, *, head_values: Sequence[torch.Tensor] | None = None,
                  neuron_values: Sequence[torch.Tensor] | None = None, requires_grad: bool = False) -> Gates:
    """Install gates (ones unless values are given) and return them; call ``Gates.remove()`` after."""
    layers = encoder_layers(model)
    device = next(model.parameters()).device
    heads, neurons, handles = [], [], []
    try:
        for p in layers:
            hv = torch.ones(p.num_heads) if head_values is None else head_values[p.index].detach().float()
            nv = torch.ones(p.num_neurons) if neuron_values is None else neuron_values[p.index].detach().float()
            if hv.numel() != p.num_heads or nv.numel() != p.num_neurons:
                raise ValueError(f"layer {p.index}: gate sizes {hv.numel()}/{nv.numel()} do not match "
                                 f"{p.num_heads} heads/{p.num_neurons} neurons")
            hg = hv.clone().to(device).requires_grad_(requires_grad)
            ng = nv.clone().to(device).requires_grad_(requires_grad)
            heads.append(hg)
            neurons.append(ng)
            handles.append(p.attn_out.register_forward_pre_hook(_head_hook(hg, p.head_size)))
            handles.append(p.ffn_out.register_forward_pre_hook(_neuron_hook(ng)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return Gates(heads=heads, neurons=neurons, _handles=handles)


@contextmanager
def gated(model: nn.Module, **kwargs) -> Iterator[Gates]:
    """``with gated(model, head_values=..., requires_grad=True) as g: ...`` -- hooks removed on exit."""
    gates = install_gates(model, **kwargs)
    try:
        yield gates
    finally:
        gates.remove()
