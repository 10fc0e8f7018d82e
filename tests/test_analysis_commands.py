"""How a results page shows the commands that made it: only those that made results, and in a form that runs
on the reader's machine (collections by name, stores and outputs by relative paths)."""

from __future__ import annotations

from pathlib import Path


def test_a_store_under_the_working_directory_is_shown_by_its_relative_path(tmp_path):
    from analysis.runs import display_uri

    assert display_uri(f"sqlite:///{tmp_path}/results/mlflow.db", cwd=tmp_path) == "sqlite:///results/mlflow.db"
    assert display_uri("sqlite:////elsewhere/mlflow.db", cwd=tmp_path) == "sqlite:////elsewhere/mlflow.db"
    assert display_uri("http://127.0.0.1:5000", cwd=tmp_path) == "http://127.0.0.1:5000"


def test_a_results_page_names_collections_given_as_folders_by_name():
    from analysis.runs import display_command

    assert display_command("sma run --dataset ../shared/data/cacm --seed 43") == "sma run --dataset cacm --seed 43"
    assert display_command("sma run --dataset=/abs/path/cranfield/ --seed 1") == "sma run --dataset=cranfield --seed 1"
    assert display_command("sma ablate --datasets ./a/cranfield ~/b/cacm --seeds 3") == (
        "sma ablate --datasets cranfield cacm --seeds 3")
    # a SQLite store under the working directory by its relative path, in both spellings of the flag
    here = Path.cwd().resolve()
    assert display_command(f"sma run --mlflow-tracking-uri sqlite:///{here}/results/mlflow.db --seed 1") == (
        "sma run --mlflow-tracking-uri sqlite:///results/mlflow.db --seed 1")
    assert display_command(f"sma run --mlflow-tracking-uri=sqlite:///{here}/r/m.db") == (
        "sma run --mlflow-tracking-uri=sqlite:///r/m.db")
    # where an absolute output went on the machine that ran it: its last part under results/ (files: here);
    # an absolute cache folder changes nothing and is left out
    assert display_command("sma run --seed 43 --set threads=1 --set output_dir=/tmp/x8/runs/cranfield-43 "
                           "--set cache_dir=/tmp/gpu/cache --cache-dir /tmp/c --set prune.gentleness=0") == (
        "sma run --seed 43 --set threads=1 --set output_dir=results/cranfield-43 --set prune.gentleness=0")
    assert display_command("sma bench --sparsity 0.5 --output /tmp/fe/bench32.json --page p.md") == (
        "sma bench --sparsity 0.5 --output bench32.json --page p.md")
    assert display_command("sma run --output-dir=/tmp/a/res/ --cache-dir=/tmp/c --seed 1") == (
        "sma run --output-dir=results/res --seed 1")
    # hub names, collections given by name and any other path or store stay as they were
    for kept in ("sma run --dataset BeIR/scifact", "sma run --dataset cacm",
                 "sma run --config ./c.yaml --output-dir ../results --cache-dir .cache",
                 "sma run --set output_dir=runs/a --set cache_dir=c --output out.json",
                 "sma run --mlflow-tracking-uri sqlite:////elsewhere/mlflow.db --seed 1",
                 "sma run --mlflow-tracking-uri http://127.0.0.1:5000 --seed 1"):
        assert display_command(kept) == kept


def test_a_stopped_command_is_shown_only_when_it_made_results(tmp_path):
    from mlflow.tracking import MlflowClient

    from analysis.runs import commands

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("c", artifact_location=(tmp_path / "a").as_uri())
    ids = {}
    for start, (name, status) in enumerate((("done", "FINISHED"), ("stopped-early", "KILLED"),
                                            ("stopped-after-one", "KILLED"), ("crashed", "FAILED")), start=1):
        ids[name] = client.create_run(exp, start_time=start, tags={"command": f"sma run # {name}"}).info.run_id
        client.set_terminated(ids[name], status)
    assert commands("c", uri=uri) == ["sma run # done"]
    assert commands("c", uri=uri, parents=[ids["stopped-after-one"]]) == [
        "sma run # done", "sma run # stopped-after-one"]
