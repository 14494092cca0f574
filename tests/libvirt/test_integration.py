"""The vmlease hook and agent against a real libvirtd and QEMU (TCG), two simulated hosts.

Agent A (host_id 1) serves this machine's libvirtd through the hook installed by
``vmlease libvirt install-hook``; agents B (host_id 2, 3, ...) share the lease directory and stand
for other nodes. Timings in ``vmlease_lab`` (N = 1 s, W = 6 s: a dead host's leases are free
8N + W = 14 s after its last renewal).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from lab import LIBVIRTD, URI, Lab, LeaseSpec, TinyDomain, _wait_gone, running_pid
from stallfs import StallFs
from stallfs_fixture import stallfs_skip_reason
from vmlease_agent.engine import delta, ondisk, paxos
from vmlease_agent.engine.directio import Storage
from vmlease_agent.sim.node import SimNode
from vmlease_lab import LS, SAFE, VMLEASE, N, VmleaseLab, resource_of, wait_for

pytestmark = pytest.mark.libvirt


#: Test sessions on one machine share libvirtd and /etc/libvirt/hooks/qemu.d/50-vmlease: this
#: module holds a machine-wide lock so that two sessions' runs of it take turns.
MACHINE_LOCK = "/run/lock/vmlease-libvirt-integration.lock"
LOCK_WAIT = 900  # seconds: a whole run of this module takes about 90 s


@pytest.fixture(scope="module")
def vml(libvirt_lab: Lab) -> Iterator[VmleaseLab]:
    """The lease directory and lockspace, agent A with the libvirt watcher, the hook."""
    os.makedirs(os.path.dirname(MACHINE_LOCK), exist_ok=True)
    with open(MACHINE_LOCK, "w") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {MACHINE_LOCK} for {LOCK_WAIT}s")
                time.sleep(1)
        workdir = libvirt_lab.workdir / "vmlease"
        workdir.mkdir()
        v = VmleaseLab(libvirt_lab, workdir)
        try:
            v.setup()
            v.start_a()
            v.install_hook()
            yield v
        finally:
            v.stop()


@pytest.fixture
def a(vml: VmleaseLab) -> SimNode:
    return vml.nodes[0]


@pytest.fixture
def other_hosts(vml: VmleaseLab) -> Iterator[Callable[[], SimNode]]:
    """Factory of other simulated hosts (fresh host_ids), stopped after the test."""
    made: list[SimNode] = []

    def make() -> SimNode:
        node = vml.other_host()
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
        vml.nodes.remove(node)


def key_of(domain: TinyDomain) -> str:
    return f"libvirt:{domain.uuid}"


def read_leader(path: Path, resource: str) -> ondisk.Leader:
    with Storage(str(path), writable=False) as st:
        return paxos.read_leader(st, paxos.Resource(LS, resource, str(path), 0), 5)


def virsh_start(name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["virsh", "-c", URI, "start", name], capture_output=True, text=True, timeout=60
    )


def hook_line(stderr: str) -> str:
    """What the hook printed, as libvirt quotes it after the hook's exit status."""
    m = re.search(r"unexpected exit status 1: (.*)", stderr, re.S)
    assert m, stderr
    return m.group(1).strip()


def hook_log(vml: VmleaseLab, domain: TinyDomain) -> list[str]:
    try:
        lines = vml.hook_log.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [x.split("] ", 1)[1] for x in lines if f"] {domain.name} " in x]


def last_renewal(vml: VmleaseLab, host_id: int) -> int:
    """A host's last delta-lease timestamp on disk (its CLOCK_MONOTONIC seconds, as ours)."""
    with Storage(str(vml.lockspace_path), writable=False) as st:
        loc = delta.Location(LS, str(vml.lockspace_path), 0)
        sizes, _ = delta.read_sizes(st, loc, 5)
        return delta.read_host(st, loc, sizes, host_id, 5).timestamp


# ---- leases follow the domain -------------------------------------------------------------------


