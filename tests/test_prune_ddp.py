"""apply_plan on a DDP-wrapped model: 2 CPU processes, gloo; prune, re-wrap, train a step, stay in sync (with the
word embedding table trained or frozen).

The ranks meet through a file store in the test's own folder rather than a TCP store on a port picked in
advance: no port can be taken between the pick and the bind, and no store server thread runs in rank 0. A
rank that aborts in C++ prints its Python stack (faulthandler) to the test's captured stderr."""

from __future__ import annotations

import faulthandler
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from sma.distill import freeze_word_embeddings
from sma.distributed import wrap_ddp
from sma.optim import adamw
from sma.prune import PruningPlan, apply_plan, masked, unit_ids
from sma.tiny import FFN, HEADS, inputs, run, tiny_model

PLAN = PruningPlan(heads={0: tuple(range(HEADS)), 1: (1, 2)}, neurons={1: tuple(range(FFN)), 2: (0, 5, 9)})


def _worker(rank: int, world: int, out_dir: str, frozen: bool) -> None:
    faulthandler.enable()
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    try:
        torch.set_num_threads(1)
        model = tiny_model(seed=0)  # same weights on every rank
        ddp = DDP(model)
        with masked(model, PLAN):
            expected = run(model, inputs(0))
        pruned = apply_plan(ddp, PLAN)  # prunes ddp.module in place
        assert pruned is ddp and ddp.module is model
        assert unit_ids(ddp)[1].heads == (0, 3)
        torch.testing.assert_close(run(model, inputs(0)), expected, atol=1e-5, rtol=0)
        model.train()
        table = model.get_input_embeddings().weight.detach().clone()
        if frozen:  # as the pipeline does: before DDP wraps the student
            freeze_word_embeddings(model)
        ddp = wrap_ddp(model, world)  # re-wrap after pruning (the pooler gets no gradient); a new optimizer too
        opt = adamw(ddp, lr=0.1)
        loss = ddp(**inputs(seed=rank + 1)).last_hidden_state.pow(2).mean()  # different data per rank
        loss.backward()
        opt.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        torch.save({"same": all(torch.equal(g, gathered[0]) for g in gathered), "numel": flat.numel(),
                    "table_kept": torch.equal(model.get_input_embeddings().weight, table)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        del ddp, opt, pruned  # DDP's reducer holds the process group: release it before the group goes
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("frozen", [False, True])
def test_ddp_wrapped_model_prunes_and_trains(frozen, tmp_path):
    world = 2
    # spawn, not fork: a child forked after the parent's OpenMP thread pool started can deadlock (it hung CI)
    mp.start_processes(_worker, args=(world, str(tmp_path), frozen), nprocs=world, join=True,
                       start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    assert all(r["same"] for r in results), "ranks diverged after a synchronized step"
    assert results[0]["numel"] == results[1]["numel"]
    # a frozen table takes no part in DDP's gradient sync and stays the teacher's; a trained one moves
    assert all(r["table_kept"] is frozen for r in results)
