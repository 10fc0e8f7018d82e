"""The pure parts of ``sma tune``: config, study names and bookkeeping on a real SQLite study, the define-by-run
space, concurrency, CLI precedence, and MLflow run bookkeeping on a real SQLite tracking store."""

from __future__ import annotations

import argparse
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from sma.cli import make_parser
from sma.config import ConfigError, SearchConfig, apply_overrides, load_config
from sma.config.options import search_config
from tune.search import concurrency
from tune.studies import finished_trial, mark_interrupted, progress, rdb_storage, study_name, trials
from tune.trainable import TRIAL_KEY, DefineSpace


def test_study_names_are_experiment_and_sparsity():
    assert study_name("nfc", 0.5) == "nfc-s0.50"
    assert study_name("nfc", 0.3) == "nfc-s0.30"
    assert study_name("nfc", 0.125) == "nfc-s0.12"


def test_search_config_rejects_unknown_keys_everywhere(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("trials_per_study: 3\nrun: {experiment: x, distill: {alpha: 0.5}}\n")
    cfg = load_config(path, SearchConfig)
    assert cfg.trials_per_study == 3 and cfg.run.experiment == "x" and cfg.run.distill.alpha == 0.5
    for bad in ("trials: 3\n", "run: {distil: {alpha: 1}}\n", "space: {beta: [0, 1]}\n"):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="unknown config key"):
            load_config(path, SearchConfig)


@pytest.mark.parametrize("override", [
    {"space.alpha": "0.2 1.5"}, {"space.gentleness": "0.8 0.2"}, {"space.post_prune_epochs": "-1 2"},
    {"scheduler": "hyperband"}, {"trials_per_study": 0}, {"run.workers.num_workers": 0}, {"max_concurrent_trials": 0},
    {"run.workers.gpus_per_worker": -1},
])
def test_search_config_validates_values(override):
    with pytest.raises(ConfigError):
        apply_overrides(SearchConfig(), override)


def test_default_storages_live_in_the_experiment_folder(tmp_path):
    cfg = apply_overrides(SearchConfig(), {"run.output_dir": str(tmp_path), "run.experiment": "e"})
    assert cfg.optuna_url() == f"sqlite:///{tmp_path}/e/tune/optuna.db"
    assert cfg.ray_storage() == f"{tmp_path}/e/tune/ray"
    cfg = apply_overrides(cfg, {"optuna_storage": "postgresql://db/sma", "storage_path": "s3://b/sma"})
    assert cfg.optuna_url() == "postgresql://db/sma" and cfg.ray_storage() == "s3://b/sma"


def test_trials_get_absolute_paths_and_a_dev_retention_every_epoch(tmp_path, monkeypatch):
    from tune.search import resolve_run

    monkeypatch.chdir(tmp_path)
    cfg = apply_overrides(SearchConfig(), {"run.output_dir": "res", "run.cache_dir": "cache", "run.workers.cpus_per_worker": 4,
                                           "run.distill.eval_every_epoch": False})
    run = resolve_run(cfg.run)
    assert run.output_dir == str(tmp_path / "res") and run.cache_dir == str(tmp_path / "cache")
    assert run.distill.eval_every_epoch and run.threads == 4 and not run.eval.show_progress


def test_concurrency_follows_resources():
    cfg = SearchConfig()
    assert concurrency(cfg, {"CPU": 2}) == 2
    assert concurrency(apply_overrides(cfg, {"run.workers.num_workers": 2}), {"CPU": 2}) == 1
    assert concurrency(apply_overrides(cfg, {"run.workers.num_workers": 4}), {"CPU": 2}) == 1  # never 0
    assert concurrency(apply_overrides(cfg, {"run.workers.gpus_per_worker": 1, "run.workers.cpus_per_worker": 2}), {"CPU": 32, "GPU": 4}) == 4
    # what the driver's own job holds (a submitted job's entrypoint resources) is not the trials'
    assert concurrency(cfg, {"CPU": 2}, {"CPU": 1}) == 1
    assert concurrency(cfg, {"CPU": 8}, {"CPU": 1}) == 7
    gpu = apply_overrides(cfg, {"run.workers.gpus_per_worker": 1})
    assert concurrency(gpu, {"CPU": 32, "GPU": 4}, {"CPU": 1, "GPU": 1}) == 3
    assert concurrency(apply_overrides(cfg, {"max_concurrent_trials": 3}), {"CPU": 2}) == 3