def test_start_takes_the_disk_lease_libvirt_would_name_and_stop_frees_it_every_cycle(
    vml: VmleaseLab, a: SimNode, tiny_domain: TinyDomain
):
    image = tiny_domain.image("vda")
    # the same name libvirt's sanlock driver gives this disk (MD5 of the <source file=...>)
    xml_path = re.search(r"<source file='([^']+)'", tiny_domain.domain().XMLDesc(0)).group(1)
    assert xml_path == str(image)
    resource = resource_of(xml_path)
    for cycle in range(1, 4):
        tiny_domain.start()
        pid = tiny_domain.qemu_pid()
        held = vml.leases_of(a, key_of(tiny_domain))
        assert [(x["lease"], x["pid"], x["shared"], x["path"]) for x in held] == [
            (f"{LS}:{resource}", pid, False, str(vml.lease_path(resource)))
        ]
        assert held[0]["owner"] == tiny_domain.name and held[0]["lver"] == cycle
        leader = read_leader(vml.lease_path(resource), resource)
        assert (leader.space_name, leader.resource_name, leader.owner_id) == (LS, resource, 1)
        tiny_domain.destroy()
        wait_for(lambda: not vml.leases_of(a), 5, "the lease to be released")
        assert read_leader(vml.lease_path(resource), resource).timestamp == 0  # free on disk
    log = hook_log(vml, tiny_domain)
    assert not [x for x in log if "FAILED" in x], log
    assert sum("started: ok" in x and "bound to pid" in x for x in log) == 3


def test_qemu_killed_with_sigkill_releases_its_leases_at_once(
    vml: VmleaseLab, a: SimNode, tiny_domain: TinyDomain
):
    resource = resource_of(tiny_domain.image("vda"))
    tiny_domain.start()
    killed_at = time.monotonic()
    os.kill(tiny_domain.qemu_pid(), signal.SIGKILL)
    wait_for(lambda: not vml.leases_of(a), 5, "the lease to be released")
    released = [e for e in vml.events(a, "released") if e["holder"] == key_of(tiny_domain)][-1]
    assert released["reason"] == "holder exited"
    assert released["at"] - killed_at < 1.0
    assert read_leader(vml.lease_path(resource), resource).timestamp == 0
    dom = tiny_domain.domain()
    wait_for(lambda: not dom.isActive(), 10, "libvirt to notice QEMU's death")
    assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]


def test_lease_element_and_disk_modes_exclusive_shared_readonly(
    vml: VmleaseLab, a: SimNode, new_domain: Callable[..., TinyDomain]
):
    lease_file = vml.leases / "vm-key.lease"
    with lease_file.open("wb") as f:
        f.truncate(1 << 20)
    subprocess.run(
        [VMLEASE, "direct", "init", "-r", f"{LS}:vm-key:{lease_file}:0"],
        check=True,
        capture_output=True,
    )
    domain = new_domain(
        readonly_disk=True,
        shareable_disk=True,
        lease=LeaseSpec(LS, "vm-key", lease_file, 0),
    )
    domain.start()
    held = {x["lease"]: x["shared"] for x in vml.leases_of(a, key_of(domain))}
    assert held == {
        f"{LS}:{resource_of(domain.image('vda'))}": False,  # read/write
        f"{LS}:{resource_of(domain.image('vdb'))}": True,  # <readonly/>
        f"{LS}:{resource_of(domain.image('vdc'))}": True,  # <shareable/>
        f"{LS}:vm-key": False,  # the <lease> element, as written
    }
    assert read_leader(lease_file, "vm-key").owner_id == 1
    domain.destroy()
    wait_for(lambda: not vml.leases_of(a), 5, "the leases to be released")


# ---- another host holds the disk ----------------------------------------------------------------


