"""analysis.studies on real SQLite Optuna studies of a known function (with a FAIL trial), and the
analysis package importing without torch or Ray."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from analysis.studies import study_report

PARAMS = [  # alpha, gentleness, post_prune_epochs; the 4-epoch trial fails
    {"alpha": 0.1, "gentleness": 0.2, "post_prune_epochs": 1},
    {"alpha": 0.3, "gentleness": 0.9, "post_prune_epochs": 2},
    {"alpha": 0.5, "gentleness": 0.5, "post_prune_epochs": 4},
    {"alpha": 0.3, "gentleness": 0.1, "post_prune_epochs": 3},
    {"alpha": 0.9, "gentleness": 0.4, "post_prune_epochs": 0},
    {"alpha": 0.6, "gentleness": 0.7, "post_prune_epochs": 8},
]


def known(alpha: float, gentleness: float, post_prune_epochs: int) -> float:
    return 1.0 - (alpha - 0.3) ** 2 - 0.1 * gentleness + 0.01 * post_prune_epochs


def objective(trial: optuna.Trial) -> float:
    p = {"alpha": trial.suggest_float("alpha", 0.0, 1.0),
         "gentleness": trial.suggest_float("gentleness", 0.0, 1.0),
         "post_prune_epochs": trial.suggest_int("post_prune_epochs", 0, 8)}
    trial.set_user_attr("mlflow_run_id", f"run-{trial.number}")
    if p["post_prune_epochs"] == 4:
        raise RuntimeError("worker died")
    return known(**p)


def make_study(tmp_path, name: str, params: list[dict]) -> str:
    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(storage=RDBStorage(url), study_name=name, direction="maximize")
    for p in params:
        study.enqueue_trial(p)
    study.optimize(objective, n_trials=len(params), catch=(RuntimeError,))
    return url


def test_report_of_a_study_with_a_failed_trial(tmp_path):
    import matplotlib.pyplot as plt

    url = make_study(tmp_path, "nfc-s0.50", PARAMS)
    rep = study_report(url, "nfc-s0.50", out_dir=tmp_path / "plots")
    t = rep.trials
    assert t["number"].tolist() == list(range(6)) and rep.direction == "maximize"
    assert t["state"].tolist() == ["COMPLETE"] * 2 + ["FAIL"] + ["COMPLETE"] * 3
    assert t["user_attrs_mlflow_run_id"].tolist() == [f"run-{i}" for i in range(6)]
    assert {"value", "duration", "params_alpha", "params_gentleness", "params_post_prune_epochs"} <= set(t)
    for row, p in zip(t.itertuples(), PARAMS, strict=True):
        assert row.params_alpha == p["alpha"] and row.params_post_prune_epochs == p["post_prune_epochs"]
        if row.state == "COMPLETE":
            assert row.value == pytest.approx(known(**p))
    assert rep.best is not None and rep.best.number == 3 and rep.best.state == TrialState.COMPLETE
    assert rep.best.value == pytest.approx(known(**PARAMS[3]))  # alpha at the optimum, gentle 0.1, 3 epochs
    assert set(rep.importance) == {"alpha", "gentleness", "post_prune_epochs"} and rep.importance_note is None
    assert sum(rep.importance.values()) == pytest.approx(1.0) and min(rep.importance.values()) >= 0
    assert set(rep.plots) == {"slice", "parallel_coordinate"}
    for path in rep.plots.values():
        assert path.parent == tmp_path / "plots" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == []  # every figure closed


def test_constant_parameter_left_out_of_importances(tmp_path):
    same_gentleness = [{**p, "gentleness": 0.5} for p in PARAMS]
    rep = study_report(make_study(tmp_path, "s", same_gentleness), "s")
    assert set(rep.importance) == {"alpha", "post_prune_epochs"}
    assert "gentleness" in rep.importance_note and rep.plots == {}


def test_trials_that_all_scored_the_same_have_no_importances_but_a_note(tmp_path):
    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(storage=RDBStorage(url), study_name="flat", direction="maximize")
    for alpha in (0.2, 0.8):
        study.enqueue_trial({"alpha": alpha})
    study.optimize(lambda trial: trial.suggest_float("alpha", 0.0, 1.0) * 0 + 1.0, n_trials=2)  # both keep 100 %
    rep = study_report(url, "flat")
    assert rep.importance == {} and "every COMPLETE trial scored 1" in rep.importance_note
    assert rep.best is not None and rep.best.value == 1.0


def test_too_few_complete_trials(tmp_path):
    rep = study_report(make_study(tmp_path, "one", PARAMS[:1]), "one", out_dir=tmp_path / "p")
    assert rep.best.number == 0 and rep.importance == {} and "at least 2" in rep.importance_note
    assert set(rep.plots) == {"slice", "parallel_coordinate"}
    failed = study_report(make_study(tmp_path, "failed", PARAMS[2:3]), "failed", out_dir=tmp_path / "q")
    assert failed.best is None and failed.importance == {} and failed.plots == {}
    assert failed.trials["state"].tolist() == ["FAIL"]
    with pytest.raises(KeyError):
        study_report(f"sqlite:///{tmp_path}/o.db", "missing")


def test_analysis_imports_without_torch_or_ray():
    code = ("import sys, analysis, analysis.pareto, analysis.stats, analysis.studies; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_sma_report_reads_a_search_kept_in_another_optuna_storage(tmp_path, monkeypatch):
    """``sma report --optuna-storage URL``: a search whose studies live elsewhere than
    ``<results>/<experiment>/tune/optuna.db`` still gets its study sections; without the flag it has none."""
    from mlflow.tracking import MlflowClient

    from analysis.report import run_cli
    from sma.cli import make_parser
    from sma.config.options import run_config

    url = make_study(tmp_path, "srch-s0.50", PARAMS)  # <tmp>/o.db, not the default place
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("srch", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, tags={"result": "1", "role": "trial", "study": "srch-s0.50"})
    for k, v in {"sparsity": 0.5, "alpha": 0.3, "gentleness": 0.2, "post_prune_epochs": 1}.items():
        client.log_param(run.info.run_id, k, v)
    for k, v in {"actual_sparsity": 0.5, "dev_retention": 0.9, "test_retention": 0.91, "speedup": 1.8,
                 "memory_ratio": 0.5}.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id)
    monkeypatch.chdir(tmp_path)
    for extra, studied in (([], False), (["--optuna-storage", url], True)):
        args = make_parser().parse_args(["report", "--experiment", "srch", "--mlflow-tracking-uri", uri,
                                         "--resamples", "100", *extra])
        assert run_cli(args, run_config(args, "report")) == 0
        assert (tmp_path / "results" / "srch" / "report" / "trials_srch-s0.50.csv").is_file() == studied
