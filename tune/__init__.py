"""Distributed hyperparameter search for SMA: Ray Tune + Ray Train workers, Optuna studies, MLflow runs.

``sma tune --config search.yaml`` runs :func:`tune.search.search`; see ``cluster/README.md``. Modules:
:mod:`tune.config` (the search config), :mod:`tune.search` (the driver), :mod:`tune.trainable` (one trial),
:mod:`tune.worker` (its Ray Train workers), :mod:`tune.studies` (Optuna; MLflow is :mod:`sma.tracking`),
:mod:`tune.cli` (``sma tune``). Nothing is imported here: Ray workers import this package, and each
import second is paid by every trial.
"""
