"""Job submission end to end: a real Ray head on 127.0.0.1 (dashboard + job server, token auth as Ray ships
it, free ports, 2 CPUs), the smoke search submitted with ``cluster/submit.sh`` (the real ``ray job submit``
CLI, ``--working-dir`` upload with the runtime env's excludes), a job stopped mid-search with ``ray job stop``
and resubmitted, and the storage-root check that keeps a job's state out of Ray's copy of the working
directory.

The head runs as ``ray start --head --block`` in its own session; every process it starts inherits a marker
in its environment, so the ``finally`` stops exactly this cluster (never ``ray stop``, which stops every Ray
process on the machine) and checks that none of its processes is left."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import MARKER, stop_marked

from sma.config import ConfigError, RunConfig, SearchConfig
from tune.storage_root import JOB_CONFIG_ENV, check_storage_root, job_working_copy

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB_ID = re.compile(r"^sma: job id: (\S+)$", re.M)


# -- the storage-root check, without a cluster ------------------------------------------------------------

COPY = Path("/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_abc")


def _search(**run) -> SearchConfig:
    return SearchConfig(run=RunConfig(**{"cache_dir": "/abs/cache", **run}))


def test_the_job_copy_is_found_from_the_cwd_or_the_job_config():
    assert job_working_copy(COPY, {}) == COPY
    assert job_working_copy(COPY / "sub", {}) == COPY
    job_env = {JOB_CONFIG_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}})}
    assert job_working_copy(Path("/srv/pkg"), job_env) == Path("/srv/pkg")
    assert job_working_copy(Path("/srv/pkg"), {JOB_CONFIG_ENV: json.dumps({"runtime_env": {}})}) is None
    assert job_working_copy(Path("/home/user/sma"), {}) is None


@pytest.mark.parametrize("cfg, where", [
    (_search(), "output_dir"),                                      # the default: results/ in the copy
    (_search(output_dir="/shared/sma", mlflow_tracking_uri="sqlite:///mlflow.db"), "mlflow_tracking_uri"),
    (_search(output_dir="/shared/sma", cache_dir="cache"), "cache_dir"),
])
def test_a_job_keeping_state_in_its_copy_is_refused(cfg, where):
    with pytest.raises(ConfigError, match=rf"{where}={COPY}/\S+ inside its copy") as err:
        check_storage_root(cfg, cwd=COPY, environ={})
    assert "\n" not in str(err.value)


def test_relative_optuna_and_ray_storage_in_the_copy_are_refused():
    cfg = SearchConfig(run=RunConfig(output_dir="/shared/sma", cache_dir="/abs/cache"),
                       optuna_storage="sqlite:///studies.db", storage_path="ray")
    with pytest.raises(ConfigError, match=r"optuna_storage=\S+studies.db, storage_path=\S+/ray inside"):
        check_storage_root(cfg, cwd=COPY, environ={})


def test_absolute_or_server_storage_passes_and_nothing_is_checked_outside_a_job(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ok = SearchConfig(run=RunConfig(output_dir="/shared/sma", cache_dir="/abs/cache",
                                    mlflow_tracking_uri="http://127.0.0.1:5000"),
                      optuna_storage="postgresql://db/sma", storage_path="s3://bucket/sma")
    check_storage_root(ok, cwd=COPY, environ={})
    check_storage_root(_search(), cwd=Path("/home/user/sma"), environ={})  # not a job: relative is fine


# -- a real head, real jobs ------------------------------------------------------------------------------

def _free_ports(n: int, avoid: range) -> list[int]:
    """``n`` distinct free loopback ports, none in ``avoid`` (the worker port range Ray checks them against)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] in avoid:
                s.close()
            else:
                socks.append(s)  # kept bound until all are drawn, so no port comes twice
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Head:
    url: str
    gcs: str
    temp_dir: Path
    client_env: dict[str, str]

    def submit(self, *args: str, storage: Path | None, log: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        """``cluster/submit.sh ARGS`` to the end of the job; its output also kept in ``log``. A job that does
        not end in ``timeout`` fails the test with its log's tail and what the cluster held at that moment."""
        env = dict(self.client_env) | ({"SMA_STORAGE_ROOT": str(storage)} if storage else {})
        try:
            done = subprocess.run(["bash", "cluster/submit.sh", *args], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                          for x in (exc.stdout, exc.stderr))
            log.write_text(out)
            pytest.fail(f"cluster/submit.sh {' '.join(args)} did not end in {timeout:.0f} s\n{out[-6000:]}\n"
                        f"{self.state()}", pytrace=False)
        log.write_text(done.stdout + done.stderr)
        return done

    def state(self) -> str:
        """What the cluster holds: resource usage, placement groups and live actors (for a failure message)."""
        parts = []
        for args in (["status", "--address", self.gcs], ["list", "placement-groups", "--address", self.gcs, "--detail"],
                     ["list", "actors", "--address", self.gcs, "--filter", "state=ALIVE"]):
            try:
                got = subprocess.run([str(BIN / "ray"), *args], env=self.client_env, capture_output=True, text=True,
                                     timeout=60)
                parts.append(f"$ ray {' '.join(args)}\n{(got.stdout + got.stderr)[-4000:]}")
            except subprocess.TimeoutExpired:
                parts.append(f"$ ray {' '.join(args)}: no answer in 60 s")
        return "\n".join(parts)

    def ray(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args, "--address", self.url], env=self.client_env,
                              capture_output=True, text=True, timeout=120)

    def copies(self) -> list[Path]:
        """Ray's unpacked copies of uploaded working directories."""
        return sorted(self.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))


