"""torch.distributed helpers: each is a no-op (or the one-process answer) when no process group is running."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def rank_zero_first(world: int) -> Iterator[None]:
    """Rank 0 runs the block, then the other ranks do (e.g. cached work: rank 0 computes and stores it, the
    others read it back instead of computing it at the same time). One process: just the block."""
    if world == 1:
        yield
        return
    rank = dist.get_rank()
    if rank != 0:
        dist.barrier()
    yield
    if rank == 0:
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, world: int) -> torch.nn.Module:
    """``model`` under DistributedDataParallel when ``world > 1`` (rebuild it whenever shapes change).

    A BERT pooler is frozen first: a bi-encoder pools the last hidden state itself, so the pooler never gets a
    gradient, and DDP fails a backward pass in which a trainable parameter got none. (It does not train in one
    process either: without a gradient the optimizer leaves it as it is.)"""
    if world == 1:
        return model
    from sma.prune.arch import unwrap

    pooler = getattr(unwrap(model), "pooler", None)
    if pooler is not None:
        pooler.requires_grad_(False)
    return torch.nn.parallel.DistributedDataParallel(model)
