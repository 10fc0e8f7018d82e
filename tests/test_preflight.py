"""Bad input fails fast: exit status 2, one line on stderr naming the input, before any heavy work.

The command-line tests run the real ``sma`` in a subprocess whose ``torch``, ``transformers``, ``ray``,
``mlflow`` and ``datasets`` are poisoned (importing one exits with status 97), so a check that only fires
after the stage was imported fails here; no results folder may appear either. The time bound is loose
(the old behaviour took 18-50 s on 2 busy cores); the poison is the strict part."""

from __future__ import annotations

import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from servers import free_port

import sma.data
from sma.config import ConfigError
from sma.data import DataError, load_beir_folder, resolve_dataset
from sma.model_source import ModelNotFoundError, check_model, looks_like_path
from sma.preflight import PreflightError, check_tracking_uri, check_writable_dir
from sma.tiny import TINY_QRELS, write_beir
from tune import ray_connect

POISONED = ("torch", "transformers", "ray", "mlflow", "datasets")
FAST_S = 15.0


@pytest.fixture(scope="module")
def poison(tmp_path_factory) -> Path:
    """A folder of packages that end the process when imported (put first on ``PYTHONPATH``)."""
    root = tmp_path_factory.mktemp("poison")
    for name in POISONED:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f"import os, sys\nsys.stderr.write('POISON: {name} imported\\n')\nos._exit(97)\n")
    return root


