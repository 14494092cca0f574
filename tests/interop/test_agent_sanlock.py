"""A vmlease agent and a real sanlock 3.8.5 daemon in one lockspace, at different host_ids.

sanlock at host_id 1 (python-sanlock, a registered child process holds its leases), our agent at
host_id 2 (a simulated node with a file watchdog). Each must see the other live in its host
status, refuse the lease the other holds (-243) and take it once the other releases.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from sanlockd import SanlockDaemon, SanlockError, sanlock_skip_reason
from vmlease_agent.sim.node import SimNode
from waiting import wait_for

pytestmark = pytest.mark.interop

N = 1
LS = "mixed"
SANLOCK_HOST_LIVE = 3  # SANLK_HOST_LIVE in sanlk_host.flags


@pytest.fixture
def mixed():
    reason = sanlock_skip_reason()
    if reason:
        pytest.skip(reason)
    work = tempfile.mkdtemp(prefix="vmlease-mixed-", dir="/var/tmp")
    ls, res = os.path.join(work, "ls"), os.path.join(work, "res")
    for p in (ls, res):
        with open(p, "wb") as f:
            f.truncate(1 << 20)
    vm = os.path.join(os.path.dirname(sys.executable), "vmlease")
    subprocess.run([vm, "direct", "init", "-s", f"{LS}:0:{ls}:0", "-o", str(N)], check=True)
    subprocess.run([vm, "direct", "init", "-r", f"{LS}:R:{res}:0"], check=True)
    daemon = SanlockDaemon()
    admin = daemon.client()
    node = SimNode(
        "vmlease-node", work, io_timeout=N, fire_timeout=10, lockspaces=[f"{LS}:2:{ls}:0:{N}"]
    )
    try:
        admin.call("add_lockspace", lockspace=LS, host_id=1, path=ls, io_timeout=N)
        node.start()
        node.wait_joined(LS)
        yield work, ls, res, daemon, admin, node
    finally:
        node.stop()
        admin.close()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def our_view(node, host_id):
    rows = node.client.call("host_status", lockspace=LS)
    return next((r for r in rows if r["host_id"] == host_id), None)


def test_agent_and_sanlock_see_each_other_live(mixed):
    _, _ls, _, _, admin, node = mixed

    def sanlock_sees_us():
        try:
            hosts = admin.call("get_hosts", lockspace=LS, host_id=2)
        except SanlockError:  # -EAGAIN until its first scan
            return None
        return hosts and hosts[0]["flags"] == SANLOCK_HOST_LIVE

    wait_for(sanlock_sees_us, 8 * N + 10, "sanlock to see our agent live")
    wait_for(
        lambda: (our_view(node, 1) or {}).get("state") == "live",
        8 * N + 10,
        "our agent to see sanlock live",
    )
    row = our_view(node, 1)
    assert row["io_timeout"] == N
    assert row["watchdog_fire_timeout"] == 60  # a sanlock host carries no tag: judged with 60 s


def test_sanlock_holds_agent_refused_then_wins(mixed):
    _, _, res, daemon, _, node = mixed
    holder = daemon.client()
    holder.call("register")
    holder.call("acquire", lockspace=LS, resource="R", path=res)
    time.sleep(2 * N + 0.5)
    proc = node.spawn_holder([f"{LS}:R:{res}:0"], ["sleep", "60"], owner="vm1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 243 and "is held by host 1" in err
    holder.call("release", lockspace=LS, resource="R", path=res)
    holder.close()
    proc = node.spawn_holder([f"{LS}:R:{res}:0"], ["sleep", "60"], owner="vm1")
    wait_for(lambda: node.client.call("status")["leases"], 10, "our agent to take the lease")
    proc.kill()


def test_agent_holds_sanlock_refused_then_wins(mixed):
    _, _, res, daemon, _, node = mixed
    proc = node.spawn_holder([f"{LS}:R:{res}:0"], ["sleep", "60"], owner="vm1")
    wait_for(lambda: node.client.call("status")["leases"], 10, "our agent to hold the lease")
    time.sleep(2 * N + 0.5)
    other = daemon.client()
    other.call("register")
    with pytest.raises(SanlockError) as e:
        other.call("acquire", lockspace=LS, resource="R", path=res)
    assert e.value.errno == -243
    proc.kill()
    proc.wait()
    wait_for(lambda: not node.client.call("status")["leases"], 5, "our release")
    other.call("acquire", lockspace=LS, resource="R", path=res)
    other.close()


# --- requests: either side asks the other's holder to give a lease up -------------------------


@pytest.mark.parametrize(("action", "signal_seen"), [("force", -9), ("graceful", -15)])
def test_a_sanlock_request_stops_our_holder_then_sanlock_takes_the_lease(
    mixed, action, signal_seen
):
    """sanlock writes the request record and sets our bit in its renewals' bitmap; our agent
    reads the bit (at its next renewal, within 2N), examines its leases and stops the holder
    as sanlock would (force: SIGKILL; graceful without a kill command: SIGTERM)."""
    _, _, res, daemon, _, node = mixed
    proc = node.spawn_holder([f"{LS}:R:{res}:0"], ["sleep", "60"], owner="vm1")
    wait_for(lambda: node.client.call("status")["leases"], 10, "our agent to hold the lease")
    time.sleep(2 * N + 0.5)  # sanlock's daemon has scanned us live
    requester = daemon.client()
    requester.call("register")
    with pytest.raises(SanlockError):
        requester.call("acquire", lockspace=LS, resource="R", path=res)
    requester.call("request", lockspace=LS, resource="R", path=res, action=action)
    proc.wait(timeout=6 * N + 10)
    assert proc.returncode == signal_seen
    wait_for(lambda: not node.client.call("status")["leases"], 5, "our release")
    [seen] = [e for e in node.client.call("events") if e["event"] == "requested"]
    assert seen["force_mode"] == action and seen["lease"] == f"{LS}:R"
    requester.call("acquire", lockspace=LS, resource="R", path=res)
    requester.close()


def test_our_request_stops_a_sanlock_holder_then_we_take_the_lease(mixed):
    """Our agent writes the request record and carries sanlock's bit in its own renewals;
    sanlock's daemon examines and SIGKILLs its registered holder, then releases the lease."""
    _, _, res, daemon, _, node = mixed
    holder = daemon.client()
    holder.call("register")
    holder.call("acquire", lockspace=LS, resource="R", path=res)
    wait_for(
        lambda: (our_view(node, 1) or {}).get("state") == "live",
        8 * N + 10,
        "our agent to see sanlock live",
    )
    got = node.client.call("request", resource=f"{LS}:R:{res}:0", force_mode=1)
    assert got["owner_id"] == 1 and got["requested_lver"] == got["current_lver"] + 1
    assert holder.proc.wait(timeout=6 * N + 10) == -9
    holder.close()
    proc = node.spawn_holder([f"{LS}:R:{res}:0"], ["sleep", "60"], owner="vm1")
    leases = wait_for(lambda: node.client.call("status")["leases"], 10, "our agent to take it")
    assert leases[0]["lver"] >= got["requested_lver"]
    proc.kill()
