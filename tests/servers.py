"""Servers the tests start (MLflow, optuna-dashboard, Ray): a free loopback port, waiting for them, the addresses
they listen on, and stopping them: a process group, or every process carrying a marker in its environment
(Ray's processes outlive their parents, so a group is not enough for them)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

MLFLOW = Path(sys.executable).parent / "mlflow"
MARKER = "SMA_TEST_RAY"
"""Environment variable whose value marks the processes of one test's Ray cluster (they inherit it)."""


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


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid``."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def wait_gone(alive, timeout: float) -> None:
    """Until ``alive()`` lists nothing, or ``timeout`` seconds (a signal takes effect soon, not at once)."""
    deadline = time.time() + timeout
    while alive() and time.time() < deadline:
        time.sleep(0.2)


def stop_group(server: subprocess.Popen, *, grace: float = 30) -> None:
    """SIGTERM to the server's process group (started with ``start_new_session=True``), then SIGKILL to whatever
    of the group is still alive after ``grace`` seconds: the leader and anything it left behind (a local Ray's
    agents outlive a CLI that exits first)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    wait_gone(lambda: group_members(server.pid), grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    wait_gone(lambda: group_members(server.pid), 30)


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


def marked(marker: str) -> list[psutil.Process]:
    """The live processes started with ``MARKER=marker`` in their environment (this process excluded)."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(MARKER) == marker and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def stop_marked(marker: str, *, head: subprocess.Popen | None = None, grace: float = 20) -> list[str]:
    """SIGTERM ``head``'s process group (if given) and every process carrying ``marker`` (Ray's own ``ray stop``
    order), then SIGKILL whatever is still there after ``grace`` seconds; returns what was left even then."""
    if head is not None:
        try:
            os.killpg(head.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in marked(marker):
        with contextlib.suppress(psutil.Error):
            p.terminate()
    wait_gone(lambda: marked(marker), grace)
    for p in marked(marker):
        with contextlib.suppress(psutil.Error):
            p.kill()
    wait_gone(lambda: marked(marker), 10)
    if head is not None:
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            head.kill()
    return [" ".join(p.cmdline())[:120] for p in marked(marker)]


@contextlib.contextmanager
def local_ray(env: dict[str, str] | None = None) -> Iterator[str]:
    """A local Ray cluster of 2 CPUs started in this process with ``env`` added to the environment its processes
    inherit; yields its GCS address. On exit ``ray.shutdown()``, then every process of that cluster still alive
    (an actor whose worker was killed, such as a trial's ``TrainController``, can outlive the shutdown) is
    stopped by its marker, and the environment is restored."""
    import ray

    marker = uuid.uuid4().hex
    added = {MARKER: marker, **(env or {})}
    saved = {k: os.environ.get(k) for k in added}
    os.environ.update(added)
    try:
        ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        stop_marked(marker)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
