"""The tests' own process cleanup: :func:`servers.stop_group` leaves nothing of a group alive, and
:func:`servers.local_ray` nothing of its cluster."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from servers import MARKER, group_members, local_ray, marked, stop_group

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def test_stop_group_kills_what_the_leader_left_behind():
    """A leader that exits on SIGTERM but started a child that ignores it (as a CLI exits before the agents
    of the local Ray it started): the child is killed too, by the group id."""
    leader = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {STUBBORN!r}]); time.sleep(600)"],
                              start_new_session=True)
    try:
        deadline = time.time() + 30
        while len(group_members(leader.pid)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert len(group_members(leader.pid)) == 2
        stop_group(leader, grace=2)
        assert leader.returncode is not None and group_members(leader.pid) == []
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(leader.pid)], check=False)


@pytest.mark.slow
def test_local_ray_stops_every_process_of_its_cluster_after_the_shutdown():
    """Every process started while the cluster is up carries its marker (Ray's own processes too). One in a
    session of its own that ignores SIGTERM, as a ``TrainController`` actor outlived ``ray.shutdown()`` after a
    fault-injection test, is gone after the context, found by that marker."""
    import os

    with local_ray():
        marker = os.environ[MARKER]
        stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN], start_new_session=True)
        time.sleep(1)
        found = [p.pid for p in marked(marker)]
        assert stubborn.pid in found and len(found) > 2  # the raylet and GCS carry it too
    assert marked(marker) == [] and MARKER not in os.environ
    assert stubborn.wait(timeout=10) is not None
