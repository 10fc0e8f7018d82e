"""The driver's side of a study's Tune run: Ray's OptunaSearch that knows pruned trials, and a Tune callback
that logs every trial's per-epoch reports to its MLflow run as they arrive.

**Pruned trials.** A trial the scheduler (ASHA) stops after an epoch's report ends without its final report
(tagged :data:`tune.worker.FINAL_REPORT`): Ray hands the stock searcher that epoch's result, which it would
tell Optuna as COMPLETE with the early score. :class:`StudySearch` tells Optuna PRUNED instead (with the
epochs' dev retention as intermediate values), so that only trials that ran to the end compete for the best.

**Finished trials.** A driver killed just after Optuna recorded a trial COMPLETE but before Ray's experiment
snapshot did leaves Ray believing the trial still runs; the restored Tuner starts it again, the trial finds its
stored result and reports it (it never reruns the pipeline), and the stock searcher's ``ot_trial.report`` then
raises ``UpdateFinishedTrialError`` and takes the driver down. Such a result carries nothing new: log and skip.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune import Callback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS, TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from sma.tracking import Tracking
from tune.studies import rdb_storage, record_error
from tune.trainable import CHECKPOINT_TAG, TRIAL_KEY
from tune.worker import FINAL_REPORT

log = logging.getLogger(__name__)

EPOCH_KEY = "epoch"
NOT_METRICS = frozenset({*AUTO_RESULT_KEYS, *DEBUG_METRICS, EPOCH_KEY, "done", "iterations_since_restore",
                         "time_since_restore", "checkpoint_dir_name", "should_checkpoint", CHECKPOINT_PATH_KEY})
"""Keys of a Tune result that Tune adds: not the trial's metrics."""


class StudySearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError as exc:
            log.info("trial %s: result for an Optuna trial that is already finished, not reported (%s)",
                     trial_id, exc)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if error or not result or result.get(FINAL_REPORT) or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        # stopped by the scheduler after an epoch: Ray did not pass that epoch's result to on_trial_result
        ot_trial = self._ot_trials[trial_id]
        if self.metric in result and TRAINING_ITERATION in result:
            try:
                ot_trial.report(result[self.metric], result[TRAINING_ITERATION])
            except UpdateFinishedTrialError:
                pass
        log.info("trial %s (Optuna %d) was stopped early by the scheduler: PRUNED", trial_id, ot_trial.number)
        super().on_trial_complete(trial_id, None, False)  # no value and no error: the stock searcher's PRUNED


class EpochLogger(Callback):
    """Logs each per-epoch report of a trial (step = epoch) to the trial's MLflow child run, so that a trial
    stopped early keeps what it measured. An MLflow error is logged and kept as the Optuna trial's
    ``tracking_error`` attribute, for the driver to raise once the Tune run is over (raising here would
    abandon the running trials)."""

    def __init__(self, tracking: Tracking, study: str, optuna_url: str) -> None:
        self.tracking, self.study, self.optuna_url = tracking, study, optuna_url
        self._runs: dict[int, str] = {}

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        if result.get(FINAL_REPORT) or EPOCH_KEY not in result:
            return
        number = int(trial.config[TRIAL_KEY])
        metrics = {k: v for k, v in result.items() if k not in NOT_METRICS}
        try:
            if number not in self._runs:
                (run,) = self.tracking.children(self.study, number=number)
                self._runs[number] = run.info.run_id
            self.tracking.log_metrics(self._runs[number], metrics, step=int(result[EPOCH_KEY]))
            if result.get(CHECKPOINT_PATH_KEY):  # the model after this epoch: what a trial stopped here keeps
                self.tracking.client.set_tag(self._runs[number], CHECKPOINT_TAG, result[CHECKPOINT_PATH_KEY])
        except Exception as exc:  # noqa: BLE001 - reported by the driver after the Tune run
            error = f"epoch {result[EPOCH_KEY]} not logged to MLflow at {self.tracking.uri}: {exc}"
            log.error("study %s trial %d: %s", self.study, number, error)
            record_error(rdb_storage(self.optuna_url), self.study, number, error, tracking=True)