def _wait_for_job_server(url: str, head: subprocess.Popen, env: dict[str, str], log: Path) -> None:
    deadline = time.time() + 180
    while True:
        assert head.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the job server did not come up\n" + log.read_text()[-3000:]
        try:
            urllib.request.urlopen(f"{url}/api/jobs/", timeout=5)
            raise AssertionError("the job server answered without a token: token auth is off")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401, exc  # token auth on, as Ray 2.60 ships it
            listed = subprocess.run([str(BIN / "ray"), "job", "list", "--address", url], env=env,
                                    capture_output=True, text=True, timeout=60)
            if listed.returncode == 0:
                return
        except OSError:
            pass
        time.sleep(1)


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[Head]:
    # a short temp dir: Ray's socket paths must stay under the 107-byte limit
    temp_dir = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))
    work = tmp_path_factory.mktemp("cluster")
    low = 20000 + (os.getpid() % 100) * 100  # a worker port range of its own, away from Ray's 10002-19999
    workers = range(low, low + 100)
    gcs, dashboard, client, node_manager, object_manager, agent, agent_grpc, runtime_env, metrics = _free_ports(
        9, avoid=workers)
    marker = uuid.uuid4().hex
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE")}
    head_env = base | {MARKER: marker, "PATH": f"{BIN}:{os.environ['PATH']}", "SMA_CACHE_DIR": str(work / "cache"),
                       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    url = f"http://127.0.0.1:{dashboard}"
    client_env = base | {"PATH": head_env["PATH"], "RAY_ADDRESS": url, "RAY_AUTH_MODE": "token"}
    # Ray's own token: ~/.ray/auth_token, created only when missing (`ray start` then turns token auth on)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=base, capture_output=True, check=True)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
           "--ray-client-server-port", str(client), "--node-manager-port", str(node_manager),
           "--object-manager-port", str(object_manager), "--dashboard-agent-listen-port", str(agent),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
           "--metrics-export-port", str(metrics), "--min-worker-port", str(low), "--max-worker-port", str(low + 99),
           "--num-cpus", "2", "--num-gpus", "0", "--object-store-memory", str(200 * 2**20),
           "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    log = work / "head.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.time()
        _wait_for_job_server(url, proc, client_env, log)
        print(f"head up in {time.time() - started:.0f} s at {url} (temp dir {temp_dir})")
        yield Head(url=url, gcs=f"127.0.0.1:{gcs}", temp_dir=temp_dir, client_env=client_env)
    finally:
        leftovers = stop_marked(marker, head=proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftovers, f"processes of the test cluster left running: {leftovers}"


def _job_id(stdout: str) -> str:
    found = JOB_ID.search(stdout)
    assert found, stdout[-3000:]
    return found.group(1)


def _trial_states(db: Path, study: str) -> list[str]:
    from tune.studies import rdb_storage, trials

    return [t.state.name for t in trials(rdb_storage(f"sqlite:///{db}"), study)]


def _in_flight(log: str) -> bool:
    """The followed logs show a finished trial and a trial started after it (the search is mid-way)."""
    done = log.count(" completed after ")
    return done >= 1 and log.count(" started with configuration") > done


def _runs(storage: Path, experiment: str, role: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], filter_string=f"tags.role = '{role}'"))


def _written_in_copies(head: Head) -> list[str]:
    """Anything a job wrote into Ray's copies of the working directory (results, databases, MLflow stores)."""
    out = []
    for copy in head.copies():
        out += [str(p) for pattern in ("results", "*.db", "mlruns", "mlartifacts", "**/optuna.db")
                for p in copy.glob(pattern)]
    return out


