"""What one Optuna study of ``sma tune`` found: trials table, best trial, importances, plots.

:func:`study_report` loads a (single-objective) study from its RDB storage URL and returns a
:class:`StudyReport`: the trials as a DataFrame (``Study.trials_dataframe``: number, state, value,
``params_*``, duration, ``user_attrs_*`` such as ``user_attrs_mlflow_run_id``), the best COMPLETE trial,
fANOVA hyperparameter importances (``optuna.importance.get_param_importances``) and, given an output
folder, slice and parallel-coordinate PNGs from ``optuna.visualization.matplotlib``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
from optuna.importance import FanovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from sma.atomic import atomic_file

TRIAL_COLUMNS = ("number", "state", "value", "params", "duration", "user_attrs", "datetime_start",
                 "datetime_complete")
"""The ``Study.trials_dataframe`` attributes a report shows."""


@dataclass(frozen=True)
class StudyReport:
    """One study: its trials, best COMPLETE trial (None without one), importances and plot files."""

    study_name: str
    direction: str
    trials: pd.DataFrame
    """One row per trial, columns from :data:`TRIAL_COLUMNS` (``params_alpha``, ``user_attrs_...``)."""
    best: FrozenTrial | None
    importance: dict[str, float]
    """Parameter -> normalised fANOVA importance, over the parameters that varied; empty when skipped."""
    importance_note: str | None
    """Why importances were skipped, or which constant parameters were left out; None otherwise."""
    plots: dict[str, Path] = field(default_factory=dict)
    """Plot name (``slice``, ``parallel_coordinate``) -> PNG path; empty without ``out_dir``."""


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def importances(study: optuna.Study, *, seed: int = 0) -> tuple[dict[str, float], str | None]:
    """fANOVA importances over the parameters whose value differs between COMPLETE trials, and a note.

    Skipped (empty dict, with the reason) below 2 COMPLETE trials, when no parameter varies or when every
    trial scored the same.
    """
    complete = _complete(study)
    if len(complete) < 2:
        return {}, f"{len(complete)} COMPLETE trial(s); importances need at least 2"
    names = sorted({p for t in complete for p in t.params})
    varied = [p for p in names if len({repr(t.params.get(p)) for t in complete}) > 1]
    constant = [p for p in names if p not in varied]
    if not varied:
        return {}, f"no parameter varied across COMPLETE trials ({', '.join(names) or 'none'})"
    values = {t.value for t in complete}
    if len(values) == 1:  # fANOVA has no variance to attribute (and raises)
        return {}, f"every COMPLETE trial scored {values.pop():.6g}: no variance for importances to explain"
    imp = optuna.importance.get_param_importances(
        study, evaluator=FanovaImportanceEvaluator(seed=seed), params=varied)
    note = f"left out, constant across COMPLETE trials: {', '.join(constant)}" if constant else None
    return {k: float(v) for k, v in imp.items()}, note


def _save(axes: object, path: Path) -> Path:
    """Write the figure that holds ``axes`` (one Axes or an array of them) and close it."""
    import matplotlib.pyplot as plt
    import numpy as np

    figure = np.ravel(np.asarray(axes, dtype=object))[0].figure
    with atomic_file(path) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(figure)
    return path


def write_plots(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """Slice and parallel-coordinate PNGs of ``study`` in ``out_dir`` (none without a COMPLETE trial).

    Switches matplotlib to the Agg backend: reports are written headless.
    """
    if not _complete(study):
        return {}
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"slice": ovm.plot_slice, "parallel_coordinate": ovm.plot_parallel_coordinate}
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)  # one trial's axes
        for name, plot in plots.items():
            paths[name] = _save(plot(study), out_dir / f"{study.study_name}-{name}.png")
    return paths


def study_report(storage_url: str, study_name: str, out_dir: Path | None = None) -> StudyReport:
    """Load ``study_name`` from ``storage_url`` (any Optuna storage URL) and report on it.

    Raises KeyError when the storage holds no such study.
    """
    study = optuna.load_study(study_name=study_name, storage=storage_url)
    if len(study.directions) != 1:
        raise ValueError(f"{study_name} has {len(study.directions)} objectives; reports read single-objective")
    best = study.best_trial if _complete(study) else None
    imp, note = importances(study)
    return StudyReport(
        study_name=study_name,
        direction=study.direction.name.lower(),
        trials=study.trials_dataframe(attrs=TRIAL_COLUMNS),
        best=best,
        importance=imp,
        importance_note=note,
        plots=write_plots(study, Path(out_dir)) if out_dir is not None else {},
    )
