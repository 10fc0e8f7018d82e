"""torch.distributed helpers: each is a no-op (or the one-process answer) when no process group is running."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` without torch.distributed."""
    if _initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast(obj: Any, world: int) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; ``obj`` itself when ``world == 1``)."""
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (a one-element list without torch.distributed)."""
    if not _initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: torch.nn.Module, world: int) -> torch.nn.Module:
    """``model`` under DistributedDataParallel when ``world > 1`` (rebuild it whenever shapes change)."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)
