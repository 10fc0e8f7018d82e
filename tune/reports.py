"""What a trial's Ray Train workers report to Ray Tune: every per-epoch report, not the final one.

A scheduler decides on each report, and may stop the trial on its last (ASHA stops every trial that reaches
``max_t``). Were the workers' final report forwarded, the trial could be stopped while it still logs that
result to MLflow and Optuna. So the final report (tagged :data:`tune.worker.FINAL_REPORT`) stays in Ray
Train, and the trial function reports it to Tune itself once MLflow and Optuna hold it. Kept apart from
:mod:`tune.trainable`: the Train controller unpickles this callback, and should not import MLflow for it.
"""

from __future__ import annotations

from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from tune.worker import FINAL_REPORT


class EpochReportCallback(TuneReportCallback):
    """:class:`TuneReportCallback` for every report but the final one."""

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics[0].get(FINAL_REPORT):
            super().after_report(run_context=run_context, metrics=metrics, checkpoint=checkpoint)