def sma_fails(poison: Path, tmp: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``sma *args`` in ``tmp``; assert status 2, one stderr line, fast, no results folder. The line."""
    full = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    full.update({"PYTHONPATH": str(poison), "SMA_CACHE_DIR": str(tmp / "cache"), "HF_HOME": str(tmp / "hf"),
                 **(env or {})})
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "sma.cli", *args], cwd=tmp, env=full, capture_output=True,
                         text=True, timeout=120)
    elapsed = time.monotonic() - started
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("sma: error: "), out.stderr[-2000:]
    assert elapsed < FAST_S, f"{elapsed:.1f} s"
    assert not (tmp / "results").exists()
    return lines[0]


def run_args(dataset: str | Path, model: str | Path, tmp: Path, command: str = "run") -> list[str]:
    return [command, "--dataset", str(dataset), "--model", str(model), "--output-dir", str(tmp / "results")]


# 1. a dataset folder that does not exist ----------------------------------------------------------------


def test_a_missing_dataset_folder_fails_at_once(poison, tiny_model_dir, tmp_path):
    missing = tmp_path / "no" / "such"
    line = sma_fails(poison, tmp_path, *run_args(missing, tiny_model_dir, tmp_path))
    assert f"dataset '{missing}': no such folder" in line


def test_path_shaped_datasets_never_go_to_the_hub_and_hub_names_do(tmp_path, monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(sma.data, "load_beir_hub", lambda name, **kw: asked.append(name))
    monkeypatch.delenv("SMA_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    for value in ("/nonexistent/dir", "./scifact", "../scifact", "~/no-such-beir", "data/scifact", "a/b/c"):
        with pytest.raises(DataError, match="no such folder"):
            resolve_dataset(value)
    resolve_dataset("scifact")
    resolve_dataset("BeIR/nfcorpus")
    assert asked == ["scifact", "nfcorpus"]


def test_which_values_look_like_paths():
    assert all(map(looks_like_path, ("/m", "./m", "../m", "~/m", ".", "a/b/c")))
    assert not any(map(looks_like_path, ("bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2")))


# 2. a malformed line in a data file ---------------------------------------------------------------------


def _corrupt(folder: Path, name: str, lineno: int, text: str) -> None:
    lines = (folder / name).read_text().splitlines()
    lines[lineno - 1] = text
    (folder / name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(("name", "lineno", "text", "message"), [
    ("corpus.jsonl", 5, "{not json", "corpus.jsonl:5: malformed corpus record"),
    ("queries.jsonl", 3, '{"text": "no id"}', "queries.jsonl:3: query record has no '_id'"),
    ("qrels/test.tsv", 4, "q9\td9", "test.tsv:4: expected 3 tab-separated fields"),
])
def test_a_malformed_line_is_named_before_any_model_work(poison, tiny_model_dir, tmp_path, name, lineno, text,
                                                         message):
    folder = write_beir(tmp_path / "beir")
    _corrupt(folder, name, lineno, text)
    assert message in sma_fails(poison, tmp_path, *run_args(folder, tiny_model_dir, tmp_path))


@pytest.mark.parametrize("command", ["analyze", "tune", "ablate"])
def test_every_modelled_command_checks_the_data_first(poison, tiny_model_dir, tmp_path, command):
    """``analyze`` used to load the model before the data; ``tune`` started Ray first."""
    folder = write_beir(tmp_path / "beir")
    _corrupt(folder, "corpus.jsonl", 5, "{not json")
    line = sma_fails(poison, tmp_path, *run_args(folder, tiny_model_dir, tmp_path, command))
    assert "corpus.jsonl:5: malformed corpus record" in line


def test_verbose_shows_the_traceback(tiny_model_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "sma.cli", "-v", *run_args(tmp_path / "none", tiny_model_dir,
                                                                             tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr and "DataError" in out.stderr


# 3. qrels naming unknown ids ----------------------------------------------------------------------------


def test_judgements_of_unknown_ids_are_dropped_counted_and_reported(tmp_path, caplog):
    q9 = {**TINY_QRELS["test"]["q9"], "d-gone": 1, "d-lost": 2}
    qrels = {**TINY_QRELS, "test": {**TINY_QRELS["test"], "q-unknown": {"d1": 1}, "q9": q9}}
    folder = write_beir(tmp_path / "beir", qrels=qrels)
    with caplog.at_level(logging.WARNING, logger="sma.data"):
        data = load_beir_folder(folder)
    assert "beir/test: dropped qrels with 1 unknown query ids and 2 judgements of unknown documents" in caplog.text
    assert "q-unknown" not in data.qrels["test"] and data.qrels["test"]["q9"] == TINY_QRELS["test"]["q9"]


# 4. an empty split --------------------------------------------------------------------------------------


def test_an_empty_split_is_named(poison, tiny_model_dir, tmp_path):
    folder = write_beir(tmp_path / "beir")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    line = sma_fails(poison, tmp_path, *run_args(folder, tiny_model_dir, tmp_path))
    assert line.endswith("qrels/dev.tsv: split 'dev' is empty")


def test_a_split_of_unknown_ids_only_is_an_error(tmp_path):
    folder = write_beir(tmp_path / "beir", qrels={**TINY_QRELS, "dev": {"q-unknown": {"d1": 1}}})
    with pytest.raises(DataError, match="split 'dev' has no judgements of known queries and documents"):
        load_beir_folder(folder)


# 4b. a collection without a split the run reads (BEIR ships many with train and test, or test alone) -----


def _without(tmp: Path, *splits: str) -> Path:
    return write_beir(tmp / "beir", qrels={s: q for s, q in TINY_QRELS.items() if s not in splits})


def test_a_collection_without_a_dev_split_fails_at_once(poison, tiny_model_dir, tmp_path):
    line = sma_fails(poison, tmp_path, *run_args(_without(tmp_path, "dev"), tiny_model_dir, tmp_path))
    assert line.startswith("sma: error: data.dev_split: beir has no judged queries in split 'dev' (it has test, "
                           "train);")
    assert "--set data.dev_split=SPLIT" in line


@pytest.mark.parametrize(("missing", "overrides", "key"), [
    (("test",), {}, "data.test_split"),
    (("train",), {}, "analysis.probe_splits"),  # the probe's judged queries come from train
    (("train",), {"analysis.probe_pseudo_queries": "true", "train.baseline_epochs": "1"}, "data.train_split"),
])
def test_each_split_the_config_reads_is_checked(tmp_path, missing, overrides, key):
    from sma.config import RunConfig, apply_overrides
    from sma.preflight import check_splits

    data = load_beir_folder(_without(tmp_path, *missing))
    with pytest.raises(ConfigError, match=f"^{key}: beir has no judged queries in"):
        check_splits(apply_overrides(RunConfig(), overrides), data)


def test_what_a_config_does_not_read_need_not_be_there(tmp_path):
    from sma.config import RunConfig, apply_overrides
    from sma.preflight import check_splits

    no_train = load_beir_folder(_without(tmp_path, "train"))
    check_splits(apply_overrides(RunConfig(), {"analysis.probe_pseudo_queries": "true"}), no_train)  # label-free
    check_splits(apply_overrides(RunConfig(), {"analysis.probe_splits": "dev"}), no_train)
    dense_only = load_beir_folder(_without(tmp_path / "b", "dev", "train"))
    check_splits(apply_overrides(RunConfig(), {"sparsity": ""}), dense_only)  # evaluates what is there
    no_dev = load_beir_folder(_without(tmp_path / "c", "dev"))
    check_splits(RunConfig(), no_dev, dev=False)  # sma analyze chooses nothing on dev


def test_choosing_on_the_test_split_is_refused():
    from sma.config import RunConfig, apply_overrides

    with pytest.raises(ConfigError, match="^data.dev_split: must differ from data.test_split"):
        apply_overrides(RunConfig(), {"data.dev_split": "test"})


# 5. a model that cannot be found ------------------------------------------------------------------------


def test_a_missing_model_folder_fails_at_once(poison, tiny_beir, tmp_path):
    missing = tmp_path / "no-model"
    line = sma_fails(poison, tmp_path, *run_args(tiny_beir, missing, tmp_path))
    assert f"model '{missing}' is not a local directory: no such folder" in line


def test_an_uncached_hub_model_fails_at_once_offline(poison, tiny_beir, tmp_path):
    line = sma_fails(poison, tmp_path, *run_args(tiny_beir, "nobody/no-such-model", tmp_path),
                     env={"HF_HUB_OFFLINE": "1"})
    assert "model 'nobody/no-such-model' is not a local directory and not in the HF cache" in line


def test_model_checks(tiny_model_dir, tmp_path, monkeypatch):
    check_model(str(tiny_model_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "empty").mkdir()
    for name, why in ((str(tmp_path / "empty"), "without config.json"), ("nobody/none", "not in the HF cache"),
                      (str(tiny_model_dir / "config.json"), "is a file")):
        with pytest.raises(ModelNotFoundError, match=why):
            check_model(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_model("nobody/none")  # online, the download is the check


# 6. an output folder that cannot be written -------------------------------------------------------------


def test_an_output_folder_under_a_file_fails_before_work(poison, tiny_model_dir, tiny_beir, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "out"
    line = sma_fails(poison, tmp_path, "run", "--dataset", str(tiny_beir), "--model", str(tiny_model_dir),
                     "--output-dir", str(out))
    assert f"output_dir '{out}': cannot create it, '{tmp_path / 'file.txt'}' is a file" in line


def test_writable_folders(tmp_path):
    check_writable_dir(tmp_path / "new" / "deeper", "output_dir")
    assert not (tmp_path / "new").exists() and not list(tmp_path.iterdir())  # the probe left nothing
    with pytest.raises(PreflightError, match="cannot write in '/proc'"):
        check_writable_dir("/proc/sma-results", "output_dir")


# 7. an MLflow tracking server that does not answer -------------------------------------------------------


def test_an_unreachable_tracking_server_fails_fast(poison, tiny_model_dir, tiny_beir, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    line = sma_fails(poison, tmp_path, *run_args(tiny_beir, tiny_model_dir, tmp_path),
                     "--mlflow-tracking-uri", uri)
    assert f"mlflow_tracking_uri '{uri}' does not answer" in line


def test_tracking_uris(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_address[1]}")  # a 404 is an answer
    finally:
        server.shutdown()
        server.server_close()
    check_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match="mlflow_tracking_uri 'sqlite:///.*/file/mlflow.db': folder"):
        check_tracking_uri(f"sqlite:///{tmp_path}/file/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PreflightError, match="^MLFLOW_TRACKING_URI 'http://127.0.0.1:.*' does not answer"):
        check_tracking_uri(None)


# 8. a Ray cluster that does not answer ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["tune", "ablate"])
def test_a_dead_ray_address_fails_fast(poison, tiny_model_dir, tiny_beir, tmp_path, command):
    address = f"127.0.0.1:{free_port()}"
    line = sma_fails(poison, tmp_path, *run_args(tiny_beir, tiny_model_dir, tmp_path, command),
                     env={"RAY_ADDRESS": address})
    assert f"Ray address '{address}' (from RAY_ADDRESS) does not answer" in line


def test_smoke_test_with_a_dead_ray_address_fails_fast_once_its_assets_exist(poison, tmp_path):
    """``--smoke-test`` builds its tiny model once (that needs torch); afterwards the bad address is found
    before torch is imported, as for any other search."""
    from sma.tiny import smoke_assets

    smoke_assets(tmp_path / "cache" / "smoke")  # sma_fails runs with SMA_CACHE_DIR=<tmp>/cache
    address = f"127.0.0.1:{free_port()}"
    line = sma_fails(poison, tmp_path, "tune", "--smoke-test", env={"RAY_ADDRESS": address})
    assert f"Ray address '{address}' (from RAY_ADDRESS) does not answer" in line


@pytest.fixture
def ray_init(monkeypatch, tmp_path) -> list[dict]:
    """``ray.init`` recorded instead of run; Ray's temp dir (and its current-cluster file) under tmp_path."""
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_no_address_starts_a_local_cluster_even_with_a_dead_one_recorded(ray_init, tmp_path, caplog):
    """The seen bug: a head killed without ``ray stop`` left ray_current_cluster, and ``ray.init()`` joined it."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    with caplog.at_level(logging.INFO, logger="tune.ray_connect"):
        ray_connect.connect()
    assert ray_init == [{"address": "local", "log_to_driver": True}]
    assert "Ray: local cluster started (not joining 127.0.0.1:" in caplog.text


def test_a_given_address_is_checked_then_joined(ray_init, monkeypatch, caplog):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    with pytest.raises(PreflightError, match="from RAY_ADDRESS.*does not answer"):
        ray_connect.connect()
    with pytest.raises(PreflightError, match="'auto' .*no cluster recorded"):
        ray_connect.connect("auto")
    assert ray_init == []
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        with caplog.at_level(logging.INFO, logger="tune.ray_connect"):
            ray_connect.connect(address)
    assert ray_init == [{"address": address, "log_to_driver": True}]
    assert f"Ray: connecting to {address} (from argument)" in caplog.text


def test_ray_address_forms():
    assert ray_connect.endpoint("10.0.0.1:6380") == ("10.0.0.1", 6380)
    assert ray_connect.endpoint("head") == ("head", ray_connect.GCS_PORT)
    assert ray_connect.endpoint("ray://head") == ("head", ray_connect.CLIENT_PORT)
    assert ray_connect.endpoint("[::1]:7000") == ("::1", 7000)
    with pytest.raises(PreflightError, match="expected host:port"):
        ray_connect.endpoint("head:port")