def test_start_refused_while_another_host_holds_the_disk_names_it_then_succeeds_after_release(
    vml: VmleaseLab,
    a: SimNode,
    new_domain: Callable[..., TinyDomain],
    other_hosts: Callable[[], SimNode],
):
    domain = new_domain(readonly_disk=True)  # vdb: a shared lease A may take before failing
    b = other_hosts()
    resource = resource_of(domain.image("vda"))
    holder = vml.hold(b, resource)
    b_before = read_leader(vml.lease_path(resource), resource)
    assert b_before.owner_id == vml.host_id(b)

    started = time.monotonic()
    result = virsh_start(domain.name)
    refused_in = time.monotonic() - started
    assert result.returncode == 1
    assert f"error: Failed to start domain '{domain.name}'" in result.stderr
    line = hook_line(result.stderr)
    assert "\n" not in line, line
    assert line.startswith(f"vmlease: domain {domain.name!r}, disk vda ({domain.image('vda')}): ")
    assert f"host {vml.host_id(b)}" in line and b.name in line, line
    assert re.search(r"renewed [\d.]+s ago", line), line
    assert re.search(r"\[error -24[37]\]", line), line  # IDLIVE, or not yet known dead
    assert refused_in < 5
    print(f"\nrefused in {refused_in:.2f}s: {result.stderr.strip()}")

    # the refused prepare changed nothing that is not its own
    assert read_leader(vml.lease_path(resource), resource) == b_before
    assert b.client.call("inquire", pid=holder.pid)[0]["lease"] == f"{LS}:{resource}"
    assert vml.leases_of(a) == []  # its shared vdb lease was given back too
    assert a.client.call("inquire", key=key_of(domain)) == []
    assert [x.split(":")[0] for x in hook_log(vml, domain)] == [
        f"{domain.name} prepare",
        f"{domain.name} stopped",
        f"{domain.name} release",
    ]
    assert "nothing held" in hook_log(vml, domain)[-1]

    holder.kill()
    holder.wait()
    wait_for(lambda: not vml.leases_of(b), 5, f"{b.name} to release")
    assert virsh_start(domain.name).returncode == 0
    assert len(vml.leases_of(a, key_of(domain))) == 2


def test_start_succeeds_once_the_dead_holders_host_is_safely_gone(
    vml: VmleaseLab,
    a: SimNode,
    tiny_domain: TinyDomain,
    other_hosts: Callable[[], SimNode],
):
    b = other_hosts()
    resource = resource_of(tiny_domain.image("vda"))
    vml.hold(b, resource)
    time.sleep(2 * N + 0.5)  # A has seen B renew
    b.kill()  # power cut: B's agent and its holder die, the lease stays on disk
    refusals = []
    while True:
        result = virsh_start(tiny_domain.name)
        if result.returncode == 0:
            break
        refusals.append(hook_line(result.stderr))
        assert len(refusals) < 4 * SAFE, refusals[-1]
        time.sleep(0.5)
    started_at = time.monotonic()
    t_b = last_renewal(vml, vml.host_id(b))
    # never before 8N + W after B's last renewal: B's watchdog (or its death) came first
    assert started_at - t_b >= SAFE - 1, (started_at - t_b, refusals)
    assert started_at - t_b < SAFE + 8, (started_at - t_b, refusals)
    assert refusals and all(re.search(r"\[error -24[37]\]", x) for x in refusals), refusals
    assert all(b.name in x for x in refusals), refusals
    assert vml.leases_of(a, key_of(tiny_domain))[0]["lease"] == f"{LS}:{resource}"


def test_a_refused_start_leaves_the_shared_lease_of_a_running_domain_alone(
    vml: VmleaseLab,
    a: SimNode,
    new_domain: Callable[..., TinyDomain],
    other_hosts: Callable[[], SimNode],
):
    """Y shares X's read-only image (both hold its lease shared on this host) and needs a disk
    held elsewhere: Y's refused prepare takes the shared lease first and gives it back, and X
    must keep it, on this node and on disk."""
    x = new_domain(readonly_disk=True)
    shared = resource_of(x.image("vdb"))
    for _ in range(20):  # Y's own disk must sort after the shared one: it is acquired last
        y = new_domain(readonly_disk=True)
        if resource_of(y.image("vda")) > shared:
            break
    y.conn.defineXML(y.xml().replace(str(y.image("vdb")), str(x.image("vdb"))))
    x.start()
    b = other_hosts()
    vml.hold(b, resource_of(y.image("vda")))

    result = virsh_start(y.name)
    assert result.returncode == 1
    assert "disk vda" in hook_line(result.stderr)
    held = {e["lease"]: e["shared"] for e in vml.leases_of(a, key_of(x))}
    assert held[f"{LS}:{shared}"] is True
    assert vml.leases_of(a, key_of(y)) == []
    # on disk: host 1 still holds it shared, so another host cannot take it exclusively
    sleeper = subprocess.Popen(["sleep", "60"], process_group=b.pgid)
    try:
        with pytest.raises(Exception, match=r"held shared by host\(s\) 1"):
            b.client.call("acquire", pid=sleeper.pid, resources=[vml.spec(shared)], wait=False)
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- restarts -------------------------------------------------------------------------------


