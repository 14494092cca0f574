"""The agent's safety rules, in-process: a real Agent on real lease files (N = 1 s), a recording
watchdog (tests/unit/fake_watchdog.py), holders that are child processes.

Each test is one way the review drove the agent into two writers (issue "close every path to two
writers"): the device must run no longer than the W our record advertises, must never be closed
or fed after a deadline, must protect an acquisition from before its first write, and a restart
that cannot prove its predecessor's holders gone must wait out that predecessor.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from fake_watchdog import RecordingWatchdog
from leasekit import (
    CountingStorage,
    leader_of,
    make_file,
    make_lockspace,
    make_resource,
    read_bytes,
)
from vmlease_agent.core import fencing, state
from vmlease_agent.core.agent import Agent, AgentConfig, Busy, ExitedHolderUnadoptable
from vmlease_agent.core.lockspace import SETEV_CUR_GENERATION, FireTimeoutTooLong, LockspaceConfig
from vmlease_agent.engine import delta, errors, ondisk, paxos, rindex
from vmlease_agent.engine.clock import boottime
from vmlease_agent.engine.delta import HostEvent
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.paxos import Resource
from vmlease_agent.rpc.sanlock.api import SanlockApi
from vmlease_agent.rpc.sanlock.inspection import LogRing
from waiting import wait_for

N = 1


class World:
    """Lease files, agents and holder processes of one test; everything stopped at the end."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.ls = make_lockspace(directory, io_timeout=N)
        self.res = make_resource(directory)[1]
        self.agents: list[Agent] = []
        self.holders: list[subprocess.Popen] = []

    def agent(
        self, name: str = "node-a", w: int = 10, machine_id: str = "machine-1", run: str = ""
    ) -> Agent:
        run_dir = os.path.join(self.dir, run or f"run-{name}")
        a = Agent(AgentConfig(run_dir, name, w, machine_id=machine_id), RecordingWatchdog(w))
        a.start()
        self.agents.append(a)
        return a

    def join(
        self, a: Agent, host_id: int = 1, wait: bool = True, name: str = "LS", fence: bool = False
    ) -> None:
        path = self.ls.path if name == "LS" else self.second_lockspace()
        a.add_lockspace(LockspaceConfig(name, host_id, path, 0, N, fence_node=fence), wait=wait)

    def second_lockspace(self) -> str:
        path = os.path.join(self.dir, "lockspace2")
        if not os.path.exists(path):
            make_file(self.dir, "lockspace2")
            with Storage(path) as st:
                delta.init_lockspace(st, delta.Location("LS2", path, 0), self.ls.sizes, N)
        return path

    def holder(self) -> subprocess.Popen:
        p = subprocess.Popen(["sleep", "600"])
        self.holders.append(p)
        return p

    def record(self, host_id: int = 1) -> ondisk.Leader:
        return self.ls.record(host_id)

    def close(self) -> None:
        for p in self.holders:
            p.kill()
            p.wait()
        for a in self.agents:
            a.halt()


@pytest.fixture
def world(lease_dir) -> Iterator[World]:
    w = World(lease_dir)
    yield w
    w.close()


def steal_host_id(world: World, host_id: int = 1) -> None:
    """Another writer rewrites our delta lease (the renewal then fails the lockspace)."""
    rec = world.record(host_id)
    other = replace(rec, owner_generation=rec.owner_generation + 7, timestamp=rec.timestamp + 1)
    with Storage(world.ls.path) as st:
        st.write((host_id - 1) * 512, ondisk.sector(512, (0, other.sealed().pack())), 5)


# ---- the watchdog protects holders, not the node ---------------------------------------------


def test_watchdog_is_armed_before_the_first_write_and_only_while_held_safety(world):
    a = world.agent()
    world.join(a)
    time.sleep(0.6)  # a few main-loop passes with a joined lockspace and nothing held
    assert a.watchdog.ops() == []  # never opened: an agent that protects nothing resets nobody
    st = CountingStorage(world.res.path)
    writes: list[float] = []
    st.before_write.append(lambda off, data: writes.append(boottime()))
    a.acquirer_factory = lambda _storage, *args, **kw: paxos.Acquirer(st, *args, **kw)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    assert a.watchdog.when("arm")[0] < writes[0]
    assert a.status()["watchdog"]["armed"]
    vm.kill()
    wait_for(lambda: "disarm" in a.watchdog.ops(), 5, "the watchdog to be disarmed")
    assert not a.watchdog.armed and "disarm the watchdog" in a.status()["watchdog"]["on_sigterm"]


def test_sigterm_with_nothing_held_disarms_the_watchdog_safety(world):
    a = world.agent()
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    a.release(vm.pid, None)
    a.stop(clean=False)
    assert "abandon" not in a.watchdog.ops() and a.watchdog.fires_at is None


