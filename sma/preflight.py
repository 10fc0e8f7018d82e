"""Fast checks of what a command is about to use, run by the front door (:func:`sma.cli.main`) once the config
is built and before the command's stage is imported: a missing dataset or model, a malformed data line, an
unwritable output folder or a tracking server that does not answer fails in about a second, as one line,
instead of after minutes of imports, cluster start-up and model loading.

Nothing here imports torch, transformers, Ray or MLflow. Each ``check_<command>`` checks only what that
command uses; a failure raises :class:`PreflightError` (a :class:`~sma.config.ConfigError`, printed the same
way) or the loader's own :class:`~sma.data.DataError` / :class:`~sma.model_source.ModelNotFoundError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sma.cache import cache_root
from sma.config import ConfigError, RunConfig
from sma.data import DataError, RetrievalData, cached_hub_folder, load_beir_folder, locate_dataset
from sma.model_source import check_model, hub_offline

NETWORK_TIMEOUT_S = 2.5
"""Seconds a server (MLflow, a Ray head) gets to answer before the command gives up on it."""


class PreflightError(ConfigError):
    """An input the command needs is missing, unwritable or does not answer."""


def check_writable_dir(path: str | Path, key: str) -> None:
    """``path`` is a folder this process can write in, or one it can create: its nearest existing ancestor
    is a folder in which a probe folder can be made (removed at once; root ignores permission bits, so only
    trying tells)."""
    target = Path(path).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise PreflightError(f"{key} {str(path)!r}: cannot create it, {str(existing)!r} is a file")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".sma-preflight-", dir=existing))
    except OSError as exc:
        raise PreflightError(f"{key} {str(path)!r}: cannot write in {str(existing)!r} "
                             f"({exc.strerror or exc})") from None


def check_splits(cfg: RunConfig, data: RetrievalData, *, dev: bool = True) -> None:
    """The collection has judged queries in every split the run reads: test (retention), dev (choosing
    configurations; only with ``dev``: ``sma analyze`` does not choose) and a probe split when something is
    pruned, training queries when the teacher is fine-tuned. A BEIR collection often ships only some of them
    (train and test, or test alone)."""
    have = sorted(s for s, q in data.qrels.items() if q)
    has = ", ".join(have) or "none"

    def missing(key: str, split: str, why: str) -> ConfigError:
        return ConfigError(f"{key}: {data.name} has no judged queries in split {split!r} (it has {has}); {why}")

    d = cfg.data
    if d.test_split not in have:
        raise missing("data.test_split", d.test_split, "name the split to report with --set data.test_split=SPLIT")
    if dev and cfg.sparsity and d.dev_split not in have:
        raise missing("data.dev_split", d.dev_split, "configurations are chosen on it: name another split than "
                      "the test split with --set data.dev_split=SPLIT")
    probe = cfg.analysis.probe_splits
    if cfg.sparsity and not cfg.analysis.probe_pseudo_queries and not set(probe) & set(have):
        raise ConfigError(f"analysis.probe_splits: {data.name} has no judged queries in {', '.join(probe)} (it has "
                          f"{has}); name others with --set analysis.probe_splits=SPLIT, or probe with label-free "
                          f"pseudo-queries: --set analysis.probe_pseudo_queries=true")
    if cfg.train.baseline_epochs and d.train_split not in have:
        raise missing("data.train_split", d.train_split, f"fine-tuning the teacher (train.baseline_epochs="
                      f"{cfg.train.baseline_epochs}) needs judged training queries")


def check_dataset(dataset: str, *, cache_dir: str | None, cfg: RunConfig | None = None, dev: bool = True) -> None:
    """The collection exists and every line of it parses (the loader's checks, on the real files), and with
    ``cfg`` has the splits that config reads (:func:`check_splits`); a hub collection is checked when it is
    already cached, and must be when the hub is off."""
    where = locate_dataset(dataset)
    if isinstance(where, str):
        cached = cached_hub_folder(where, cache=cache_dir)
        if cached is None and hub_offline("HF_DATASETS_OFFLINE"):
            raise DataError(f"dataset {dataset!r}: no such folder, not under $SMA_DATA_DIR, not shipped with "
                            f"sma, and BeIR/{where} is not in the cache {str(cache_root(cache_dir))!r} while the "
                            f"HF hub is off (HF_HUB_OFFLINE=1)")
        if cached is None:
            return  # downloaded (and checked) by the command itself
        where = cached
    with _quiet("sma.data"):  # the command loads it again and reports dropped judgements then, once
        data = load_beir_folder(where)
    if cfg is not None:
        check_splits(cfg, data, dev=dev)


def check_tracking_uri(configured: str | None) -> None:
    """The MLflow store the command logs to can be reached: an HTTP server answers, a SQLite or file store
    can be written. ``None`` and no ``$MLFLOW_TRACKING_URI``: the default store under the output folder."""
    key = "mlflow_tracking_uri" if configured else "MLFLOW_TRACKING_URI"
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        check_http(f"{uri.rstrip('/')}/health", f"{key} {uri!r}")
    elif parts.scheme == "sqlite":
        db = uri.partition(":///")[2]
        if db and db != ":memory:":
            check_writable_dir(Path(db).parent, f"{key} {uri!r}: folder")
    elif parts.scheme in ("", "file"):
        check_writable_dir(parts.path if parts.scheme else uri, key)


def check_http(url: str, what: str, *, timeout: float = NETWORK_TIMEOUT_S) -> None:
    """A server answers ``url`` within ``timeout`` seconds (any HTTP status counts as an answer)."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()  # noqa: S310 - the user's own server
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PreflightError(f"{what} does not answer within {timeout:g} s ({reason})") from None


def check_tcp(host: str, port: int, what: str, *, timeout: float = NETWORK_TIMEOUT_S) -> None:
    """Something accepts a TCP connection at ``host:port`` within ``timeout`` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise PreflightError(f"{what} does not answer at {host}:{port} within {timeout:g} s "
                             f"({exc.strerror or exc})") from None


def check_inputs(cfg: RunConfig, *, tracked: bool, dev: bool = True) -> None:
    """What every modelled command reads and writes: output and cache folders, dataset, model, and the MLflow
    store when ``tracked``. Local checks first; servers last."""
    check_writable_dir(cfg.output_dir, "output_dir")
    check_writable_dir(cache_root(cfg.cache_dir), "cache_dir")
    check_dataset(cfg.data.dataset, cache_dir=cfg.cache_dir, cfg=cfg, dev=dev)
    check_model(cfg.model.name)
    if tracked:
        check_tracking_uri(cfg.mlflow_tracking_uri)


def check_int8_engine(cfg: RunConfig, *, int8: bool) -> None:
    """An explicit ``bench.int8_engine`` that this PyTorch build lacks, when PyTorch's int8 layers will be made
    (``int8``); ``auto`` always resolves to an engine the build has, so only then is torch imported here."""
    if not int8 or cfg.bench.int8_engine == "auto":
        return
    from sma.quantize import int8_engine

    try:
        int8_engine(cfg.bench.int8_engine)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


def check_run(cfg: RunConfig) -> None:
    """``sma run``; on Ray workers also where its state goes and the cluster it joins."""
    check_inputs(cfg, tracked=cfg.track)
    check_int8_engine(cfg, int8=cfg.bench.int8 and cfg.bench.int8_runtime == "pytorch")
    if cfg.workers.on_ray:
        from tune.ray_connect import preflight
        from tune.storage_root import check_storage_root

        check_storage_root(cfg)
        preflight(cfg)


def check_evaluate(cfg: RunConfig, out: Path) -> None:
    """``sma evaluate`` (the run's settings already applied): the output folder, cache, collection (dev and
    test) and dense model, before the model is loaded."""
    check_writable_dir(out.parent, "--output")
    check_writable_dir(cache_root(cfg.cache_dir), "cache_dir")
    check_dataset(cfg.data.dataset, cache_dir=cfg.cache_dir, cfg=replace(cfg, sparsity=()), dev=False)  # test only
    check_model(cfg.model.name)
    check_int8_engine(cfg, int8=cfg.bench.int8 and cfg.bench.int8_runtime == "pytorch")


def check_analyze(cfg: RunConfig) -> None:
    """``sma analyze`` (no MLflow, no dev split)."""
    check_inputs(cfg, tracked=False, dev=False)


def check_bench(cfg: RunConfig) -> None:
    """``sma bench``: the model (the built-in random-weight configs need nothing), and the collection the int8
    plan samples (``bench.int8_float_layers``)."""
    from sma.bench_cli import BUILTIN_CONFIGS, INT8_DTYPES

    if cfg.model.name not in BUILTIN_CONFIGS:
        check_model(cfg.model.name)
    check_int8_engine(cfg, int8="int8" in cfg.bench.dtypes)
    # the int8 plan samples its documents
    if cfg.bench.int8_float_layers and set(INT8_DTYPES) & set(cfg.bench.dtypes):
        if cfg.model.name in BUILTIN_CONFIGS:
            raise PreflightError(f"bench.int8_float_layers: the int8 plan encodes documents, which the random "
                                 f"{cfg.model.name!r} model has no tokenizer for; use a real model")
        check_dataset(cfg.data.dataset, cache_dir=cfg.cache_dir)


def check_outer(cfg: Any) -> None:
    """``sma tune`` / ``sma ablate`` (a config with a ``run``): the run's inputs, always tracked, and a local
    Ray storage folder. The Ray cluster is checked by :func:`tune.ray_connect.preflight`."""
    check_inputs(cfg.run, tracked=True)
    check_int8_engine(cfg.run, int8=cfg.run.bench.int8 and cfg.run.bench.int8_runtime == "pytorch")
    for dataset in getattr(cfg, "datasets", ()):  # an ablation's further collections
        check_dataset(dataset, cache_dir=cfg.run.cache_dir, cfg=cfg.run)
    storage = cfg.storage_path
    if storage and "://" not in storage:
        check_writable_dir(storage, "storage_path")


def check_report(cfg: RunConfig) -> None:
    """``sma report``: the output folder it writes and the MLflow store it reads."""
    check_writable_dir(cfg.output_dir, "output_dir")
    check_tracking_uri(cfg.mlflow_tracking_uri)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Warnings of ``logger`` held back inside the block."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