@pytest.mark.slow
def test_a_job_whose_storage_is_relative_is_refused_before_it_writes_anything(head, tmp_path):
    done = head.submit("--smoke-test", "--experiment", "refused", "--output-dir", "results", storage=None,
                       log=tmp_path / "submit.log")
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    job = _job_id(done.stdout)
    assert f"sma: job {job} FAILED" in done.stdout
    assert "inside its copy of the working directory" in done.stdout
    assert not _written_in_copies(head)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two jobs of a 3-trial search on a 2-CPU head: ~4 min, ~7 on a busy machine
def test_a_stopped_job_resubmitted_resumes_and_succeeds_keeping_its_state_under_the_storage_root(head, tmp_path):
    """The smoke search submitted with ``cluster/submit.sh``, stopped with ``ray job stop`` while a trial runs,
    then the same command again: the second job resumes the search and follows it to SUCCEEDED, its studies,
    runs and Ray results all under the storage root, nothing in Ray's copies of the working directory."""
    from optuna.trial import TrialState

    from tune.studies import INTERRUPTED_ATTR, rdb_storage, trials

    storage = tmp_path / "storage"
    args = ("--smoke-test", "--experiment", "resume", "--sparsity", "0.5", "--trials", "3")
    db = storage / "resume" / "tune" / "optuna.db"
    out = tmp_path / "submit1.log"
    env = head.client_env | {"SMA_STORAGE_ROOT": str(storage)}
    with out.open("w") as fh:
        first = subprocess.Popen(["bash", "cluster/submit.sh", *args], cwd=REPO, env=env, stdout=fh,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not _in_flight(out.read_text()):
            assert first.poll() is None, out.read_text()[-4000:]
            assert time.time() < deadline, "no trial completed while another ran\n" + out.read_text()[-3000:]
            time.sleep(0.5)
        job = _job_id(out.read_text())
        stop = head.ray("job", "stop", job)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert first.wait(timeout=120) == 3, out.read_text()[-3000:]  # submit.sh: exit 3 for STOPPED
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert f"sma: job {job} STOPPED" in out.read_text()
    st = rdb_storage(f"sqlite:///{db}")
    done_before = {t.number: (t.datetime_complete, t.user_attrs["mlflow_run_id"])
                   for t in trials(st, "resume-s0.50") if t.state == TrialState.COMPLETE}
    print("stopped with", _trial_states(db, "resume-s0.50"))

    started = time.time()
    again = head.submit(*args, storage=storage, log=tmp_path / "submit2.log")
    print(f"resubmitted: {time.time() - started:.0f} s, submit to SUCCEEDED")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    job2 = _job_id(again.stdout)
    assert job2 != job and f"sma: job {job2} SUCCEEDED" in again.stdout
    assert "Tailing logs until the job exits" in again.stdout + again.stderr  # submit.sh followed the logs
    status = head.ray("job", "status", job2)
    assert f"Job '{job2}' succeeded" in status.stdout + status.stderr
    # the driver's entrypoint CPU is not the trials': one trial at a time on this 2-CPU head (the first job
    # chose it; the second restores that Ray experiment with it)
    assert "at most 1 trial(s) at a time (cluster: 2 CPU, 0 GPU; this driver's job holds 1 CPU, 0 GPU)" in out.read_text()
    after = trials(st, "resume-s0.50")
    assert sum(t.state == TrialState.COMPLETE for t in after) == 3
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get(INTERRUPTED_ATTR) for t in after)  # no zombie
    assert {t.number: (t.datetime_complete, t.user_attrs["mlflow_run_id"]) for t in after
            if t.number in done_before} == done_before  # finished trials were not run again
    children = _runs(storage, "resume", "trial")
    by_trial = {int(c.data.tags["optuna_trial"]): c.info.status for c in children}
    assert len(children) == len(by_trial)  # one child run per Optuna trial
    assert "RUNNING" not in by_trial.values()
    assert sorted(by_trial.values()).count("FINISHED") == 3
    assert [r.info.status for r in _runs(storage, "resume", "study")] == ["FINISHED"]
    # the studies, runs and Ray results are under the storage root, none in Ray's copy of the working dir
    assert (storage / "resume" / "tune" / "ray" / "resume-s0.50").is_dir()
    assert head.copies(), "no uploaded working-dir copy found under the head's temp dir"
    assert not _written_in_copies(head)