def test_sigterm_lets_go_of_the_device_before_waiting_on_storage_safety(world, caplog):
    """A renewal stuck in storage must not delay the device decision past the deadline: the
    close (a keepalive on Linux) must land while feeding is still allowed."""
    a = world.agent()
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    ls = a.joined_lockspace("LS")
    assert ls is not None
    stalled = threading.Event()
    renew = ls.lease.renew
    ls.lease.renew = lambda *args, **kw: (stalled.wait(30), renew(*args, **kw))[1]
    # late in the renewal window: waiting 2N + 1 s for the stuck renewal would pass T + 8N
    wait_for(lambda: boottime() > ls.last_success + 6 * N, 10, "6N without a renewal")
    deadline = ls.deadline()
    started = boottime()
    a.stop(clean=False)
    (closed_at,) = a.watchdog.when("abandon")
    stalled.set()
    assert closed_at < deadline - 1, "the device was closed after the deadline"
    assert closed_at - started < 0.5  # decided at once, before anything waited on storage
    assert "STOPPING WITH LEASES HELD (pid:" in caplog.text  # the restart window, said loudly


def test_sigterm_after_the_deadline_never_closes_or_feeds_the_device_safety(world):
    a = world.agent()
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    ls = a.joined_lockspace("LS")
    assert ls is not None
    stalled = threading.Event()
    renew = ls.lease.renew
    ls.lease.renew = lambda *args, **kw: (stalled.wait(30), renew(*args, **kw))[1]
    wait_for(lambda: boottime() > ls.deadline() + 0.3, 15, "the deadline to pass")
    deadline = ls.deadline()
    a.stop(clean=False)  # returns once fencing has stopped the holder
    stalled.set()
    assert vm.poll() is not None  # fenced
    late = [(op, at) for op, at, _ in a.watchdog.timeline if at >= deadline - 1]
    assert all(op in ("shorten", "disarm") for op, _ in late), late


# ---- an acquisition in flight is a holder -------------------------------------------------------


def hold_ballots(a: Agent) -> tuple[threading.Event, threading.Event]:
    """Make ``a``'s acquisitions stop before their ballot: ``entered`` is set when one got there
    (its first write counted as a holder already), and it goes on once ``gate`` is set."""
    entered, gate = threading.Event(), threading.Event()
    real_acquirer = a.acquirer_factory

    def slow_acquirer(*args, **kw):
        acq = real_acquirer(*args, **kw)
        ballot = acq.acquire

        def acquire(**kw):
            entered.set()
            gate.wait(30)
            return ballot(**kw)

        acq.acquire = acquire
        return acq

    a.acquirer_factory = slow_acquirer
    return entered, gate


def test_acquisition_in_flight_is_fenced_when_its_lockspace_fails_safety(world):
    a = world.agent()
    world.join(a)
    entered, gate = hold_ballots(a)
    vm = world.holder()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["leases"] = a.acquire(vm.pid, [(world.res, False)])
        except errors.LeaseError as e:
            outcome["error"] = e

    t = threading.Thread(target=run)
    t.start()
    assert entered.wait(5)
    # the lockspace fails at its next renewal, mid-ballot (stolen again should a renewal in
    # flight have read before the steal and overwritten it)
    wait_for(
        lambda: steal_host_id(world) or a.snapshot().lockspace("LS").state == "failed",
        8,
        "the lockspace to fail",
        every=0.5,
    )
    failed_at = boottime()
    # fencing starts at the deadline T + 8N (engine.timeouts), with SIGTERM
    wait_for(lambda: vm.poll() is not None, 8 * N + 3, "the acquiring holder to be fenced")
    assert not [at for at in a.watchdog.when("keepalive") if at > failed_at + 0.3]
    gate.set()
    t.join(10)
    assert "error" in outcome and not a.status()["leases"]


# ---- W changed across a restart ---------------------------------------------------------------


def test_w_raised_across_a_restart_waits_for_the_record_to_say_so_safety(world):
    """A chart change W 10 -> 30 plus a rolling update: peers judge the resumed record by 10
    until our first renewal writes 30, so the device must run with 10 until then."""
    a = world.agent(w=10)
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    a.stop(clean=False)
    b = world.agent(w=30)
    fed = [s for op, _, s in b.watchdog.timeline if op == "keepalive"]
    assert fed and fed[0] == 10
    wait_for(lambda: b.device_timeout() == 30, 2 * N + 3, "a renewal advertising W = 30")
    assert ondisk.watchdog_fire_timeout_of(world.record(), 0) == 30
    wait_for(lambda: b.watchdog.timeout == 30, 2, "the device to run with 30")
    assert b.status()["leases"]  # the holder was adopted, not disturbed


def test_the_disk_a_lease_protects_is_kept_across_a_restart(world):
    """libvirt's hook names the disk of each automatic lease; the agent shows it (and its
    DiskLease's spec.diskPath) for as long as the lease is held, restarts included."""
    a = world.agent()
    world.join(a)
    vm = world.holder()
    [got] = a.acquire(vm.pid, [(world.res, False)], disks={world.res.label: "/img/vm1.img"})
    assert got["disk_path"] == "/img/vm1.img"
    a.stop(clean=False)
    b = world.agent()
    [held] = b.status()["leases"]
    assert held["disk_path"] == "/img/vm1.img" and held["pid"] == vm.pid