def test_outside_a_submitted_job_the_driver_holds_nothing():
    from tune.ray_connect import driver_reservation

    assert driver_reservation({}) == {}
    assert driver_reservation({"RAY_JOB_CONFIG_JSON_ENV_VAR": '{"runtime_env": {}}'}) == {}


def _study(tmp_path, name="e-s0.50"):
    storage = rdb_storage(f"sqlite:///{tmp_path}/optuna.db")
    return storage, optuna.create_study(study_name=name, storage=storage, direction="maximize")


def test_killed_driver_trials_are_marked_interrupted_and_do_not_count(tmp_path):
    storage, study = _study(tmp_path)
    study.tell(study.ask(), 0.9)                            # 0 COMPLETE
    study.tell(study.ask(), state=TrialState.FAIL)          # 1 FAIL (raised)
    study.ask()                                             # 2 left RUNNING by a killed driver
    study.ask()                                             # 3 idem
    before = progress(storage, "e-s0.50")
    assert (before.complete, before.failed, before.running, before.finished) == (1, 1, 2, 2)
    assert mark_interrupted(storage, "e-s0.50") == [2, 3]
    after = progress(storage, "e-s0.50")
    assert (after.complete, after.failed, after.interrupted, after.running, after.finished) == (1, 1, 2, 0, 2)
    states = {t.number: t.state for t in optuna.load_study(study_name="e-s0.50", storage=storage).trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.FAIL, 3: TrialState.FAIL}
    assert mark_interrupted(storage, "e-s0.50") == []       # idempotent
    assert finished_trial(storage, "e-s0.50", 0).value == 0.9
    assert finished_trial(storage, "e-s0.50", 2) is None
    assert progress(storage, "no-such-study").finished == 0


def test_define_by_run_space_respects_bounds_and_passes_the_trial_number(tmp_path):
    cfg = apply_overrides(SearchConfig(), {"space.alpha": "0.2 0.4", "space.post_prune_epochs": "1 2"})
    _, study = _study(tmp_path)
    space = DefineSpace(cfg.space)
    for i in range(5):
        trial = study.ask()
        assert space(trial) == {TRIAL_KEY: i}
        assert 0.2 <= trial.params["alpha"] <= 0.4 and 0 <= trial.params["gentleness"] <= 1
        assert trial.params["post_prune_epochs"] in (1, 2)


def _args(*argv: str) -> argparse.Namespace:
    return make_parser().parse_args(["tune", *argv])


def test_cli_precedence_file_then_flags_then_set(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("trials_per_study: 7\nrun: {experiment: from-file, seed: 1, workers: {num_workers: 2}}\n")
    cfg = search_config(_args("--config", str(path), "--seed", "5", "--trials", "9",
                                    "--set", "run.distill.batch_size=4", "--workers", "3"))
    assert (cfg.trials_per_study, cfg.run.workers.num_workers, cfg.run.seed, cfg.run.experiment) == (9, 3, 5, "from-file")
    assert cfg.run.distill.batch_size == 4
    with pytest.raises(ConfigError, match="unknown config key"):
        search_config(_args("--set", "run.distill.nope=1"))
    args = _args("--fresh")
    assert args.mode == "fresh" and _args().mode == "auto"


@pytest.mark.slow  # builds a tiny BERT or an MLflow SQLite store (10-20 s on 2 busy cores)
def test_smoke_test_uses_the_tiny_offline_assets(tmp_path):
    cfg = search_config(_args("--smoke-test", "--set", f"run.cache_dir={tmp_path}"))
    assert cfg.trials_per_study == 2 and cfg.run.experiment == "smoke-test"
    assert cfg.run.sparsity == (0.3, 0.5) and cfg.space.post_prune_epochs == (0, 1)
    assert cfg.run.model.name.startswith(str(tmp_path)) and cfg.run.data.dataset.startswith(str(tmp_path))


@pytest.mark.slow  # builds a tiny BERT or an MLflow SQLite store (10-20 s on 2 busy cores)
def test_mlflow_runs_are_found_again_on_resume_and_failures_are_recorded(tmp_path):
    from sma.tracking import Tracking

    tr = Tracking.open(f"sqlite:///{tmp_path}/mlflow.db", "exp")
    assert Tracking.open(tr.uri, "exp").experiment_id == tr.experiment_id
    parent = tr.parent_run(study="exp-s0.50", tags={"sparsity": 0.5}, params={"trials_per_study": 3})
    assert tr.parent_run(study="exp-s0.50", tags={}, params={}) == parent
    kids = [tr.child_run(parent_id=parent, study="exp-s0.50", number=n, tags={"criterion": "m"},
                         params={"alpha": 0.1 * n}) for n in range(3)]
    assert tr.child_run(parent_id=parent, study="exp-s0.50", number=1, tags={}, params={"alpha": 0.1}) == kids[1]
    tr.log_epochs(kids[0], [{"epoch": 1, "dev_retention": 0.8}, {"epoch": 2, "dev_retention": 0.9}])
    tr.finish(kids[0])
    tr.fail(kids[1], ValueError("boom"))
    assert tr.close_stale_children("exp-s0.50", reason="test") == [kids[2]]
    runs = {r.info.run_id: r for r in tr.children("exp-s0.50")}
    assert {k: runs[k].info.status for k in kids} == {kids[0]: "FINISHED", kids[1]: "FAILED", kids[2]: "KILLED"}
    assert runs[kids[1]].data.tags["error"] == "ValueError: boom"
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in runs.values())
    history = tr.client.get_metric_history(kids[0], "dev_retention")
    assert [(m.step, m.value) for m in history] == [(1, 0.8), (2, 0.9)]
    # artifacts next to the database, not in ./mlruns of whatever the current directory is
    assert tr.client.get_experiment(tr.experiment_id).artifact_location == (tmp_path / "mlartifacts" / "exp").as_uri()


