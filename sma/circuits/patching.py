"""Activation patching hooks: ablate heads/neurons towards their mean (or zero), record token gates.

A unit's activation is the slice it feeds to its output projection: a head's context vector (input of the
attention output linear) or an FFN neuron's activation (input of the FFN output linear), exactly the slices
:mod:`sma.prune.gates` scales. With gate ``g`` and baseline ``b`` (the unit's mean over the probe tokens
for mean-ablation, 0 for zero-ablation) the patched activation is ``x - (1 - g)(x - b)``: ``g = 1`` leaves
``x`` bit-identical, ``g = 0`` replaces it by ``b``. With ``record=True`` every forward call also multiplies
in per-token gates of ones that require grad, so one backward pass gives ``(x - b) . dL/dx`` for every unit,
token and sequence (attribution patching). Hooks are always removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from sma.prune.arch import LayerParts, encoder_layers


@dataclass(frozen=True)
class UnitMeans:
    """Per layer: mean head context vector ``(heads * head_size,)`` and mean neuron activation ``(neurons,)``."""

    heads: tuple[torch.Tensor, ...]
    neurons: tuple[torch.Tensor, ...]


@dataclass
class ActivationStats:
    """Token-weighted moments of every unit's activation (padding excluded), accumulated over batches."""

    head_sum: list[torch.Tensor]
    head_outer: list[torch.Tensor]
    """Per layer ``(heads, head_size, head_size)``: sum of ``z z^T`` of each head's context vector."""
    neuron_sum: list[torch.Tensor]
    neuron_sq: list[torch.Tensor]
    tokens: int = 0
    mask: torch.Tensor | None = field(default=None, repr=False)
    """The attention mask of the batch being run; the driver sets it before each forward call."""

    def means(self) -> UnitMeans:
        n = max(self.tokens, 1)
        return UnitMeans(heads=tuple(s / n for s in self.head_sum), neurons=tuple(s / n for s in self.neuron_sum))


def zero_means(model: nn.Module) -> UnitMeans:
    layers = encoder_layers(model)
    return UnitMeans(heads=tuple(torch.zeros(p.attn_out.in_features) for p in layers),
                     neurons=tuple(torch.zeros(p.num_neurons) for p in layers))


def _tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = x.detach().float().reshape(-1, x.shape[-1])
    return flat if mask is None else flat[mask.reshape(-1).bool()]


@contextmanager
def collecting_stats(model: nn.Module) -> Iterator[ActivationStats]:
    """Accumulate activation moments of every head and neuron while the caller runs forward passes."""
    layers = encoder_layers(model)
    stats = ActivationStats(
        head_sum=[torch.zeros(p.attn_out.in_features, dtype=torch.float64) for p in layers],
        head_outer=[torch.zeros(p.num_heads, p.head_size, p.head_size, dtype=torch.float64) for p in layers],
        neuron_sum=[torch.zeros(p.num_neurons, dtype=torch.float64) for p in layers],
        neuron_sq=[torch.zeros(p.num_neurons, dtype=torch.float64) for p in layers],
    )

    def head_hook(p: LayerParts):
        def hook(module: nn.Module, args: tuple) -> None:
            z = _tokens(args[0], stats.mask).double()
            stats.head_sum[p.index] += z.sum(0).cpu()
            zh = z.view(z.shape[0], p.num_heads, p.head_size)
            stats.head_outer[p.index] += torch.einsum("nhi,nhj->hij", zh, zh).cpu()
            if p.index == 0:
                stats.tokens += z.shape[0]
        return hook

    def neuron_hook(p: LayerParts):
        def hook(module: nn.Module, args: tuple) -> None:
            a = _tokens(args[0], stats.mask).double()
            stats.neuron_sum[p.index] += a.sum(0).cpu()
            stats.neuron_sq[p.index] += (a * a).sum(0).cpu()
        return hook

    handles = []
    try:
        for p in layers:
            handles.append(p.attn_out.register_forward_pre_hook(head_hook(p)))
            handles.append(p.ffn_out.register_forward_pre_hook(neuron_hook(p)))
        yield stats
    finally:
        for h in handles:
            h.remove()


