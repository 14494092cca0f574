"""Fencing when a node's path to the lockspace stalls or fails while the others' works.

Node-a reaches the lockspace through a FUSE pass-through (tests/stallfs.py) that can stall its
I/O in the kernel or answer it with EIO; node-b uses the file directly. In every case node-a's
lease holder must be gone — stopped by fencing, or its node reset by the watchdog — before
node-b writes, and node-b must wait 8N + W after node-a's last renewal.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import pytest
from stallfs import StallFs
from stallfs_fixture import stallfs_skip_reason

from .cluster import N, intervals, wait_for
from .test_failover import SAFE, last_renewal


@pytest.fixture
def a_path(cluster):
    """node-a's own view of the lockspace file, through a stallable FUSE mount."""
    reason = stallfs_skip_reason()
    if reason:
        pytest.skip(reason)
    mnt = tempfile.mkdtemp(prefix="vmlease-stallfs-")
    fs = StallFs(mnt, backing=cluster.ls_path)
    yield fs
    fs.resume()  # first: a process stuck in the stalled mount cannot die before it is answered
    for node in cluster.nodes:
        node.stop()
    fs.close()
    shutil.rmtree(mnt, ignore_errors=True)


def _break_storage_and_check(cluster, fs, breaker, holder_argv=None):
    a = cluster.node(1, ls_path=fs.path)
    b = cluster.node(2)
    a_log, b_log = (os.path.join(cluster.work, x) for x in ("a.log", "b.log"))
    if holder_argv is None:
        cluster.writer(a, a_log)
    else:
        a.spawn_holder([cluster.resource], holder_argv(a_log), owner="vm1")
    wait_for(lambda: intervals(a_log), 10, "node-a's holder to write")
    time.sleep(2 * N + 0.5)  # node-b has seen node-a renew
    breaker()
    taker = cluster.take(b, b_log, SAFE + 30)
    _, a_last = intervals(a_log)
    b_first, _ = intervals(b_log)
    t_a = last_renewal(cluster, 1)
    assert a_last < b_first, "two writers at once"
    assert b_first - t_a >= SAFE - 1
    taker.kill()
    return a, b_first


def test_storage_stall_holder_stopped_before_takeover_safety(cluster, a_path):
    a, b_first = _break_storage_and_check(cluster, a_path, a_path.stall)
    events = a.client.call("events")
    fences = [e for e in events if e["event"] == "fence"]
    assert fences and fences[0]["action"] == "SIGTERM"
    lost = [e for e in events if e["event"] == "lockspace_lost"]
    assert lost and lost[0]["at"] < b_first
    # what its HostId says (HoldersStopped) and `vmlease client status` shows
    [fenced] = a.client.call("status")["fenced"]
    assert fenced["done"] and fenced["holders"][0].startswith("vm1 (pid ")
    assert fenced["holders"][0].endswith(": SIGTERM")
    # the holder died, so the node did not need a reset: the watchdog was fed again
    assert not a.watchdog_events()


def test_storage_errors_holder_stopped_before_takeover_safety(cluster, a_path):
    a, b_first = _break_storage_and_check(cluster, a_path, a_path.fail)
    events = a.client.call("events")
    assert any(e["event"] == "fence" for e in events)
    lost = [e for e in events if e["event"] == "lockspace_lost"]
    assert lost and lost[0]["at"] < b_first
    assert not a.watchdog_events()


#: A holder that ignores SIGTERM and reads the stallable file between writes: once the storage
#: stalls it sleeps uninterruptibly in the kernel, where even SIGKILL cannot end it.
STUCK_HOLDER = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "f = open(sys.argv[1], 'a', buffering=1)\n"
    "fd = os.open(sys.argv[2], os.O_RDONLY)\n"
    "while True:\n"
    "    f.write(f'{time.clock_gettime(time.CLOCK_BOOTTIME)}\\n')\n"
    "    os.pread(fd, 512, 0)\n"
    "    time.sleep(0.05)\n"
)


def test_holder_stuck_in_io_watchdog_resets_node_before_takeover_safety(cluster, a_path):
    def holder(log):
        return [sys.executable, "-c", STUCK_HOLDER, log, a_path.path]

    a, b_first = _break_storage_and_check(cluster, a_path, a_path.stall, holder)
    fired = [e for e in a.watchdog_events() if e["event"] == "fired"]
    assert fired, "the holder could not be killed, so the watchdog had to fire"
    assert fired[0]["at"] < b_first


#: A holder that ignores SIGTERM: only its kill command (or SIGKILL later) can stop it.
DEAF_HOLDER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "f = open(sys.argv[1], 'a', buffering=1)\n"
    "while True:\n"
    "    f.write(f'{time.clock_gettime(time.CLOCK_BOOTTIME)}\\n')\n"
    "    time.sleep(0.05)\n"
)


def test_kill_command_runs_instead_of_sigterm(cluster, a_path):
    a = cluster.node(1, ls_path=a_path.path)
    a_log = os.path.join(cluster.work, "a.log")
    mark = os.path.join(cluster.work, "fenced")
    holder = a.spawn_holder(
        [cluster.resource], [sys.executable, "-c", DEAF_HOLDER, a_log], owner="vm1"
    )
    wait_for(lambda: intervals(a_log), 10, "the holder to write")
    pid = a.client.call("status")["leases"][0]["pid"]
    script = f'echo "$0" >> {mark}; kill -KILL "$0"'
    a.client.call("set_kill_command", pid=pid, command=["/bin/sh", "-c", script])
    a_path.fail()
    assert holder.wait(timeout=8 * N + 15) is not None
    with open(mark) as f:
        assert f.read().split() == [str(pid)]
    actions = [e["action"] for e in a.client.call("events") if e["event"] == "fence"]
    assert actions[0] == "command" and "SIGTERM" not in actions