def test_resume_without_a_search_is_an_error(tmp_path):
    from tune.search import search

    cfg = apply_overrides(SearchConfig(), {"run.output_dir": str(tmp_path), "run.experiment": "none-yet"})
    with pytest.raises(ConfigError, match="--resume: no study"):
        search(cfg, mode="resume")


@pytest.mark.slow  # builds a tiny BERT or an MLflow SQLite store (10-20 s on 2 busy cores)
def test_fresh_forgets_the_study_its_runs_and_its_ray_results(tmp_path):
    from sma.tracking import Tracking
    from tune.search import _forget

    cfg = apply_overrides(SearchConfig(), {"run.output_dir": str(tmp_path), "run.experiment": "e"})
    storage, study = _study(tmp_path, name="e-s0.50")
    study.tell(study.ask(), 0.5)
    _study(tmp_path, name="e-s0.30")
    tr = Tracking.open(f"sqlite:///{tmp_path}/mlflow.db", "e")
    parent = tr.parent_run(study="e-s0.50", tags={}, params={})
    tr.child_run(parent_id=parent, study="e-s0.50", number=0, tags={}, params={})
    keep = tr.parent_run(study="e-s0.30", tags={}, params={})
    root = tmp_path / "e" / "tune" / "ray"
    for folder in ("e-s0.50", "e-s0.50-r1", "e-s0.50-train/trial-0000", "e-s0.30"):
        (root / folder).mkdir(parents=True)
        (root / folder / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    _forget(cfg, storage, tr, "e-s0.50")
    assert trials(storage, "e-s0.50") == []
    assert optuna.get_all_study_names(storage) == ["e-s0.30"]  # the other study is untouched
    assert [r.info.run_id for r in tr._find("tags.role = 'study'")] == [keep]
    assert sorted(p.name for p in root.iterdir()) == ["e-s0.30"]


def test_searcher_skips_a_result_for_a_trial_the_study_already_finished(tmp_path):
    """The restored Tuner of a killed driver can rerun a trial Optuna already holds COMPLETE; the trial reports
    its stored result, which must not crash the driver (UpdateFinishedTrialError in the stock OptunaSearch)."""
    from tune.searcher import StudySearch

    storage, study = _study(tmp_path)
    searcher = StudySearch(space=DefineSpace(SearchConfig().space), metric="dev_retention", mode="max",
                           study_name=study.study_name, storage=storage, seed=0)
    searcher.suggest("t0")
    searcher.on_trial_result("t0", {"dev_retention": 0.8, "training_iteration": 1})  # running: reported
    assert study.trials[0].intermediate_values == {1: 0.8}
    study.tell(0, 0.9)  # what the killed driver had done
    searcher.on_trial_result("t0", {"dev_retention": 0.9, "training_iteration": 2})  # no exception
    searcher.on_trial_complete("t0", {"dev_retention": 0.9, "training_iteration": 2})
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.9 and trial.intermediate_values == {1: 0.8}


def test_searched_keys_cannot_be_fixed_by_run_flags_and_no_distill_narrows_the_space():
    with pytest.raises(ConfigError, match=r"distill.alpha is searched as 'alpha'.*space.alpha"):
        search_config(_args("--alpha", "0.3"))
    with pytest.raises(ConfigError, match=r"prune.gentleness is searched"):
        search_config(_args("--set", "run.prune.gentleness=0.3"))
    cfg = search_config(_args("--no-distill", "--no-protect-circuits"))
    assert cfg.space.alpha == (0.0, 0.0) and cfg.run.prune.protect_circuits is False
    cfg = search_config(_args("--set", "space.alpha=[0.3,0.3]"))
    assert cfg.space.alpha == (0.3, 0.3)
    # two ways of setting alpha at once: an error, not the last one silently winning
    with pytest.raises(ConfigError, match=r"--alpha and --no-distill both set distill.alpha"):
        search_config(_args("--no-distill", "--alpha", "0.3"))
    with pytest.raises(ConfigError, match=r"--no-distill and --set space.alpha=\[0.5,1\] both set"):
        search_config(_args("--no-distill", "--set", "space.alpha=[0.5,1]"))


def test_the_search_space_and_sampling_derive_from_the_table(tmp_path):
    import dataclasses

    from sma.config import SEARCHED, SearchSpace, params_of, with_params

    assert [f.name for f in dataclasses.fields(SearchSpace)] == [p.name for p in SEARCHED]
    _, study = _study(tmp_path)
    trial = study.ask()
    DefineSpace(SearchConfig().space)(trial)
    assert set(trial.params) == {p.name for p in SEARCHED}
    assert all(isinstance(trial.params[p.name], p.kind) for p in SEARCHED)
    run = with_params(SearchConfig().run, trial.params)
    assert params_of(run) == trial.params


def test_the_shipped_search_config_loads():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "cluster" / "search.yaml", SearchConfig)
    assert cfg.run.sparsity == (0.3, 0.5, 0.7) and cfg.scheduler == "asha" and cfg.space.post_prune_epochs == (0, 8)


