"""Servers the tests start (MLflow, optuna-dashboard): a free loopback port, waiting for them, the addresses
they listen on, and stopping their process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, server: subprocess.Popen, log: Path, *, timeout: float = 180) -> None:
    """Until ``url`` answers; fails with the end of ``log`` if the server exits or ``timeout`` passes."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)


def listening_hosts(pid: int) -> set[str]:
    """Addresses that process ``pid`` and its children listen on."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {c.laddr.ip for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (started with ``start_new_session=True``), SIGKILL after 30 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    except ProcessLookupError:
        pass


def start_mlflow(store: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` over a SQLite store and an artifact folder in ``store``, on a free loopback port, in
    its own process group (stop it with :func:`stop_group`); returns it and its URL once it answers."""
    url = f"http://127.0.0.1:{free_port()}"
    with (store / "server.log").open("w") as out:
        server = subprocess.Popen(
            [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
             "--artifacts-destination", str(store / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        wait_http(f"{url}/health", server, store / "server.log")
    except BaseException:
        stop_group(server)
        raise
    return server, url