def _restart_libvirtd(libvirt_lab: Lab) -> None:
    """Stop libvirtd (QEMU keeps running) and start it again as the lab does (its log in the
    lab's work dir, stopped by the lab at the end)."""
    pid = running_pid(LIBVIRTD)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid, 30)
    libvirt_lab.started["libvirtd"] = libvirt_lab._spawn(LIBVIRTD)
    libvirt_lab.wait_ready(60)


def test_libvirtd_restart_with_a_domain_running_keeps_it_protected(
    vml: VmleaseLab, a: SimNode, libvirt_lab: Lab, other_hosts: Callable[[], SimNode]
):
    if "libvirtd" not in libvirt_lab.started:
        pytest.skip("libvirtd was not started by this session: a restart would disturb its owner")
    domain = TinyDomain(libvirt_lab.connect(), "vmlt-restart", libvirt_lab.workdir / "restart")
    domain.define()
    try:
        domain.start()
        pid = domain.qemu_pid()
        reconciled = len(vml.events(a, "libvirt_reconciled"))
        _restart_libvirtd(libvirt_lab)
        assert domain.qemu_pid() == pid
        wait_for(lambda: "reconnect: ok" in "".join(hook_log(vml, domain)), 10, "reconnect")
        wait_for(
            lambda: len(vml.events(a, "libvirt_reconciled")) > reconciled,
            30,
            "the agent's watcher to reconnect and reconcile",
        )
        assert vml.events(a, "libvirt_disconnected")
        assert [x["pid"] for x in vml.leases_of(a, key_of(domain))] == [pid]
        assert not [e for e in vml.events(a, "libvirt_unprotected") if e["uuid"] == domain.uuid]
        # and another host still cannot take it
        b = other_hosts()
        resource = resource_of(domain.image("vda"))
        proc = b.spawn_holder([vml.spec(resource)], ["true"])
        assert proc.wait(30) != 0
        assert "held by host 1" in proc.stderr.read()
    finally:
        domain.conn = libvirt_lab.connect()
        domain.undefine()


def test_agent_restart_with_a_domain_running_adopts_it(
    vml: VmleaseLab, a: SimNode, tiny_domain: TinyDomain
):
    tiny_domain.start()
    pid = tiny_domain.qemu_pid()
    a.signal_agent(signal.SIGTERM)
    try:
        a.agent.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("agent A did not stop on SIGTERM: " + Path(a.log_file).read_text()[-3000:])
    vml.start_a(node=a)  # same run dir: adopts its saved state, reconciles with libvirt
    assert [x["pid"] for x in vml.leases_of(a, key_of(tiny_domain))] == [pid]
    assert not [e for e in vml.events(a, "libvirt_unprotected") if e["uuid"] == tiny_domain.uuid]
    os.kill(pid, signal.SIGKILL)  # still tied to QEMU after the restart
    wait_for(lambda: not vml.leases_of(a), 5, "the lease to be released")
    wait_for(lambda: not tiny_domain.domain().isActive(), 10, "libvirt to notice QEMU's death")


