"""One pipeline on several workers: ``sma run --workers N [--gpus-per-worker G]`` as a Ray Train ``TorchTrainer``.

Every worker calls :func:`sma.pipeline.run` under the process group Ray Train sets up (gloo on CPUs, nccl on
GPUs): the pipeline shards distillation over the ranks with DDP, makes each pruning plan on rank 0 and
broadcasts it, and only rank 0 writes ``results/<experiment>/``, logs to MLflow and prints, exactly as a
one-process ``sma run`` does. A search trial's workers run the same pipeline code (:mod:`tune.worker`);
:func:`torch_trainer` builds both kinds of trainer from the run's ``workers`` section.

Module level stays free of heavy imports: Ray unpickles :func:`run_worker` in every worker process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from sma.config import RunConfig
from sma.config.sections import WorkersConfig
from sma.layout import RESULTS_FILE

log = logging.getLogger(__name__)

RAY_DIR = "ray"
"""``results/<experiment>/ray/``: Ray Train's record of a multi-worker ``sma run``."""


def torch_trainer(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], workers: WorkersConfig, *,
                  run_config: Any):
    """A ``TorchTrainer`` of ``workers.num_workers`` workers running ``loop(loop_config)``, each with
    ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (nccl when they have GPUs, gloo otherwise)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = workers.gpus_per_worker > 0
    resources = {"CPU": workers.cpus_per_worker, **({"GPU": workers.gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        loop, train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=run_config,
    )


def run_worker(config: dict[str, Any]) -> None:
    """One worker of a multi-worker ``sma run``: the whole pipeline on this rank."""
    import ray.train.torch

    from sma.pipeline import run
    from tune.worker import setup_logging

    setup_logging()
    sys.argv = list(config["argv"])  # the user's command line, which rank 0 records on its MLflow run
    cfg: RunConfig = config["run"]
    if cfg.device == "auto":  # the GPU Ray assigned to this worker, else the CPU
        cfg = dataclasses.replace(cfg, device=str(ray.train.torch.get_device()))
    run(cfg)


def run_on_workers(cfg: RunConfig) -> dict[str, Any]:
    """Run ``cfg`` on its workers (joining the Ray cluster ``$RAY_ADDRESS`` names, else a local one started
    and stopped here); returns ``results.json``. A worker's failure fails the run with its error."""
    import ray
    import ray.train

    from tune.ray_connect import connect
    from tune.search import resolve_run

    run = resolve_run(cfg, eval_every_epoch=False)  # absolute paths: the workers may run elsewhere
    run = dataclasses.replace(run, eval=cfg.eval)  # keep the progress bars (rank 0's reach this terminal)
    started_ray = not ray.is_initialized()
    if started_ray:
        connect()
    try:
        w = run.workers
        log.info("sma run on %d Ray Train worker(s), %g CPU and %g GPU each", w.num_workers, w.cpus_per_worker,
                 w.gpus_per_worker)
        trainer = torch_trainer(
            run_worker, {"run": run, "argv": sys.argv}, w,
            run_config=ray.train.RunConfig(name=run.experiment, storage_path=str(run.run_dir / RAY_DIR)))
        trainer.fit()  # raises a worker's error (ray.train.TrainingFailedError)
    finally:
        if started_ray:
            ray.shutdown()
    return json.loads((run.run_dir / RESULTS_FILE).read_text())
