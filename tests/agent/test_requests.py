"""Requests between simulated nodes: a holder is asked to give its lease up (sanlock's request
record and host bitmap, ``core.requests``); the requester takes it only after the holder ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from vmlease_agent.rpc.client import AgentRefused

from .cluster import LS, N, intervals, wait_for
from .test_storage_fencing import DEAF_HOLDER

#: the requester's bit is read by the holder's next renewal (2N), whose examination reads the
#: request record (N); then the signal, the exit and the release (a second or so)
REACHES_HOLDER = 2 * N + N + 5


def _request(node, cluster, force_mode: int, lver: str = "") -> dict:
    spec = cluster.resource + (f":{lver}" if lver else "")
    return node.client.call("request", resource=spec, force_mode=force_mode)


def test_a_forced_request_kills_the_holder_before_the_requester_writes_safety(cluster):
    a, b = cluster.node(1), cluster.node(2)
    a_log, b_log = os.path.join(cluster.work, "a.log"), os.path.join(cluster.work, "b.log")
    holder = cluster.writer(a, a_log)
    wait_for(lambda: intervals(a_log), 10, "node-a's holder to write")
    got = _request(b, cluster, 1)
    assert got["owner_id"] == 1 and got["requested_lver"] == got["current_lver"] + 1
    assert holder.wait(timeout=REACHES_HOLDER) == -signal.SIGKILL
    taker = cluster.take(b, b_log, 10)
    a_span, b_span = intervals(a_log), intervals(b_log)
    assert a_span is not None and b_span is not None
    assert a_span[1] < b_span[0], "the requester wrote while the old holder still ran"
    [seen] = [e for e in a.client.call("events") if e["event"] == "requested"]
    assert seen["force_mode"] == "force" and seen["action"] == "SIGKILL"
    taker.kill()


def test_a_graceful_request_runs_the_kill_command(cluster):
    """sanlock's killpath: a graceful request runs the holder's kill command, not SIGTERM (the
    holder here ignores SIGTERM; the command, e.g. a libvirt shutdown, stops it)."""
    a, b = cluster.node(1), cluster.node(2)
    a_log, mark = os.path.join(cluster.work, "a.log"), os.path.join(cluster.work, "asked")
    holder = a.spawn_holder(
        [cluster.resource], [sys.executable, "-c", DEAF_HOLDER, a_log], owner="vm1"
    )
    wait_for(lambda: intervals(a_log), 10, "the holder to write")
    pid = a.client.call("status")["leases"][0]["pid"]
    script = f'echo "$0" >> {mark}; kill -KILL "$0"'
    a.client.call("set_kill_command", pid=pid, command=["/bin/sh", "-c", script])
    _request(b, cluster, 2)
    assert holder.wait(timeout=REACHES_HOLDER) is not None
    with open(mark) as f:
        assert f.read().split() == [str(pid)]


def test_an_ignored_graceful_request_shows_the_lease_contended(cluster):
    """A holder may refuse to stop (graceful: SIGTERM, which this one ignores): it keeps the
    lease, and the agent shows the pending request, which the DiskLease reports Contended."""
    a, b = cluster.node(1), cluster.node(2)
    a_log = os.path.join(cluster.work, "a.log")
    holder = a.spawn_holder(
        [cluster.resource], [sys.executable, "-c", DEAF_HOLDER, a_log], owner="vm1"
    )
    wait_for(lambda: intervals(a_log), 10, "the holder to write")
    got = _request(b, cluster, 2)

    def pending():
        leases = a.client.call("status")["leases"]
        return leases and leases[0]["request"]

    request = wait_for(pending, REACHES_HOLDER, "the request seen by node-a")
    assert request == {"lver": got["requested_lver"], "force_mode": 2}
    assert holder.poll() is None, "a graceful request must not kill a holder that ignores it"
    holder.kill()


def test_a_request_for_a_lease_held_on_this_node_reaches_its_holder(cluster):
    """sanlock never notifies its own host, so such a request reaches nobody; ours does."""
    a = cluster.node(1)
    a_log = os.path.join(cluster.work, "a.log")
    holder = cluster.writer(a, a_log)
    wait_for(lambda: intervals(a_log), 10, "the holder to write")
    _request(a, cluster, 1)
    assert holder.wait(timeout=5) == -signal.SIGKILL


def test_a_request_for_a_version_already_reached_is_refused(cluster):
    a, b = cluster.node(1), cluster.node(2)
    holder = cluster.writer(a, os.path.join(cluster.work, "a.log"))
    lver = wait_for(lambda: a.client.call("status")["leases"], 10, "the lease")[0]["lver"]
    with pytest.raises(AgentRefused) as refused:
        _request(b, cluster, 1, lver=str(lver))
    assert refused.value.code == -272 and "stale" in str(refused.value)
    assert holder.poll() is None
    holder.kill()


def test_vmlease_client_request_says_who_holds_it(cluster):
    a, b = cluster.node(1), cluster.node(2)
    holder = cluster.writer(a, os.path.join(cluster.work, "a.log"))
    wait_for(lambda: a.client.call("status")["leases"], 10, "the lease")
    vm = os.path.join(os.path.dirname(sys.executable), "vmlease")
    run = subprocess.run(
        [vm, "client", "--run-dir", b.run_dir, "request", "-r", cluster.resource, "-f", "1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"request done: {LS}:vm1 lver ")
    assert "(force), held by host_id 1 at lver" in run.stdout
    assert holder.wait(timeout=REACHES_HOLDER) == -signal.SIGKILL