def test_w_above_what_sanlock_hosts_assume_is_refused_safety(world):
    a = world.agent(w=61)
    with pytest.raises(FireTimeoutTooLong, match=r"judge it by 60 s \(sanlock hosts assume 60"):
        world.join(a)
    cfg = LockspaceConfig("LS", 1, world.ls.path, 0, N, promised_fire_timeout=90)
    a.add_lockspace(cfg)  # a Kubernetes Lockspace promising 90 s to every host


# ---- restart without usable saved state ----------------------------------------------------------


def test_restart_without_its_state_waits_out_the_previous_agent_safety(world):
    w = 3
    a = world.agent(w=w)
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    a.stop(clean=False)
    t = world.record().timestamp
    os.unlink(os.path.join(a.cfg.run_dir, state.STATE_FILE))  # state lost; the VM still runs
    b = world.agent(w=w)
    world.join(b, host_id=1, name="LS2")  # another lockspace, fresh
    world.join(b, wait=False)
    wait_for(lambda: b.joined_lockspace("LS").previous_until > 0, 5, "the wait for the old agent")
    vm2 = world.holder()
    res2 = Resource("LS2", "R2", make_resource(world.dir, "LS2", "R2", filename="r2")[1].path, 0)
    with pytest.raises(Busy, match="no new leases yet"):
        b.acquire(vm2.pid, [(res2, False)])
    assert b.watchdog.ops() == []  # opening it would feed the old agent's countdown
    wait_for(
        lambda: b.snapshot().lockspace("LS").state == "live", 1 + 8 * N + w + 2 * N + 5, "re-join"
    )
    assert boottime() >= t + 8 * N + w
    assert world.record().owner_generation == 2


def test_another_machine_with_our_name_is_refused_and_named_while_it_renews_safety(world):
    a = world.agent(machine_id="machine-1", w=2)
    world.join(a)
    b = world.agent(machine_id="machine-2", run="run-clone")  # a clone, beside the original
    started = boottime()
    with pytest.raises(errors.LeaseError, match="held under our host name 'node-a' by another"):
        world.join(b)
    assert boottime() - started >= 8 * N + 2  # watched for 8N + W: it renewed, so it lives
    assert world.record().owner_generation == 1


def test_another_machine_with_our_name_silent_for_8n_plus_w_is_taken_over_safety(world):
    """A reinstalled node (a new machine id, the same name) whose old record nobody renews."""
    a = world.agent(machine_id="machine-1", w=2)
    world.join(a)
    a.stop(clean=False)
    os.unlink(os.path.join(a.cfg.run_dir, state.STATE_FILE))  # the old install's state: gone
    b = world.agent(machine_id="machine-2")
    started = boottime()
    world.join(b)
    assert boottime() - started >= 8 * N + 2  # never at once: proven dead first
    assert world.record().owner_generation == 2


def test_restart_after_a_reboot_rejoins_at_once(world, monkeypatch):
    a = world.agent()
    world.join(a)
    a.stop(clean=False)
    monkeypatch.setattr(state, "boot_id", lambda: "the-next-boot")
    b = world.agent()
    started = boottime()
    world.join(b)
    assert boottime() - started < 2 * N + 2  # no 8N + W wait: the old boot's processes are gone
    assert world.record().owner_generation == 2


def test_unusable_state_is_reported_in_events(world):
    a = world.agent(name="node-a")
    world.join(a)
    a.save()
    os.rename(
        os.path.join(a.cfg.run_dir, state.STATE_FILE),
        os.path.join(world.dir, "moved.json"),
    )
    run_b = os.path.join(world.dir, "run-node-b")
    os.makedirs(run_b)
    os.rename(os.path.join(world.dir, "moved.json"), os.path.join(run_b, state.STATE_FILE))
    b = world.agent(name="node-b")
    (ev,) = [e for e in b.snapshot().events if e.kind == "state_not_adopted"]
    assert "written by node 'node-a'" in ev.fields["detail"]


def test_machine_identity_is_written_with_our_record(world):
    a = world.agent()
    world.join(a)
    sector = read_bytes(world.ls.path, 0, 512)
    ident = ondisk.Identity.unpack_for(sector, world.record())
    assert ident == a.identity == ondisk.Identity.of("machine-1", state.boot_id())


def test_status_says_what_a_sigterm_would_do(world, capsys):
    from vmlease_agent.cli.client import render_status

    a = world.agent()
    world.join(a)
    render_status(a.status())
    out = capsys.readouterr().out
    assert "disarmed (nothing held)" in out and "on SIGTERM: disarm the watchdog" in out
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    render_status(a.status())
    out = capsys.readouterr().out
    assert "armed, fed" in out
    assert "on SIGTERM: keep the watchdog counting: 1 holder(s) keep their leases" in out


def test_machine_id_comes_from_the_hosts_file(tmp_path):
    from vmlease_agent.daemon.main import machine_id

    (tmp_path / "machine-id").write_text("0123abcd\n")
    assert machine_id(str(tmp_path / "machine-id")) == "0123abcd"
    assert machine_id(str(tmp_path / "absent")) == ""


