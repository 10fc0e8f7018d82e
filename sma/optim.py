"""The optimizer of every training phase: AdamW over the model's trainable parameters, with torch's fused kernel
where it has one.

The fused kernel does a parameter's whole AdamW update in one pass instead of the dozen tensor-wide passes of
the default (``foreach``) implementation: the same update up to rounding, in a sixth less time per bfloat16
distillation step of a 50 % pruned all-MiniLM-L6-v2 on cacm's short texts, where the 11.7M-entry word
embedding table outweighs the pruned encoder's weights.
Frozen parameters (``requires_grad=False``) are left out, so they cost the optimizer nothing.
"""

from __future__ import annotations

import torch
from torch import nn

FUSED_DEVICES = ("cpu", "cuda")
"""Devices whose floating-point parameters torch's fused AdamW takes (elsewhere the default implementation)."""


def adamw(model: nn.Module, *, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, fused when every one of them is a floating-point tensor on
    a device of :data:`FUSED_DEVICES`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)