def test_the_shipped_ablation_config_loads():
    from pathlib import Path

    from sma.config.ablation import AblationConfig

    cluster = Path(__file__).resolve().parents[1] / "cluster"
    cfg = load_config(cluster / "ablation.yaml", AblationConfig)
    assert cfg.seeds == 3 and cfg.run.sparsity == (0.3, 0.5, 0.7) and len(cfg.cells()) == 7
    transfer = load_config(cluster / "generalization.yaml", AblationConfig)
    assert transfer.dataset_list() == ("cranfield", "cacm") and [c.name for c in transfer.cells()] == [
        "reference", "distill_length=128", "distill_length=256", "pseudo_queries=0", "pseudo_queries=1", "neighbors=0.0",
        "probe_pseudo_queries=True"]
    frontier = load_config(cluster / "frontier.yaml", AblationConfig)
    assert frontier.run.sparsity == (0.8, 0.9) and [c.name for c in frontier.cells()] == [
        "reference", "whole_layers=2", "long_recovery=16", "layer_distill=1.0"]
    defaults = load_config(cluster / "defaults.yaml", AblationConfig)
    assert [c.name for c in defaults.cells()] == ["reference"] and defaults.seed_list() == [43, 44, 45]
    assert defaults.dataset_list() == ("cranfield", "cacm") and defaults.run.sparsity == (0.3, 0.5, 0.7)
    recovery = load_config(cluster / "recovery.yaml", AblationConfig)
    assert [c.name for c in recovery.cells()] == ["reference", "long_recovery=16", "gentleness=0.0"]
    assert recovery.dataset_list() == ("cranfield", "cacm") and recovery.run.sparsity == (0.3, 0.5, 0.7)
    assert recovery.run.experiment == "recipe-arms"