def local_effects(model: nn.Module, stats: ActivationStats, *, ablation: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Exact mean squared change of each layer's output when one unit is ablated (``ablation`` = mean|zero).

    Neuron ``i``: ``||W_out[:, i]||^2 Var(a_i)`` (or ``E[a_i^2]``); head ``h``: ``tr(W_h C_h W_h^T)`` with
    ``C_h`` the covariance (or second moment) of its context vector and ``W_h`` its output-projection columns.
    """
    n = max(stats.tokens, 1)
    heads, neurons = [], []
    for p in encoder_layers(model):
        mean_h = stats.head_sum[p.index].view(p.num_heads, p.head_size) / n
        c = stats.head_outer[p.index] / n
        if ablation == "mean":
            c = c - torch.einsum("hi,hj->hij", mean_h, mean_h)
        w = p.attn_out.weight.detach().double().cpu().view(-1, p.num_heads, p.head_size).transpose(0, 1)
        heads.append(torch.einsum("hoi,hij,hoj->h", w, c, w).float())
        second = stats.neuron_sq[p.index] / n
        var = second - (stats.neuron_sum[p.index] / n) ** 2 if ablation == "mean" else second
        col = p.ffn_out.weight.detach().double().cpu().pow(2).sum(0)
        neurons.append((col * var.clamp(min=0)).float())
    return heads, neurons


@dataclass
class Patch:
    """Live patching state: per-token gates created by the forward calls when recording."""

    record: bool
    head_records: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    neuron_records: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def pop_records(self) -> tuple[dict[int, list[torch.Tensor]], dict[int, list[torch.Tensor]]]:
        out = (self.head_records, self.neuron_records)
        self.head_records, self.neuron_records = {}, {}
        return out


def _patch_hook(patch: Patch, store: dict[int, list[torch.Tensor]], layer: int, units: int,
                gate: torch.Tensor | None, base: torch.Tensor | None):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        shape = x.shape
        xs = x.view(*shape[:-1], units, -1)
        delta = xs if base is None else xs - base.to(x.dtype).view(units, -1)
        g = None if gate is None else gate.to(x.dtype).unsqueeze(-1)
        if patch.record:
            tg = torch.ones(*shape[:-1], units, dtype=x.dtype, device=x.device, requires_grad=True)
            store.setdefault(layer, []).append(tg)
            g = tg.unsqueeze(-1) if g is None else g * tg.unsqueeze(-1)
        if g is None:
            return None
        return ((xs - (1 - g) * delta).view(shape), *args[1:])

    return hook


@contextmanager
def patched(model: nn.Module, *, head_gates: Sequence[torch.Tensor] | None = None,
            neuron_gates: Sequence[torch.Tensor] | None = None, means: UnitMeans | None = None,
            record: bool = False) -> Iterator[Patch]:
    """Gate units towards ``means`` (zero when ``None``); gates default to ones (no change)."""
    patch = Patch(record=record)
    handles = []
    device = next(model.parameters()).device
    try:
        for p in encoder_layers(model):
            hg = None if head_gates is None else head_gates[p.index].detach().float().to(device)
            ng = None if neuron_gates is None else neuron_gates[p.index].detach().float().to(device)
            if hg is not None and bool((hg == 1).all()):
                hg = None
            if ng is not None and bool((ng == 1).all()):
                ng = None
            hb = None if means is None else means.heads[p.index].to(device)
            nb = None if means is None else means.neurons[p.index].to(device)
            if hg is not None or record:
                handles.append(p.attn_out.register_forward_pre_hook(
                    _patch_hook(patch, patch.head_records, p.index, p.num_heads, hg, hb)))
            if ng is not None or record:
                handles.append(p.ffn_out.register_forward_pre_hook(
                    _patch_hook(patch, patch.neuron_records, p.index, p.num_neurons, ng, nb)))
        yield patch
    finally:
        for h in handles:
            h.remove()