def test_unadoptable_state_keeps_the_watchdog_closed_until_its_holders_may_be_gone_safety(world):
    """The old agent's lockspaces may not be re-joined at all: the unusable file's own records
    bound how long its holders may run, and nothing opens the device before that."""
    a = world.agent(name="node-a", w=3)
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    a.stop(clean=False)
    t = world.record().timestamp
    doc_path = os.path.join(a.cfg.run_dir, state.STATE_FILE)
    with open(doc_path) as f:
        doc = f.read()
    with open(doc_path, "w") as f:
        f.write(doc.replace('"version": 1', '"version": 99'))  # a downgrade: not adoptable
    b = world.agent(name="node-a", w=3)
    world.join(b, host_id=1, name="LS2")
    vm2 = world.holder()
    res2 = Resource("LS2", "R2", make_resource(world.dir, "LS2", "R2", filename="r2")[1].path, 0)
    with pytest.raises(Busy, match="could not be adopted"):
        b.acquire(vm2.pid, [(res2, False)])
    assert b.watchdog.ops() == []
    assert "could not be adopted" in b.status()["watchdog"]["new_leases_wait"]
    wait_for(lambda: boottime() > t + 1 + 8 * N + 3, 20, "the old agent's deadline + W")
    assert b.status()["watchdog"]["new_leases_wait"] == ""
    b.acquire(vm2.pid, [(res2, False)])


def test_a_holder_whose_lockspace_is_not_resumed_is_killed_not_adopted_safety(world):
    """Found by the agent campaign: the saved state kept a holder but not its lockspace (it was
    not live when saved), the new agent adopted the holder and joined the lockspace afresh; the
    new generation freed the holder's lease to the other hosts while it still wrote. A holder is
    adopted only with its lockspace resumed; otherwise it is killed before anything re-joins."""
    import json

    a = world.agent(name="node-a", w=3)
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    a.stop(clean=False)
    doc_path = os.path.join(a.cfg.run_dir, state.STATE_FILE)
    with open(doc_path) as f:
        doc = json.load(f)
    doc["lockspaces"] = []  # what a save made while the lockspace was not live holds
    with open(doc_path, "w") as f:
        json.dump(doc, f)
    b = world.agent(name="node-a", w=3)
    assert vm.wait(timeout=5) == -signal.SIGKILL
    assert b.snapshot().holders == ()


def test_a_holder_that_survives_the_kill_keeps_the_agent_from_starting_safety(world, monkeypatch):
    """A holder stuck in uninterruptible I/O outlives SIGKILL and may still write: the agent
    refuses to start (no watchdog feed, no fresh join) instead of going on after a while."""
    import json

    from vmlease_agent.core import agent as agent_module
    from vmlease_agent.core.agent import HolderSurvivedKill

    a = world.agent(name="node-a", w=1)
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    a.stop(clean=False)
    doc_path = os.path.join(a.cfg.run_dir, state.STATE_FILE)
    with open(doc_path) as f:
        doc = json.load(f)
    doc["lockspaces"] = []
    with open(doc_path, "w") as f:
        json.dump(doc, f)
    monkeypatch.setattr(agent_module, "process_can_run", lambda pid: True)  # a D-state holder
    dog = RecordingWatchdog(1)
    b = Agent(AgentConfig(a.cfg.run_dir, "node-a", 1, machine_id="machine-1"), dog)
    with pytest.raises(HolderSurvivedKill, match=f"pid {vm.pid}.*LS.*reboot the node"):
        b.start()
    assert dog.ops() == []


# ---- one acquisition or release of a lease at a time on this node ------------------------------


def gated_acquirer(a: Agent, method: str) -> tuple[threading.Event, threading.Event]:
    """Pause the first call of ``method`` on the agent's Acquirers until ``gate`` is set."""
    entered, gate = threading.Event(), threading.Event()
    real_acquirer = a.acquirer_factory

    def acquirer(*args, **kw):
        acq = real_acquirer(*args, **kw)
        real = getattr(acq, method)

        def paused(*args, **kw):
            if not entered.is_set():
                entered.set()
                gate.wait(30)
            return real(*args, **kw)

        setattr(acq, method, paused)
        return acq

    a.acquirer_factory = acquirer
    return entered, gate


