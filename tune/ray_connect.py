"""Which Ray cluster ``sma tune`` and ``sma ablate`` use, joined without hanging on a dead one.

Left to itself, ``ray.init()`` joins the cluster named by ``$RAY_ADDRESS``, else the last one ``ray start``
recorded in ``<ray temp dir>/ray_current_cluster``, else starts a local one. A head that died without
``ray stop`` leaves that file behind, and ``ray.init()`` then retries the dead address for minutes. Here the
rule is explicit: an address given (the argument, else ``$RAY_ADDRESS``; ``auto`` = the recorded cluster) must
accept a TCP connection within seconds, or :class:`~sma.preflight.PreflightError` names it; with no address a
new local cluster is started (``ray.init(address="local")``), whatever the file says. ``ray job submit``
sets ``$RAY_ADDRESS`` for its entrypoint, so a submitted search joins its cluster. Ray is imported only by
:func:`connect`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sma.preflight import PreflightError, check_tcp
from tune.storage_root import job_config

log = logging.getLogger(__name__)

ENV = "RAY_ADDRESS"
GCS_PORT = 6379
"""Ray's default head (GCS) port: ``ray start --head`` without ``--port``."""
CLIENT_PORT = 10001
"""Ray Client's default port (``ray://host`` without a port)."""


def cluster_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else ``$RAY_ADDRESS``; ``None`` (and ``local``) = a new local one."""
    chosen = address or os.environ.get(ENV) or None
    return None if chosen == "local" else chosen


def current_cluster_file() -> Path:
    """Where ``ray start`` records the cluster it started (Ray's rule: ``$RAY_TMPDIR``, else ``$TMPDIR`` on
    Linux, else ``/tmp``; then ``ray/ray_current_cluster``)."""
    tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(tmp) / "ray" / "ray_current_cluster"


def recorded_address() -> str | None:
    """The address in :func:`current_cluster_file`, if there is one (possibly of a dead cluster)."""
    path = current_cluster_file()
    return (path.read_text().strip() or None) if path.is_file() else None


def endpoint(address: str) -> tuple[str, int]:
    """``(host, port)`` of a Ray address: ``host:port``, ``ray://host[:port]`` (Ray Client) or
    ``http(s)://host[:port]``."""
    default = CLIENT_PORT if address.startswith("ray://") else GCS_PORT
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or (port is None and ":" in parts.netloc.rsplit("]", 1)[-1]):
        raise PreflightError(f"Ray address {address!r}: expected host:port or ray://host:port")
    return parts.hostname, port or default


def check_address(address: str | None, *, source: str = ENV) -> None:
    """Fail fast, naming ``address`` (and where it came from), unless its cluster accepts a TCP connection;
    ``None`` (a local cluster will be started) passes."""
    if address is None:
        return
    target = address
    if address == "auto":
        target = recorded_address()
        if target is None:
            raise PreflightError(f"Ray address 'auto' (from {source}): no cluster recorded in "
                                 f"{current_cluster_file()}; start one with `ray start --head` or name it")
    host, port = endpoint(target)
    check_tcp(host, port, f"Ray address {address!r} (from {source})")


def connect(address: str | None = None) -> None:
    """Join the cluster :func:`cluster_address` names, once :func:`check_address` found it answering, or
    start a local one; logs which."""
    import ray

    target = cluster_address(address)
    source = "argument" if address else ENV
    if target is None:
        ray.init(address="local", log_to_driver=True)
        recorded = recorded_address()
        log.info("Ray: local cluster started%s", "" if recorded is None else
                 f" (not joining {recorded} recorded in {current_cluster_file()}: set {ENV} to use a running one)")
        return
    check_address(target, source=source)
    log.info("Ray: connecting to %s (from %s)", target, source)
    ray.init(address=target, log_to_driver=True)


def preflight(cfg: Any) -> None:
    """The front door's check for ``sma tune`` / ``sma ablate`` (``cfg`` unused: the address is not a config
    key, it comes from ``$RAY_ADDRESS``)."""
    check_address(cluster_address())


SUPERVISOR_PREFIX = "_ray_internal_job_actor_"
"""Ray names a submitted job's supervisor actor (which holds the job's entrypoint resources) this + its id."""


def driver_reservation(environ: dict[str, str] | None = None) -> dict[str, float]:
    """What this driver's own job holds while it runs: a job submitted with ``--entrypoint-num-cpus/gpus``
    (``cluster/submit.sh``, a KubeRay ``RayJob``) keeps those resources on its supervisor actor for its whole
    life, so trials cannot use them. Empty outside a submitted job, or when Ray's state API cannot say (logged)."""
    submission = job_config(os.environ if environ is None else environ).get("metadata", {}).get("job_submission_id")
    if not submission:
        return {}
    try:
        from ray.util.state import list_actors

        found = list_actors(filters=[("name", "=", SUPERVISOR_PREFIX + submission), ("state", "=", "ALIVE")],
                            detail=True, raise_on_missing_output=False)
    except Exception as exc:  # noqa: BLE001 - the state API is advisory here
        log.warning("cannot read job %s's entrypoint resources from Ray's state API: %s", submission, exc)
        return {}
    held = dict(found[0].required_resources or {}) if found else {}
    log.info("Ray: this job's driver holds %s", held or "no resources")
    return {k: float(v) for k, v in held.items()}