def test_ablation_design_one_factor_at_a_time_and_factorial():
    from sma.config import RunConfig
    from sma.config.ablation import AblationConfig, cells

    run = RunConfig()
    ofat = cells(run, ("criterion", "distill"), factorial=False)
    assert [c.name for c in ofat] == ["reference", "criterion=magnitude", "criterion=random", "distill=0.0"]
    assert dict(ofat[3].overrides) == {"distill.alpha": 0.0}
    assert len(cells(run, ("criterion", "distill"), factorial=True)) == 3 * 2  # 2 + reference levels x 2
    # a level equal to the reference recipe's value is not a cell of its own
    one_shot = apply_overrides(run, {"prune.gentleness": 0.0})
    assert [c.name for c in cells(one_shot, ("gentleness",), factorial=False)] == ["reference"]
    cfg = AblationConfig(seeds=2)
    cell = cfg.cells()[1]
    built = cell.config(run, sparsity=0.7, seed=cfg.seed_list()[1])
    assert (built.prune.criterion, built.sparsity, built.seed) == ("magnitude", (0.7,), 43)
    with pytest.raises(ConfigError, match="unknown factor"):
        AblationConfig(factors=("nope",))


def test_an_ablation_on_two_collections_runs_every_cell_on_each_and_keys_units_by_collection():
    from sma.config import RunConfig
    from sma.config.ablation import AblationConfig
    from tune.ablation import units

    run = apply_overrides(RunConfig(), {"sparsity": (0.5, 0.7)})
    cfg = AblationConfig(run=run, factors=("distill",), seeds=2, datasets=("../data/cacm/", "cranfield"))
    todo = units(cfg, run)
    assert len(todo) == 2 * 2 * 2 * 2  # collections x cells (reference, distill=0.0) x sparsities x seeds
    assert len({u.key for u in todo}) == len(todo) and todo[0].key == "cacm|reference|s0.50|seed42"
    built = {(u.key, u.config(run).data.dataset, u.config(run).distill.alpha) for u in todo}
    assert ("cranfield|distill=0.0|s0.70|seed43", "cranfield", 0.0) in built
    assert ("cacm|reference|s0.50|seed43", "../data/cacm/", 1.0) in built
    assert AblationConfig(run=run).dataset_list() == (run.data.dataset,)  # none named: the run's own
    with pytest.raises(ConfigError, match="datasets: need distinct collection names"):
        AblationConfig(run=run, datasets=("../data/cacm", "other/cacm"))


def test_an_ablations_collections_reach_its_trials_as_absolute_paths(tmp_path, monkeypatch):
    from sma.config import RunConfig
    from sma.config.ablation import AblationConfig
    from tune.ablation import resolved, units

    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    own = AblationConfig(run=apply_overrides(RunConfig(), {"data.dataset": "alpha"}), factors=("distill",))
    assert {u.config(resolved(own).run).data.dataset for u in units(resolved(own), resolved(own).run)} == {
        str(tmp_path / "alpha")}
    both = resolved(replace(own, datasets=("alpha", "beta/", "scifact")))  # a hub name stays a name
    assert both.dataset_list() == (str(tmp_path / "alpha"), str(tmp_path / "beta"), "scifact")


def test_a_driver_without_gpus_says_so_when_the_trials_get_them(monkeypatch, caplog):
    import torch

    from sma.config import RunConfig
    from tune.search import warn_if_driver_lacks_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING", logger="tune.search"):
        warn_if_driver_lacks_gpus(RunConfig())
        assert not caplog.records  # CPU trials: nothing to say
        warn_if_driver_lacks_gpus(apply_overrides(RunConfig(), {"workers.gpus_per_worker": 1}))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "SMA_ENTRYPOINT_NUM_GPUS=1" in caplog.records[0].getMessage()


def test_a_round_after_a_resume_draws_new_points(tmp_path):
    """A resumed search starts a new Tuner round with a new sampler: with the first round's seed it drew the
    first round's points again (seen: a replacement trial rerunning a COMPLETE trial's configuration)."""
    from tune.search import study_searcher

    storage, study = _study(tmp_path)
    cfg = SearchConfig()
    first = study_searcher(cfg, study.study_name, storage)
    drawn = first.suggest("t0")
    first.on_trial_complete("t0", {"dev_retention": 0.9, "training_iteration": 1, "final_report": 1.0})
    again = study_searcher(cfg, study.study_name, storage).suggest("t1")
    assert [t.params for t in study.trials][0] == {k: drawn[k] for k in study.trials[0].params}
    assert study.trials[1].params != study.trials[0].params
    assert (drawn[TRIAL_KEY], again[TRIAL_KEY]) == (0, 1)