def test_a_running_domain_without_its_lease_is_reported_loudly(
    vml: VmleaseLab, a: SimNode, tiny_domain: TinyDomain
):
    tiny_domain.start()
    a.client.call("release", key=key_of(tiny_domain))  # as if its lease had been lost
    dom = tiny_domain.domain()
    dom.suspend()
    dom.resume()  # RESUMED: the watcher checks the domain
    event = wait_for(
        lambda: [e for e in vml.events(a, "libvirt_unprotected") if e["uuid"] == tiny_domain.uuid],
        10,
        "the unprotected domain to be reported",
    )[-1]
    assert event["domain"] == tiny_domain.name and event["state"] == "running"
    assert event["missing"] == [
        f"disk vda ({tiny_domain.image('vda')}) ({LS}:{resource_of(tiny_domain.image('vda'))})"
    ]
    assert "RUNS WITHOUT its leases" in Path(a.log_file).read_text()


# ---- bad input and an agent that does not answer --------------------------------------------


def _silent_agent(directory: Path) -> socket.socket:
    """A unix socket that accepts connections and never answers."""
    directory.mkdir(exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(directory / "agent.sock"))
    sock.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(sock.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return sock


def test_start_refused_with_a_reason_when_the_agent_does_not_answer_in_time(
    vml: VmleaseLab, tiny_domain: TinyDomain
):
    silent = vml.workdir / "silent"
    sock = _silent_agent(silent)
    try:
        with vml.config_changed(run_dir=str(silent), hook_timeout=3.0):
            started = time.monotonic()
            result = virsh_start(tiny_domain.name)
            took = time.monotonic() - started
        assert result.returncode == 1
        line = hook_line(result.stderr)
        assert "the vmlease agent did not answer" in line and "no reply within" in line, line
        assert "the start is refused" in line and str(vml.config) in line, line
        # prepare refused at its deadline; stopped and release (which libvirt calls next) try
        # to release through the silent agent too, each within its own deadline
        prepare = next(x for x in hook_log(vml, tiny_domain) if " prepare: " in x)
        assert int(re.search(r"FAILED in (\d+) ms", prepare).group(1)) < 3000 + 500
        assert took < 3 * 3 + 3
        with vml.config_changed(run_dir=str(vml.workdir / "nobody")):
            line = hook_line(virsh_start(tiny_domain.name).stderr)
        assert "did not answer (cannot reach the vmlease agent" in line, line
    finally:
        sock.close()
    assert not tiny_domain.domain().isActive()


def test_hook_deadline_refuses_a_start_stuck_on_a_hung_disk_path(
    vml: VmleaseLab, tiny_domain: TinyDomain
):
    """A disk path whose file system stopped answering (a dead NFS server): canonicalising it
    blocks in the kernel; the hook refuses at its deadline and does not keep libvirtd waiting.
    Called as libvirt calls it (libvirt itself would probe such a disk before the hook)."""
    reason = stallfs_skip_reason()
    if reason:
        pytest.skip(reason)
    mnt = tempfile.mkdtemp(prefix="vmlease-stallfs-")
    fs = StallFs(mnt, 1 << 20)
    try:
        xml = tiny_domain.xml().replace(str(tiny_domain.image("vda")), fs.path)
        fs.freeze()
        with vml.config_changed(hook_timeout=2.0):
            started = time.monotonic()
            result = subprocess.run(
                [str(vml.hook), tiny_domain.name, "prepare", "begin", "-"],
                input=xml,
                capture_output=True,
                text=True,
                env={"LC_ALL": "C", "PATH": os.environ["PATH"]},
                timeout=30,
            )
            took = time.monotonic() - started
        assert result.returncode == 1
        assert "did not finish prepare within 2s" in result.stderr, result.stderr
        assert "canonicalising its disk paths" in result.stderr, result.stderr
        assert took < 2 + 1.5
    finally:
        fs.resume()
        fs.close()
        shutil.rmtree(mnt, ignore_errors=True)


# ---- fencing through libvirt ------------------------------------------------------------------


def test_fencing_destroys_the_domain_through_libvirt_before_its_lease_can_be_taken(
    vml: VmleaseLab, libvirt_lab: Lab, tiny_domain: TinyDomain, other_hosts
):
    """Node A2's path to the lockspace stalls in the kernel while B's works: at A2's deadline
    (8N after its last renewal) its fencing command destroys the domain through libvirt, and
    QEMU is gone before B may take the disk lease (8N + W)."""
    reason = stallfs_skip_reason()
    if reason:
        pytest.skip(reason)
    mnt = tempfile.mkdtemp(prefix="vmlease-stallfs-")
    fs = StallFs(mnt, backing=str(vml.lockspace_path))
    a2 = None
    try:
        a2 = vml.start_node("node-a2", 90, ls_path=fs.path)
        b = other_hosts()
        with vml.config_changed(run_dir=a2.run_dir):
            tiny_domain.start()
            assert vml.leases_of(a2, key_of(tiny_domain))[0]["pid"] == tiny_domain.qemu_pid()
            time.sleep(2 * N + 0.5)  # B has seen A2 renew
            fs.stall()
            resource = resource_of(tiny_domain.image("vda"))
            taker = None
            while taker is None:
                proc = b.spawn_holder([vml.spec(resource)], ["sleep", "600"], owner="vm1")
                while proc.poll() is None and not b.client.call("inquire", pid=proc.pid):
                    time.sleep(0.05)
                if proc.poll() is None:
                    taker = proc
                else:
                    time.sleep(0.5)
            b_took = [e for e in vml.events(b, "acquired") if e["lease"] == f"{LS}:{resource}"][-1]
        events = vml.events(a2)
        fence = [e for e in events if e["event"] == "fence"]
        assert fence and fence[0]["action"] == "command", events
        gone = [e for e in events if e["event"] == "released" and e.get("reason")]
        assert gone, events
        assert gone[0]["at"] < b_took["at"], "QEMU still ran when B took the lease"
        state, why = tiny_domain.domain().state()
        assert (state, why) == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED)
        t_a2 = last_renewal(vml, 90)
        assert b_took["at"] - t_a2 >= SAFE - 1
        assert gone[0]["at"] - t_a2 < 8 * N + 4  # fencing, not the SIGKILL at D + G or a reset
        assert a2.watchdog_events() == []
        print(
            f"\nA2's last renewal +{fence[0]['at'] - t_a2:.1f}s fence (libvirt destroy), "
            f"+{gone[0]['at'] - t_a2:.1f}s QEMU gone, +{b_took['at'] - t_a2:.1f}s B took the lease"
        )
        taker.kill()
    finally:
        fs.resume()
        if a2 is not None:
            a2.stop()
            vml.nodes.remove(a2)
        fs.close()
        shutil.rmtree(mnt, ignore_errors=True)


