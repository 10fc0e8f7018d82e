"""Which torch device a run uses: ``RunConfig.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""

from __future__ import annotations

import torch

from sma.config import check_device_name


def resolve_device(name: str) -> torch.device:
    """``auto``: the current CUDA device when one is visible, else the CPU. An explicit accelerator that is
    not there is an error rather than a silent fall-back to the CPU."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' asked for, but torch sees no MPS device")
    return device
