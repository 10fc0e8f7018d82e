"""Ray's OptunaSearch, tolerant of results for trials the study has already finished.

A driver killed just after Optuna recorded a trial COMPLETE but before Ray's experiment snapshot did leaves
Ray believing the trial still runs; the restored Tuner starts it again, the trial finds its stored result
and reports it (it never reruns the pipeline), and the stock searcher's ``ot_trial.report`` then raises
``UpdateFinishedTrialError`` and takes the driver down. Such a result carries nothing new: log and skip it.
"""

from __future__ import annotations

import logging

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class StudySearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError as exc:
            log.info("trial %s: result for an Optuna trial that is already finished, not reported (%s)",
                     trial_id, exc)