def in_thread(fn, *args, **kw) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["leases"] = fn(*args, **kw)
        except errors.LeaseError as e:
            outcome["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, outcome


def test_two_local_holders_acquiring_one_lease_at_once_never_both_get_it_safety(world):
    """Our own host_id's ballot finds a lease we hold 'already ours': a second local holder
    whose ballot ran beside the first would be handed the same lease (found by the campaign)."""
    a = world.agent()
    world.join(a)
    entered, gate = gated_acquirer(a, "acquire")
    vm1, vm2 = world.holder(), world.holder()
    t1, first = in_thread(a.acquire, vm1.pid, [(world.res, False)])
    assert entered.wait(5)
    with pytest.raises(Busy, match=f"disk lease LS:RES is being acquired by {vm1.pid}"):
        a.acquire(vm2.pid, [(world.res, False)])
    gate.set()
    t1.join(10)
    assert "leases" in first
    holders = {x["pid"] for x in a.status()["leases"]}
    assert holders == {vm1.pid}
    with pytest.raises(errors.LeaseError, match="already held on this node by pid"):
        a.acquire(vm2.pid, [(world.res, False)])


def test_a_local_release_in_flight_never_frees_the_next_local_holders_lease_safety(world):
    """A release that read the leader before another local holder's ballot committed would
    write it back free over the new version: the new holder's lease would be free on disk."""
    a = world.agent()
    world.join(a)
    vm1, vm2 = world.holder(), world.holder()
    a.acquire(vm1.pid, [(world.res, False)])
    entered, gate = gated_acquirer(a, "_free_leader")  # after the release read the leader
    t1, released = in_thread(a.release, vm1.pid, None)
    assert entered.wait(5)
    t2, second = in_thread(a.acquire, vm2.pid, [(world.res, False)])
    time.sleep(1.0)
    assert not second, "a local acquisition ran beside a release of the same lease"
    gate.set()
    t1.join(10)
    t2.join(10)
    assert released.get("leases") == ["LS:RES"] and "leases" in second, (released, second)
    leader = leader_of(world.res.path, world.res.offset)
    assert leader.timestamp != 0 and leader.lver == second["leases"][0]["lver"]


# ---- a stop that keeps leases leaves only the lockspaces nothing holds leases in ----------------


def test_stop_releases_only_the_host_ids_nothing_holds_leases_under_safety(world):
    """SIGTERM (an upgrade, an uninstall, a drain): the host_id of a lockspace with a holder
    stays on disk for the next agent to adopt; an idle one is released, so peers read Free
    instead of a node that died."""
    a = world.agent()
    world.join(a)
    world.join(a, name="LS2")
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    assert a.leave_idle() == {"LS2": 1}
    assert leader_of(world.second_lockspace()).timestamp == 0  # released on disk
    assert world.record().timestamp != 0
    with pytest.raises(errors.LeaseError, match="stopping"):
        a.acquire(
            world.holder().pid, [(make_resource(world.dir, name="R2", filename="r2")[1], False)]
        )
    a.stop(clean=False)
    saved = state.load(a.cfg.run_dir, "node-a")
    assert [x.cfg.name for x in saved.lockspaces] == ["LS"]
    b = world.agent()  # the next agent adopts the holder in the lockspace that was kept
    wait_for(lambda: b.status()["leases"], 5, "the holder to be adopted")
    assert b.snapshot().lockspace("LS2") is None and vm.poll() is None


def test_stop_keeps_a_lockspace_with_an_acquisition_in_flight_safety(world):
    """An acquisition past its first write may still win its ballot: its lockspace must not be
    released under it (a lease held under a released host_id is free to every peer)."""
    a = world.agent()
    world.join(a)
    entered, gate = hold_ballots(a)
    vm = world.holder()
    outcome: dict = {}
    t = threading.Thread(
        target=lambda: outcome.update(leases=a.acquire(vm.pid, [(world.res, False)]))
    )
    t.start()
    assert entered.wait(5)
    assert a.leave_idle() == {}
    gate.set()
    t.join(10)
    assert outcome["leases"] and a.status()["leases"]
    assert world.record().timestamp != 0 and a.snapshot().lockspace("LS").state == "live"


def test_a_lockspace_is_kept_while_an_index_command_writes_under_its_host_id_safety(world):
    """A resource index command writes under the index's lease with our host_id: neither a
    removal (either API) nor a stop may release that host_id under it, or a peer that takes the
    host_id next could write the same lease at once."""
    a = world.agent()
    world.join(a)
    place = rindex.Place("LS", make_file(world.dir, "index", size=16 << 20), 0)
    a.rindex_format(place, None, 10)
    entered, gate = hold_ballots(a)
    t, outcome = in_thread(a.rindex_create, place, "R9", 0)
    assert entered.wait(5)
    with pytest.raises(Busy, match="a resource index command"):
        a.rem_lockspace("LS")
    assert a.leave_idle() == {}
    gate.set()
    t.join(10)
    assert outcome["leases"] > 0
    assert world.record().timestamp != 0 and a.snapshot().lockspace("LS").state == "live"


@pytest.mark.parametrize("how", ["release", "failed acquisition"])
def test_a_lockspace_is_kept_while_a_lease_of_it_is_being_released_on_disk_safety(world, how):
    """A release writes the lease with our host_id (a RELEASED dblock, then a read, check and
    write of the leader). Were the host_id released under those writes, a peer would take the
    lease at once (its owner's host_id free) and our leader write, landing after its ballot,
    would free the peer's lease for a third host. So a lease being released still counts
    among its lockspace's users, whether its holder releases it or an all-or-nothing
    acquisition gives back what it took before a later lease was refused."""
    a = world.agent()
    world.join(a)
    vm = world.holder()
    entered, gate = gated_acquirer(a, "release")
    if how == "release":
        a.acquire(vm.pid, [(world.res, False)])
        t, outcome = in_thread(a.release, vm.pid, None)
    else:  # the later lease is held by another process, in another lockspace
        world.join(a, name="LS2")
        res2 = make_resource(world.dir, "LS2", "R2", filename="r2")[1]
        a.acquire(world.holder().pid, [(res2, False)])
        t, outcome = in_thread(a.acquire, vm.pid, [(world.res, False), (res2, False)])
    assert entered.wait(5)
    with pytest.raises(Busy, match=f"in use by pid:{vm.pid}"):
        a.rem_lockspace("LS")
    assert "LS" not in a.leave_idle()
    gate.set()
    t.join(10)
    assert ("error" in outcome) == (how != "release")
    assert leader_of(world.res.path, world.res.offset).timestamp == 0  # released on disk
    assert world.record().timestamp != 0 and a.snapshot().lockspace("LS").state == "live"


def test_a_lockspace_an_outside_user_marked_used_is_kept_by_removal_and_stop_safety(world):
    """sanlock's SET_CONFIG USED: a cluster lock manager works under our host_id lease outside
    the agent. Releasing that host_id (the JSON API's rem_lockspace, a SIGTERM stop) would let
    a peer take it while the outside user still acts on it; only its UNUSED frees it."""
    a = world.agent()
    world.join(a)
    a.set_used_outside("LS", True)
    with pytest.raises(Busy, match=r"outside the agent.*set_config -s LS -u 0"):
        a.rem_lockspace("LS")
    assert a.leave_idle() == {}
    assert world.record().timestamp != 0 and a.snapshot().lockspace("LS").state == "live"
    a.set_used_outside("LS", False)
    a.rem_lockspace("LS")
    assert world.record().timestamp == 0
    with pytest.raises(errors.LeaseError, match="not joined"):
        a.set_used_outside("LS", True)


# ---- node fencing: "Dead on disk" must mean "reset" ---------------------------------------------


def record_delta_writes(monkeypatch, fail: bool = False) -> list[tuple[float, int]]:
    """(time, timestamp) of every delta-lease write; ``fail``: each write lands, then raises
    (a write whose completion was lost: it may be on disk, and the agent cannot know)."""
    writes: list[tuple[float, int]] = []
    real = delta.DeltaLease._write

    def write(self, leader, timeout):
        writes.append((boottime(), leader.timestamp))
        real(self, leader, timeout)
        if fail:
            raise errors.LeaseError(detail="injected: the write's completion was lost")

    monkeypatch.setattr(delta.DeltaLease, "_write", write)
    return writes


def test_node_fencing_arms_before_the_join_writes_and_stays_armed_with_nothing_held_safety(
    world, monkeypatch
):
    writes = record_delta_writes(monkeypatch)
    a = world.agent()
    world.join(a, fence=True)
    assert a.watchdog.when("arm")[0] < writes[0][0]
    time.sleep(0.6)  # main-loop passes with nothing held: a plain lockspace would disarm here
    assert a.watchdog.armed and "disarm" not in a.watchdog.ops()
    assert a.snapshot().lockspace("LS").fence_node
    assert "leave the idle node-fencing" in a.status()["watchdog"]["on_sigterm"]


def test_a_failed_node_fencing_lockspace_resets_the_node_with_nothing_held_safety(world):
    """Peers read the host Dead at T + 8N + W: the device must fire before, and nothing may
    feed it again, not even a new join."""
    a = world.agent()
    world.join(a, fence=True)
    ls = a.joined_lockspace("LS")
    assert ls is not None
    wait_for(
        lambda: steal_host_id(world) or a.snapshot().lockspace("LS") is None,
        8 * N + 4,
        "the lockspace to fail and be left",
        every=0.5,
    )
    deadline = ls.deadline()
    assert a.status()["watchdog"]["condemned"].startswith("lockspace LS")
    with pytest.raises(errors.LeaseError, match="condemned"):
        world.join(a, fence=True)
    time.sleep(0.6)
    assert not [at for at in a.watchdog.when("keepalive") if at > deadline - 1]
    assert "disarm" not in a.watchdog.ops()
    assert a.watchdog.fires_at is not None and a.watchdog.fires_at < deadline + 10  # + W
    a.stop(clean=False)
    assert "disarm" not in a.watchdog.ops()


def test_a_node_asked_to_fence_itself_is_never_fed_again_and_keeps_renewing_safety(world):
    """A NodeHealthCheck remediation's selfFence: the device fires W after the last keepalive,
    while the delta lease keeps being renewed until the reset (peers count from the last
    renewal, so they read it Dead only after the reset)."""
    a = world.agent()
    world.join(a, fence=True)
    a.fence_self("remediation vmlease/n1 asked")
    asked = boottime()  # the agent's clock
    renewed = world.record().timestamp
    time.sleep(2 * N + 0.6)
    assert world.record().timestamp > renewed  # still renewing
    assert a.status()["watchdog"]["condemned"] == "remediation vmlease/n1 asked"
    assert not [at for at in a.watchdog.when("keepalive") if at > asked + 0.3]
    assert a.watchdog.fires_at is not None and "disarm" not in a.watchdog.ops()
    with pytest.raises(errors.LeaseError, match="condemned"):
        world.join(a, name="LS2", fence=True)


def test_leaving_a_node_fencing_lockspace_cleanly_disarms_without_a_reset(world):
    a = world.agent()
    world.join(a, fence=True)
    a.rem_lockspace("LS")
    assert world.record().timestamp == 0  # peers read Free, never Dead
    wait_for(lambda: "disarm" in a.watchdog.ops(), 5, "the watchdog to be disarmed")
    assert not a.status()["watchdog"]["condemned"]


def test_a_node_fencing_release_that_fails_keeps_the_node_fenced_safety(world, monkeypatch):
    """The record stays on disk and will read Dead: the node must be reset by then."""
    a = world.agent()
    world.join(a, fence=True)
    ls = a.joined_lockspace("LS")
    assert ls is not None
    monkeypatch.setattr(
        ls.lease, "release", lambda: (_ for _ in ()).throw(errors.LeaseError(detail="EIO"))
    )
    a.rem_lockspace("LS")
    assert world.record().timestamp != 0
    wait_for(lambda: a.status()["watchdog"]["condemned"], 8 * N + 3, "the node to be condemned")
    assert not [at for at in a.watchdog.when("keepalive") if at > ls.deadline() - 1]
    assert "disarm" not in a.watchdog.ops()
    a.stop(clean=True)  # a clean stop cannot undo it either
    assert "disarm" not in a.watchdog.ops() and "abandon" in a.watchdog.ops()


def test_a_node_fencing_join_whose_claim_may_have_landed_is_fenced_safety(world, monkeypatch):
    """The claim's write failed after landing: peers saw us alive, then silent."""
    writes = record_delta_writes(monkeypatch, fail=True)
    a = world.agent()
    with pytest.raises(errors.LeaseError, match="joining lockspace LS failed"):
        world.join(a, fence=True)
    claimed = writes[0][1]
    assert world.record().timestamp == claimed  # it did land
    wait_for(lambda: a.status()["watchdog"]["condemned"], 8 * N + 3, "the node to be condemned")
    assert not [at for at in a.watchdog.when("keepalive") if at > claimed + 8 * N - 1]
    assert "disarm" not in a.watchdog.ops()


def test_a_plain_lockspace_failing_with_nothing_held_resets_nobody(world):
    """The contrast: without node fencing the watchdog protects holders only."""
    a = world.agent()
    world.join(a)
    wait_for(
        lambda: steal_host_id(world) or a.snapshot().lockspace("LS") is None,
        8 * N + 4,
        "the lockspace to fail and be left",
        every=0.5,
    )
    assert not a.watchdog.ops() and not a.status()["watchdog"]["condemned"]


# ---- convert --------------------------------------------------------------------------------


def test_a_local_shared_acquire_during_a_convert_to_exclusive_is_refused_safety(world):
    """The convert's ballot checks the local sharers first: one joining while the ballot runs
    would share a lease about to be held exclusively, so the lease is reserved meanwhile."""
    a = world.agent()
    world.join(a)
    vm1, vm2 = world.holder(), world.holder()
    a.acquire(vm1.pid, [(world.res, True)])
    entered, gate = gated_acquirer(a, "to_exclusive")
    t, converted = in_thread(a.convert, vm1.pid, world.res.label, shared=False)
    assert entered.wait(5)
    with pytest.raises(Busy, match=f"disk lease LS:RES is being converted by pid {vm1.pid}"):
        a.acquire(vm2.pid, [(world.res, True)])
    gate.set()
    t.join(10)
    assert "leases" in converted
    with pytest.raises(errors.LeaseError, match="already held on this node by pid"):
        a.acquire(vm2.pid, [(world.res, True)])
    [held] = a.status()["leases"]
    assert (held["pid"], held["shared"]) == (vm1.pid, False)
    assert leader_of(world.res.path).timestamp != 0


@pytest.mark.parametrize("gone", ["first", "second"])
def test_a_shared_lease_stays_marked_when_one_sharer_exited_across_a_restart_safety(world, gone):
    """Two local processes share a lease; one exits while the agent is down. The restarted
    agent releases the exited one's share, but our host's SHARED mark is one for both: it
    must stay while the other still runs, whichever of them the saved state lists first, or
    another host takes the lease exclusively beside it."""
    a = world.agent()
    world.join(a)
    sharers = [world.holder(), world.holder()]
    for vm in sharers:
        a.acquire(vm.pid, [(world.res, True)])
    a.stop(clean=False)
    dead = sharers.pop(0 if gone == "first" else 1)
    dead.kill()
    dead.wait()
    b = world.agent()
    [held] = b.status()["leases"]
    assert held["pid"] == sharers[0].pid
    peer = world.agent("node-b", machine_id="machine-2")
    world.join(peer, host_id=2)
    with pytest.raises(errors.LeaseError, match=r"held shared by host\(s\) 1"):
        peer.acquire(world.holder().pid, [(world.res, False)], wait=False)
    b.release(sharers[0].pid, None)
    peer.acquire(world.holder().pid, [(world.res, False)], wait=False)


def test_a_converted_lease_keeps_its_mode_across_a_restart(world):
    a = world.agent()
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    a.convert(vm.pid, world.res.label, shared=True)
    a.stop(clean=False)
    b = world.agent()
    [held] = b.status()["leases"]
    assert held["shared"] and held["pid"] == vm.pid
    b.convert(vm.pid, world.res.label, shared=False)  # the adopted token converts back
    assert not b.status()["leases"][0]["shared"]


def test_a_set_lvb_not_yet_written_survives_a_restart(world):
    a = world.agent()
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)], lvb=True)
    a.set_lvb(world.res.label, b"kept")
    a.stop(clean=False)
    b = world.agent()
    assert b.get_lvb(world.res.label, 4) == b"kept"
    b.release(vm.pid, None)
    assert read_bytes(world.res.path, ondisk.LVB_SECTOR * 512, 4) == b"kept"