def test_pause_policy_pauses_through_libvirt_and_hands_the_leases_back(
    vml: VmleaseLab, a: SimNode, tiny_domain: TinyDomain
):
    """<on_lockfailure>pause</on_lockfailure>: the fencing command the hook set pauses the domain
    through libvirt and gives its leases back (a paused guest holds none, as with libvirt's lock
    driver), so the agent does not SIGKILL it; resuming it is reported as unprotected."""
    xml = tiny_domain.xml().replace("<devices>", "<on_lockfailure>pause</on_lockfailure><devices>")
    tiny_domain.conn.defineXML(xml)
    tiny_domain.start()
    pid = tiny_domain.qemu_pid()
    saved = json.loads((Path(a.run_dir) / "state.json").read_text())
    command = next(c for c in saved["clients"] if c["key"] == key_of(tiny_domain))["kill_command"]
    assert command[command.index("--policy") + 1] == "pause"
    subprocess.run([*command, str(pid)], check=True, timeout=60)  # what the agent runs at D
    dom = tiny_domain.domain()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert vml.leases_of(a, key_of(tiny_domain)) == []
    assert os.path.exists(f"/proc/{pid}")  # paused, not killed
    dom.resume()
    event = wait_for(
        lambda: [e for e in vml.events(a, "libvirt_unprotected") if e["uuid"] == tiny_domain.uuid],
        10,
        "the resumed domain to be reported",
    )[-1]
    assert event["state"] == "running"
