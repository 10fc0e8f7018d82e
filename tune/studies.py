"""Optuna side of the search: one study per sparsity in an RDB storage, and its bookkeeping on resume.

A study's budget is ``trials_per_study`` *finished* trials: COMPLETE ones, those a scheduler stopped early
(PRUNED) and those that FAILED with an error of their own (kept as the trial's ``error`` attribute). A trial left RUNNING by a killed driver is *interrupted*: it is marked FAIL with the
user attribute ``interrupted`` and does not count, so the search runs another one in its place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

INTERRUPTED_ATTR = "interrupted"
ERROR_ATTR, TRACKING_ERROR_ATTR = "error", "tracking_error"
"""User attributes of a trial that failed (its error), or whose MLflow logging failed (that error)."""


def study_name(experiment: str, sparsity: float) -> str:
    """``<experiment>-s0.50``: one study per (search, sparsity)."""
    return f"{experiment}-s{sparsity:.2f}"


def rdb_storage(url: str) -> RDBStorage:
    """An Optuna RDB storage for any SQLAlchemy URL; SQLite waits for locks instead of failing at once."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return RDBStorage(url, engine_kwargs=engine_kwargs)


@dataclass(frozen=True)
class StudyProgress:
    complete: int
    failed: int
    """FAIL trials that raised (interrupted ones excluded)."""
    interrupted: int
    running: int
    pruned: int

    @property
    def finished(self) -> int:
        """Trials that count against the budget."""
        return self.complete + self.failed + self.pruned


def _study_id(storage: RDBStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def trials(storage: RDBStorage, name: str) -> list[FrozenTrial]:
    """All trials of study ``name`` (empty when it does not exist yet)."""
    sid = _study_id(storage, name)
    return [] if sid is None else storage.get_all_trials(sid, deepcopy=False)


def progress(storage: RDBStorage, name: str) -> StudyProgress:
    ts = trials(storage, name)
    interrupted = [t for t in ts if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED_ATTR)]
    return StudyProgress(
        complete=sum(t.state == TrialState.COMPLETE for t in ts),
        failed=sum(t.state == TrialState.FAIL for t in ts) - len(interrupted),
        interrupted=len(interrupted),
        running=sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in ts),
        pruned=sum(t.state == TrialState.PRUNED for t in ts),
    )


def mark_interrupted(storage: RDBStorage, name: str) -> list[int]:
    """Mark every RUNNING/WAITING trial of ``name`` FAIL (``interrupted=True``); return their numbers.

    Only call this when no driver is running the study: a killed driver's trials stay RUNNING forever.
    """
    marked = []
    for t in trials(storage, name):
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            marked.append(t.number)
    if marked:
        log.info("study %s: marked interrupted trial(s) %s as FAIL", name, marked)
    return marked


def record_error(storage: RDBStorage, name: str, number: int, error: str, *, tracking: bool = False) -> None:
    """Keep ``error`` with trial ``number`` of ``name`` (as ``tracking_error`` when MLflow failed). Never
    raises: the error being recorded is what matters."""
    try:
        tid = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)
        storage.set_trial_user_attr(tid, TRACKING_ERROR_ATTR if tracking else ERROR_ATTR, error[:2000])
    except Exception as err:  # noqa: BLE001 - e.g. the trial was finished meanwhile
        log.warning("study %s trial %d: could not record its error in Optuna (%s): %s", name, number, err, error)


def finished_trial(storage: RDBStorage, name: str, number: int) -> FrozenTrial | None:
    """The trial ``number`` of study ``name`` if it already reached COMPLETE, else ``None``."""
    for t in trials(storage, name):
        if t.number == number and t.state == TrialState.COMPLETE:
            return t
    return None


def delete(storage: RDBStorage, name: str) -> bool:
    if _study_id(storage, name) is None:
        return False
    optuna.delete_study(study_name=name, storage=storage)
    return True
