"""Failover of a disk lease between simulated nodes, and the invariants that make it safe.

Every scenario checks the order of events with timestamps on one machine-wide clock (the agent's
CLOCK_BOOTTIME): the old holder is gone (stopped, or its node reset by the watchdog) before the new
holder writes, and the new holder never starts before the old node's last renewal is 8N + W old.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from vmlease_agent.engine import timeouts
from vmlease_agent.engine.clock import boottime

from .cluster import LS, N, W, intervals, wait_for

SAFE = timeouts.host_dead_seconds(N, W)


def last_renewal(cluster, host_id: int) -> int:
    """The old node's last delta-lease timestamp (its CLOCK_MONOTONIC seconds, truncated)."""
    vm = os.path.join(os.path.dirname(sys.executable), "vmlease")
    out = subprocess.run(
        [vm, "direct", "read_leader", "-s", f"{LS}:{host_id}:{cluster.ls_path}:0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(next(x.split()[1] for x in out.splitlines() if x.startswith("timestamp ")))


def test_second_start_is_refused_with_the_holder_named(cluster):
    a, b = cluster.node(1), cluster.node(2)
    vm = cluster.writer(a, os.path.join(cluster.work, "a.log"))
    wait_for(lambda: a.client.call("status")["leases"], 10, "node-a to hold the lease")
    refused = cluster.writer(b, os.path.join(cluster.work, "b.log"))
    _, err = refused.communicate(timeout=30)
    assert refused.returncode != 0
    assert "is held by host 1 (node node-a, generation 1)" in err
    assert "last renewed" in err
    assert intervals(os.path.join(cluster.work, "b.log")) is None
    vm.kill()


def test_holder_exit_releases_its_lease_at_once(cluster):
    a, b = cluster.node(1), cluster.node(2)
    vm = cluster.writer(a, os.path.join(cluster.work, "a.log"))
    wait_for(lambda: a.client.call("status")["leases"], 10, "node-a to hold the lease")
    vm.kill()
    vm.wait()
    killed = boottime()
    wait_for(lambda: not a.client.call("status")["leases"], 3, "node-a to release")
    vm2 = cluster.writer(b, os.path.join(cluster.work, "b.log"))
    wait_for(lambda: intervals(os.path.join(cluster.work, "b.log")), 10, "node-b to write")
    assert boottime() - killed < 5
    vm2.kill()


def _fail_agent_and_check_takeover(cluster, how) -> None:
    a, b = cluster.node(1), cluster.node(2)
    a_log, b_log = (os.path.join(cluster.work, x) for x in ("a.log", "b.log"))
    cluster.writer(a, a_log)
    wait_for(lambda: a.client.call("status")["leases"], 10, "node-a to hold the lease")
    time.sleep(2 * N + 0.5)  # node-b has seen node-a renew
    how(a)
    broken_at = boottime()
    taker = cluster.take(b, b_log, SAFE + 20)
    fired = [e for e in a.watchdog_events() if e["event"] == "fired"]
    _, a_last = intervals(a_log)
    b_first, _ = intervals(b_log)
    t_a = last_renewal(cluster, 1)
    # the watchdog reset node-a (killing the holder) before node-b wrote anything
    assert fired, "node-a's watchdog never fired"
    assert fired[0]["at"] < b_first
    assert a_last < b_first, "two writers at once"
    # node-b waited the whole safe time after node-a's last renewal (1 s: on-disk truncation)
    assert b_first - t_a >= SAFE - 1
    # and not much longer: the failover is bounded by the timing table
    assert b_first - broken_at < SAFE + 2 * N + 5
    taker.kill()


def test_agent_sigkill_watchdog_fires_before_takeover_safety(cluster):
    _fail_agent_and_check_takeover(cluster, lambda node: node.agent.send_signal(signal.SIGKILL))


def test_agent_sigstop_watchdog_fires_before_takeover_safety(cluster):
    _fail_agent_and_check_takeover(cluster, lambda node: node.agent.send_signal(signal.SIGSTOP))


def test_restart_without_harm(cluster):
    a, b = cluster.node(1), cluster.node(2)
    a_log = os.path.join(cluster.work, "a.log")
    vm = cluster.writer(a, a_log)
    wait_for(lambda: a.client.call("status")["leases"], 10, "node-a to hold the lease")
    before = a.client.call("status")
    a.agent.send_signal(signal.SIGTERM)
    assert a.agent.wait(timeout=10) == 0
    time.sleep(1.0)  # an upgrade takes a moment
    a.start()
    wait_for(
        lambda: a.client.call("status")["lockspaces"][0]["state"] == "live", 10, "node-a to resume"
    )
    after = a.client.call("status")
    assert vm.poll() is None, "the holder was disturbed"
    assert [ls["generation"] for ls in after["lockspaces"]] == [
        ls["generation"] for ls in before["lockspaces"]
    ]
    assert [(x["lease"], x["pid"], x["lver"]) for x in after["leases"]] == [
        (x["lease"], x["pid"], x["lver"]) for x in before["leases"]
    ]
    assert not a.watchdog_events(), "the watchdog fired during the restart"
    # still protected: node-b is refused while the holder runs
    refused = cluster.writer(b, os.path.join(cluster.work, "b.log"))
    _, err = refused.communicate(timeout=30)
    assert refused.returncode != 0 and "node node-a" in err
    # and the re-adopted holder still owns the lease's lifetime: its exit releases it
    vm.kill()
    vm.wait()
    wait_for(lambda: not a.client.call("status")["leases"], 3, "release after holder exit")


def test_restart_after_the_deadline_kills_the_holder_before_rejoining_safety(cluster):
    # a watchdog slower than the restart, so only the agent's own check can stop the holder
    a = cluster.node(1, fire_timeout=30)
    vm = cluster.writer(a, os.path.join(cluster.work, "a.log"))
    wait_for(lambda: a.client.call("status")["leases"], 10, "node-a to hold the lease")
    a.agent.send_signal(signal.SIGKILL)
    a.agent.wait()
    time.sleep(8 * N + 1.5)  # past T + 8N while the agent is down
    a.start()
    assert vm.wait(timeout=20) is not None, "the holder of an expired lease kept running"
    # not adopted (its lockspace could not be resumed): killed before the lockspace is joined
    # afresh, since a new generation frees its leases to the other hosts
    wait_for(
        lambda: any(e["event"] == "joining" for e in a.client.call("events")),
        5,
        "the configured lockspace to be joined again",
    )
    kinds = [e["event"] for e in a.client.call("events")]
    assert "holder_killed" in kinds and "adopted" not in kinds, kinds
    assert kinds.index("holder_killed") < kinds.index("lockspace_lost") < kinds.index("joining")