def test_a_refused_acquire_is_an_event_naming_the_holder(world):
    """A sanlock client (libvirt) shows only the code (-243, -17): the agent's events keep the
    reason, which names who holds the lease."""
    a = world.agent()
    world.join(a)
    vm1, vm2 = world.holder(), world.holder()
    a.acquire(vm1.pid, [(world.res, False)], owner="vm1")
    with pytest.raises(errors.LeaseError):
        a.acquire(vm2.pid, [(world.res, False)], owner="vm2")
    [refused] = [e for e in a.recent_events() if e["event"] == "refused"]
    assert refused["lease"] == "LS:RES" and refused["owner"] == "vm2"
    assert f"by pid {vm1.pid} (vm1)" in refused["reason"] and refused["code"] < 0


def test_an_exited_holder_whose_lifeline_was_open_stays_held_across_a_restart_safety(world):
    """Its connection closed with the old agent, but the processes that shared it may still
    write and no pid names them: the new agent keeps the lease (by key) instead of releasing
    it, and a lockspace of theirs it cannot resume keeps it from starting."""
    import json

    a = world.agent()
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    a.set_lifeline(vm.pid, lambda: True)
    vm.kill()
    vm.wait()
    wait_for(lambda: a.snapshot().holders[0].holder.pid == vm.pid and _exited(a), 5, "exit")
    assert leader_of(world.res.path).timestamp != 0  # not released on disk
    a.stop(clean=False)
    b = world.agent()
    [held] = b.status()["leases"]
    assert held["holder"] == f"exited:{vm.pid}"
    assert leader_of(world.res.path).timestamp != 0
    b.stop(clean=False)
    c = world.agent()  # adopted again: still held
    assert [x["holder"] for x in c.status()["leases"]] == [f"exited:{vm.pid}"]
    c.stop(clean=False)
    doc_path = os.path.join(c.cfg.run_dir, state.STATE_FILE)
    with open(doc_path) as f:
        doc = json.load(f)
    assert doc["clients"][0]["exited"] and doc["clients"][0]["key"] == f"exited:{vm.pid}"
    doc["lockspaces"] = []  # not resumable
    with open(doc_path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(ExitedHolderUnadoptable, match="may still write"):
        world.agent()


def _exited(a: Agent) -> bool:
    return any(c.exited for c in a._registry.clients.values())


def test_a_host_event_sent_after_the_state_was_saved_does_not_stop_the_adoption_safety(world):
    """The event rides in our own record (sanlock's set_event), which the saved state may
    predate (the agent died between a renewal and its save): a restart adopts the record all
    the same, holder included, and still refuses a record someone else changed (the other
    tests here)."""
    a = world.agent()
    world.join(a)
    vm = world.holder()
    a.acquire(vm.pid, [(world.res, False)])
    saved = os.path.join(a.cfg.run_dir, state.STATE_FILE)
    shutil.copy(saved, saved + ".before")
    a.set_event("LS", HostEvent(2, 0, 7, 9), SETEV_CUR_GENERATION)
    wait_for(lambda: world.record().write_generation == 7, 2 * N + 3, "a renewal with event 7")
    a.stop(clean=False)
    os.replace(saved + ".before", saved)
    b = world.agent()
    assert b.status()["leases"] and b.snapshot().lockspace("LS").state == "live"


def test_a_removal_signals_through_the_pidfd_with_saved_restrictions_never_an_exited_pid_safety(
    world,
):
    """sanlock's rem_lockspace and forced shutdown kill the holders (``_kill_holders``): with
    the restrictions the agent keeps per holder (an adopted one too, which has no connection
    to the API), and never by the number of a pid that exited while its lifeline lives on:
    that number may now be another process's."""
    a = world.agent()
    world.join(a)
    vm1 = world.holder()
    a.acquire(vm1.pid, [(world.res, True)])
    a.set_restrictions(vm1.pid, fencing.NO_SIGKILL)
    a.stop(clean=False)
    b = world.agent()  # vm1 adopted: its restriction comes from the saved state
    api = SanlockApi(b, lambda clean: None, LogRing())
    api._kill_holders(lambda lockspace: lockspace == "LS", "lockspace LS is removed")
    assert vm1.wait(timeout=5) == -signal.SIGTERM
    vm2 = world.holder()
    b.acquire(vm2.pid, [(world.res, False)])
    b.set_lifeline(vm2.pid, lambda: True)
    vm2.kill()
    vm2.wait()
    wait_for(lambda: _exited(b), 5, "vm2's exit")
    assert b.kill_holder(f"pid:{vm2.pid}", signal.SIGKILL) is None
