"""libvirt's own lock driver (``lock_manager = "sanlock"``) across simulated hosts, against the
reference lock daemon, the real sanlock 3.8, and against ``vmlease-agent --sanlock-api`` in its
place (one per host, see hosts.py): every test runs once with each (the ``lock_daemon``
fixture; ``VMLEASE_HOSTS_LOCK_DAEMON=sanlock|vmlease|module:callable`` runs one only), and
``test_mixed_hosts_*`` puts the two side by side under one libvirt lockspace.

These tests define what a drop-in lock daemon must do under an unchanged libvirt 9.0.

Observed with the real sanlock (and asserted below): the disk lease is
``__LIBVIRT__DISKS__:<md5(image path)>`` held by the QEMU pid from CPU resume on; a start on a
second host fails at resume with ``resource busy: Failed to acquire lock: Lease is held by another
host`` (sanlock -243, VIR_ERR_RESOURCE_BUSY from VIR_FROM_LOCKING); live migration hands the
lease to the destination QEMU (lver + 1) and the source gives it up; a start elsewhere is refused
while the stream flows and after the hand-over. Not refused: a start in the switch-over window
(source paused, destination not yet resumed), when libvirt has released the source's lease and
not yet acquired the destination's; the migration then fails instead (see
test_start_elsewhere_at_migration_switchover_safety). Run with ``-s`` to see the MEASURED lines.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from hosts import (
    Cluster,
    Host,
    HostConfig,
    Kit,
    LockDaemon,
    LockDaemonFactory,
    LockDaemonUnavailable,
    VmleaseSanlockApi,
    alive,
    hosts_skip_reason,
    lock_daemon_named,
    lock_daemons_from_env,
    real_sanlock,
    resource_of,
    vmlease_sanlock_api,
)
from lab import LeaseSpec, TinyDomain

pytestmark = pytest.mark.libvirt

#: The lock daemons behind the simulated hosts: both, unless VMLEASE_HOSTS_LOCK_DAEMON names one.
LOCK_DAEMONS = lock_daemons_from_env()

BUSY = "Lease is held by another host"
MIGRATE = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
MIGRATE |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
# UNSAFE: libvirt refuses a live migration whose disk is neither on a shared file system it
# recognises nor cache='none'; shared/ is a local directory standing for shared storage.
MIGRATE |= libvirt.VIR_MIGRATE_UNSAFE


def report(what: str, value: str) -> None:
    """Measurements go to stdout (``pytest -s`` shows them): they feed the benchmark."""
    print(f"\nMEASURED {what}: {value}")


@pytest.fixture(scope="session")
def host_kit() -> Iterator[Kit]:
    reason = hosts_skip_reason()
    if reason:
        pytest.skip(f"simulated hosts cannot run here: {reason}")
    kit = Kit.create(Path(tempfile.mkdtemp(prefix="vmlease-hostkit-", dir="/var/tmp")))
    try:
        yield kit
    finally:
        kit.close()


@pytest.fixture(scope="module", params=LOCK_DAEMONS)
def lock_daemon(request: pytest.FixtureRequest) -> LockDaemonFactory:
    """The lock daemon behind every host of the test: the real sanlock, then vmlease-agent."""
    return lock_daemon_named(request.param)


def make_cluster(kit: Kit, n: int, lock_daemon: LockDaemonFactory, **config: object) -> Cluster:
    workdir = Path(tempfile.mkdtemp(prefix="vmlease-hosts-", dir="/var/tmp"))
    cluster = Cluster(workdir, kit, n=n, lock_daemon=lock_daemon, config=HostConfig(**config))
    t0 = time.monotonic()
    start(cluster)
    report(
        f"cluster of {n} hosts up",
        f"{time.monotonic() - t0:.2f} s (libvirtd start incl. add_lockspace: "
        + ", ".join(f"{h.start_seconds:.2f}" for h in cluster.hosts)
        + " s)",
    )
    return cluster


def start(cluster: Cluster) -> None:
    """Start the hosts; skip (saying why) when the chosen lock daemon cannot run here."""
    try:
        cluster.start()
    except LockDaemonUnavailable as e:
        subprocess.run(["rm", "-rf", str(cluster.workdir)], check=False)
        pytest.skip(f"lock daemon unavailable: {e}")


@contextlib.contextmanager
def cluster_of(
    kit: Kit, n: int, lock_daemon: LockDaemonFactory = real_sanlock, **config: object
) -> Iterator[Cluster]:
    cluster = make_cluster(kit, n, lock_daemon, **config)
    try:
        yield cluster
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(cluster.workdir)], check=False)


@pytest.fixture(scope="module")
def cluster(host_kit: Kit, lock_daemon: LockDaemonFactory) -> Iterator[Cluster]:
    """Three hosts, automatic disk leases (host_id = index), io_timeout 1 s."""
    with cluster_of(host_kit, 3, lock_daemon) as c:
        yield c


@pytest.fixture
def vm(cluster: Cluster) -> Iterator[Callable[[Host], TinyDomain]]:
    """``vm(host)``: this test's domain (one name, one uuid, one shared image) as seen from
    ``host``, defined there. Destroyed and undefined on every host afterwards."""
    name = f"vmlh-{uuid.uuid4().hex[:8]}"
    dom_uuid = str(uuid.uuid4())

    def on(host: Host, **options: object) -> TinyDomain:
        d = host.domain(name, uuid=dom_uuid, **options)
        d.define()
        return d

    try:
        yield on
    finally:
        for host in cluster.hosts:
            with contextlib.suppress(libvirt.libvirtError):
                host.domain(name).undefine()


def only_holder(cluster: Cluster, resource: str) -> tuple[int, int, int]:
    """(host index, pid, lver) of the single host whose lock daemon holds ``resource``."""
    holders = cluster.holders(resource)
    assert len(holders) == 1, f"expected one holder of {resource}, got {holders}"
    ((index, lease),) = holders.items()
    return index, lease.pid, lease.lver


def assert_refused(domain: TinyDomain) -> float:
    """Starting ``domain`` fails with libvirt's lock error (sanlock -243); it stays off."""
    t0 = time.monotonic()
    with pytest.raises(libvirt.libvirtError) as e:
        domain.start()
    took = time.monotonic() - t0
    err = e.value
    assert BUSY in str(err), str(err)
    assert err.get_error_code() == libvirt.VIR_ERR_RESOURCE_BUSY
    assert err.get_error_domain() == libvirt.VIR_FROM_LOCKING
    assert not domain.domain().isActive()
    return took


# ---- a: a start takes the disk lease for the QEMU pid ----------------------------------------


def test_start_holds_disk_lease_for_qemu_pid(cluster: Cluster, vm) -> None:
    d = vm(cluster[1])
    res = resource_of(d.image("vda"))
    times = []
    lvers = []
    for _ in range(3):
        t0 = time.monotonic()
        d.start()
        times.append(time.monotonic() - t0)
        pid = cluster[1].qemu_pid(d.name)
        index, holder, lver = only_holder(cluster, res)
        assert (index, holder) == (1, pid)
        lvers.append(lver)
        (lease,) = [x for x in cluster[1].leases() if x.resource == res]
        assert lease.lockspace == "__LIBVIRT__DISKS__"
        assert lease.path == str(cluster.lease_path(res))
        assert lease.offset == 0
        status = cluster[1].sanlock("status").stdout
        assert f"p {pid} {d.name}" in status  # registered under the domain's name
        d.destroy()
        assert cluster.holders(res) == {}, "destroy must release the lease"
    assert lvers == [lvers[0], lvers[0] + 1, lvers[0] + 2]  # each acquisition advances lver
    report("virsh start under the sanlock lock driver", fmt_times(times))


def fmt_times(times: list[float]) -> str:
    return (
        f"median {statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f}, "
        f"max {max(times) * 1000:.0f} (n={len(times)})"
    )


# ---- b: a second host cannot start the same disk ---------------------------------------------


def test_second_host_start_refused_safety(cluster: Cluster, vm) -> None:
    d1 = vm(cluster[1])
    d1.start()
    res = resource_of(d1.image("vda"))
    pid1 = cluster[1].qemu_pid(d1.name)
    took = assert_refused(vm(cluster[2]))
    report("refusal of a start held by another host (-243)", f"{took * 1000:.0f} ms")
    assert only_holder(cluster, res)[:2] == (1, pid1)
    assert d1.domain().isActive()
    # virsh, unchanged, says the same
    vm(cluster[3])
    r = subprocess.run(
        ["virsh", "-c", cluster[3].uri, "start", d1.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert f"resource busy: Failed to acquire lock: {BUSY}" in r.stderr
    assert only_holder(cluster, res)[:2] == (1, pid1)


# ---- c: pause/resume, destroy, then the other host ---------------------------------------------


def test_pause_resume_destroy_handover_safety(cluster: Cluster, vm) -> None:
    d1 = vm(cluster[1])
    d2 = vm(cluster[2])
    res = resource_of(d1.image("vda"))
    d1.start()
    pid1 = cluster[1].qemu_pid(d1.name)
    _, _, lver = only_holder(cluster, res)

    # libvirt releases the lease when the CPUs stop (virDomainLockProcessPause) and acquires it
    # again at resume: a paused domain holds nothing.
    d1.domain().suspend()
    assert cluster.holders(res) == {}
    d1.domain().resume()
    assert only_holder(cluster, res) == (1, pid1, lver + 1)

    # While paused on host 1, another host may take the disk; host 1's resume is then refused
    # and its QEMU stays paused: never two running QEMUs on one disk.
    d1.domain().suspend()
    d2.start()
    pid2 = cluster[2].qemu_pid(d2.name)
    assert only_holder(cluster, res) == (2, pid2, lver + 2)
    with pytest.raises(libvirt.libvirtError) as e:
        d1.domain().resume()
    assert BUSY in str(e.value)
    assert d1.domain().state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert only_holder(cluster, res)[:2] == (2, pid2)

    # destroy releases; then the other host can start it
    d1.destroy()
    d2.destroy()
    assert cluster.holders(res) == {}
    d1.start()
    assert only_holder(cluster, res)[:2] == (1, cluster[1].qemu_pid(d1.name))
    assert_refused(d2)


def test_without_lock_manager_second_start_is_not_refused_control(host_kit: Kit) -> None:
    """The control: with libvirt's default ``nop`` lock manager the same second start on
    another host succeeds (QEMU's image locking is off, as across real hosts), so the refusals
    above come from the lease and nothing else. Also the baseline for the benchmark's start and
    migration times."""
    with cluster_of(host_kit, 2, lock_manager="nop") as c:
        name = f"vmlh-{uuid.uuid4().hex[:8]}"
        d1 = c[1].domain(name)
        d1.define()
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            d1.start()
            times.append(time.monotonic() - t0)
            d1.destroy()
        report("virsh start without a lock manager (nop)", fmt_times(times))
        d1.start()
        d2 = c[2].domain(name, uuid=d1.uuid)
        d2.define()
        d2.start()  # two running QEMUs on one disk: exactly what the lease prevents
        assert d1.domain().isActive() and d2.domain().isActive()
        d2.destroy()
        t0 = time.monotonic()
        direct(d1, c[2])
        report("live migration (direct) without a lock manager", f"{time.monotonic() - t0:.2f} s")


# ---- d: manual <lease> elements --------------------------------------------------------------


@pytest.fixture(scope="module")
def manual_ls(cluster: Cluster) -> str:
    """A lockspace of our own, joined by every host of the module's cluster."""
    cluster.add_lockspace("vmlh_manual")
    return "vmlh_manual"


def test_manual_lease_beside_auto_disk_leases_safety(cluster: Cluster, vm, manual_ls) -> None:
    """auto_disk_leases = 1 and a <lease>: QEMU holds both, another host gets neither."""
    key = f"key-{uuid.uuid4().hex[:8]}"
    path = cluster.init_resource(manual_ls, key)
    lease = LeaseSpec(manual_ls, key, path)
    d1 = vm(cluster[1], lease=lease)
    disk = resource_of(d1.image("vda"))
    d1.start()
    pid1 = cluster[1].qemu_pid(d1.name)
    held = {(x.lockspace, x.resource, x.path, x.pid) for x in cluster[1].leases()}
    assert (manual_ls, key, str(path), pid1) in held
    assert ("__LIBVIRT__DISKS__", disk, str(cluster.lease_path(disk)), pid1) in held
    assert_refused(vm(cluster[2], lease=lease))
    assert cluster.holders(key) == {1: cluster.holders(key)[1]}
    d1.destroy()
    assert cluster.holders(key) == {} and cluster.holders(disk) == {}


def test_manual_leases_only_safety(host_kit: Kit, lock_daemon: LockDaemonFactory) -> None:
    """auto_disk_leases = 0: libvirt joins no lockspace and (require_lease_for_disks defaults to
    1 then) refuses a read/write disk without a <lease>; with one, the <lease> alone guards the
    domain across hosts, through a start elsewhere and a live migration."""
    with cluster_of(host_kit, 2, lock_daemon, auto_disk_leases=False) as c:
        assert not any(line.startswith("s ") for line in c[1].sanlock("status").stdout.split("\n"))
        ls = "vmlh_manual"
        c.add_lockspace(ls)
        name = f"vmlh-{uuid.uuid4().hex[:8]}"
        dom_uuid = str(uuid.uuid4())

        bare = c[1].domain(name, uuid=dom_uuid)
        bare.define()
        with pytest.raises(libvirt.libvirtError, match="disks were present, but no leases"):
            bare.start()
        bare.undefine()

        key = "vm-lease"
        lease = LeaseSpec(ls, key, c.init_resource(ls, key))
        d1 = c[1].domain(name, uuid=dom_uuid, lease=lease)
        d1.define()
        d2 = c[2].domain(name, uuid=dom_uuid, lease=lease)
        d2.define()
        d1.start()
        pid1 = c[1].qemu_pid(name)
        assert [(x.lockspace, x.resource, x.pid) for x in c[1].leases()] == [(ls, key, pid1)]
        _, _, lver = only_holder(c, key)
        assert_refused(d2)
        d2.undefine()

        p2p(d1, c[2])
        assert only_holder(c, key) == (2, c[2].qemu_pid(name), lver + 1)
        again = c[1].domain(name, uuid=dom_uuid, lease=lease)
        again.define()
        assert_refused(again)


# ---- e: live migration -----------------------------------------------------------------------


def p2p(src: TinyDomain, dst: Host) -> None:
    """``virsh migrate --live --p2p``: the source libvirtd talks to the destination's over TCP
    (qemu+tcp, in the hosts' network); QEMU's stream goes to the destination's address."""
    src.domain().migrateToURI3(
        dst.tcp_uri,
        {libvirt.VIR_MIGRATE_PARAM_URI: dst.migrate_uri},
        MIGRATE | libvirt.VIR_MIGRATE_PEER2PEER,
    )


def direct(src: TinyDomain, dst: Host) -> None:
    """Client-managed migration: this process drives both libvirtds (Unix sockets)."""
    src.domain().migrate3(dst.connect(), {libvirt.VIR_MIGRATE_PARAM_URI: dst.migrate_uri}, MIGRATE)


@pytest.mark.parametrize("how", [p2p, direct], ids=["p2p", "direct"])
def test_live_migration_moves_lease_safety(cluster: Cluster, vm, how) -> None:
    d1 = vm(cluster[1])
    res = resource_of(d1.image("vda"))
    d1.start()
    pid1 = cluster[1].qemu_pid(d1.name)
    _, _, lver = only_holder(cluster, res)
    assert only_holder(cluster, res) == (1, pid1, lver)

    t0 = time.monotonic()
    how(d1, cluster[2])
    took = time.monotonic() - t0
    report(f"live migration ({how.__name__}, 64 MiB TCG guest, lease hand-over)", f"{took:.2f} s")

    d2 = cluster[2].domain(d1.name)
    state, reason = d2.domain().state()
    assert (state, reason) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED)
    pid2 = cluster[2].qemu_pid(d1.name)
    assert only_holder(cluster, res) == (2, pid2, lver + 1)
    assert not alive(pid1)
    with pytest.raises(libvirt.libvirtError):
        cluster[1].connect().lookupByName(d1.name)  # UNDEFINE_SOURCE

    # after: neither the source host (as a new definition) nor a third host can start it
    assert_refused(vm(cluster[1]))
    assert_refused(vm(cluster[3]))
    assert only_holder(cluster, res) == (2, pid2, lver + 1)

    # and back again
    how(d2, cluster[1])
    assert only_holder(cluster, res) == (1, cluster[1].qemu_pid(d1.name), lver + 2)


def test_start_elsewhere_during_live_migration_safety(cluster: Cluster, vm) -> None:
    """While the migration stream flows (source still running) the source holds the lease, so a
    third host's start is refused; after the hand-over the destination holds it."""
    d1 = vm(cluster[1])
    d3 = vm(cluster[3])
    res = resource_of(d1.image("vda"))
    d1.start()
    pid1 = cluster[1].qemu_pid(d1.name)
    _, _, lver = only_holder(cluster, res)
    dom = d1.domain()

    # A slow link out of host 1 (512 kbit/s; ~0.6 MB of RAM to send) keeps the migration in its
    # transfer phase for seconds. Client-managed (direct) migration, so that only QEMU's stream
    # crosses that link: libvirt's control traffic goes over the Unix sockets.
    # Small send buffers too, or QEMU hands all of it to the kernel at once, believes it sent
    # everything, and pauses the source while the bytes still crawl over the link.
    throttle(cluster[1])
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            p2p(d1, cluster[2])
        except BaseException as e:
            errors.append(e)

    t0 = time.monotonic()
    thread = threading.Thread(target=migrate)
    thread.start()
    try:
        _wait(lambda: _job(dom).get("memory_processed", 0) > 0, 30, "the migration to start")
        refusals, readings = 0, []
        while far_from_switchover(dom, thread, readings):
            attempt = time.monotonic()
            assert_refused(d3)
            holders = cluster.holders(res)
            if running(dom):  # the source ran after this read, so during the refusal and read
                refusals += 1
                assert {i: (x.pid, x.lver) for i, x in holders.items()} == {1: (pid1, lver)}
            report("refusal during migration", f"{(time.monotonic() - attempt) * 1000:.0f} ms")
        report("starts refused on host 3 while host 1 still ran", str(refusals))
    finally:
        thread.join(120)
        unthrottle(cluster[1])
    assert not errors, errors
    report("live migration over a 512 kbit/s link", f"{time.monotonic() - t0:.2f} s")
    assert refusals >= 1, f"no start tried while host 1 ran; RAM left to send: {readings[-20:]}"
    pid2 = cluster[2].qemu_pid(d1.name)
    assert only_holder(cluster, res) == (2, pid2, lver + 1)
    assert_refused(d3)


#: Starts elsewhere are tried only while this much RAM is still to send: at 512 kbit/s that is
#: 4 s of transfer, far more than a start takes (~0.3 s), so QEMU cannot reach its switch-over
#: (source paused, lease released, destination not yet holding it) during an attempt. A start
#: in that window may succeed with libvirt's driver, by its design (README, libvirt tier).
FAR_FROM_SWITCHOVER = 256 * 1024


def throttle(host: Host, rate: str = "512kbit") -> None:
    """A slow link out of ``host`` (tbf on its eth0) with small TCP send buffers."""
    subprocess.run([*host.nsenter(), "sysctl", "-qw", "net.ipv4.tcp_wmem=4096 8192 16384"],
                   check=True, timeout=10)  # fmt: skip
    subprocess.run([*host.nsenter(), "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
                    rate, "burst", "4kb", "latency", "500ms"], check=True, timeout=10)  # fmt: skip


def unthrottle(host: Host) -> None:
    subprocess.run([*host.nsenter(), "tc", "qdisc", "del", "dev", "eth0", "root"], check=False,
                   timeout=10)  # fmt: skip
    subprocess.run([*host.nsenter(), "sysctl", "-qw", "net.ipv4.tcp_wmem=4096 16384 4194304"],
                   check=False, timeout=10)  # fmt: skip


def far_from_switchover(dom: libvirt.virDomain, migration: threading.Thread, seen: list) -> bool:
    """True while the migration runs and QEMU still has much RAM to send; False once it is near
    the switch-over or over. A failed statistics query (libvirtd busy with the migration job, more
    likely on a loaded machine) says neither, so it is asked again rather than read as the end:
    reading it as the end once made the test try no start at all. Each reading goes to ``seen``."""
    while migration.is_alive():
        remaining = _job(dom).get("memory_remaining")
        seen.append(remaining)
        if remaining is not None:
            return remaining > FAR_FROM_SWITCHOVER
        time.sleep(0.05)
    return False


def running(dom: libvirt.virDomain) -> bool:
    """Running; False once paused, shut off, or gone (UNDEFINE_SOURCE at the migration's end)."""
    try:
        return dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    except libvirt.libvirtError:
        return False


def _job(dom: libvirt.virDomain) -> dict:
    try:
        return dom.jobStats()
    except libvirt.libvirtError:
        return {}


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_start_elsewhere_at_migration_switchover_safety(cluster: Cluster, vm) -> None:
    """The switch-over window: the source's CPUs stopped, the destination's not yet running.

    libvirt 9.0 releases the source's lease when its CPUs stop and acquires the destination's at
    resume, so in between **nobody holds the lease**. With the real sanlock a start on a third
    host in that window succeeds (seen: window ~7 s here, with the stream throttled and big
    socket buffers), and the migration then fails at the destination's resume with -243; the
    source stays paused and cannot resume. Never two running QEMUs, but not "refused during the
    migration" either. A drop-in that refuses the third host instead must let the migration
    finish. Either way: at most one running domain, and it holds the lease."""
    d1 = vm(cluster[1])
    d3 = vm(cluster[3])
    res = resource_of(d1.image("vda"))
    d1.start()
    dom = d1.domain()
    # Throttled link, default (large) send buffers: QEMU queues the whole stream in the kernel,
    # pauses the source and waits seconds for the bytes to reach the destination.
    subprocess.run([*cluster[1].nsenter(), "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                    "rate", "512kbit", "burst", "4kb", "latency", "500ms"],
                   check=True, timeout=10)  # fmt: skip
    errors: list[libvirt.libvirtError] = []

    def migrate() -> None:
        try:
            direct(d1, cluster[2])
        except libvirt.libvirtError as e:
            errors.append(e)

    thread = threading.Thread(target=migrate)
    thread.start()
    try:
        _wait(lambda: dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED, 60, "the source to pause")
        assert dom.state()[1] == libvirt.VIR_DOMAIN_PAUSED_MIGRATION
        window_free = cluster.holders(res) == {}
        try:
            d3.start()
            third_started = True
        except libvirt.libvirtError as e:
            assert BUSY in str(e)
            third_started = False
    finally:
        thread.join(120)
        unthrottle(cluster[1])
    assert not thread.is_alive()
    report(
        "start on a 3rd host at migration switch-over",
        f"lease free in the window: {window_free}; third host started: {third_started}; "
        f"migration: {'failed: ' + str(errors[0]) if errors else 'succeeded'}",
    )

    running = [
        (h.index, d)
        for h in cluster.hosts
        for d in h.connect().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)
        if d.name() == d1.name
    ]
    assert len(running) == 1, f"running on hosts {[i for i, _ in running]}"
    ((index, _),) = running
    assert only_holder(cluster, res)[:2] == (index, cluster[index].qemu_pid(d1.name))
    if third_started:
        assert index == 3
        assert errors and BUSY in str(errors[0]), "the destination must not acquire"
        with pytest.raises(libvirt.libvirtError, match=BUSY):
            dom.resume()  # the source cannot take it back either
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    else:
        assert index == 2 and not errors


# ---- f: killpath fencing when the lockspace fails ----------------------------------------------


def test_lockspace_failure_fences_through_killpath_safety(
    host_kit: Kit, lock_daemon: LockDaemonFactory
) -> None:
    """``<on_lockfailure>poweroff</on_lockfailure>``: libvirt registers
    ``/usr/lib/libvirt/libvirt_sanlock_helper qemu:///system UUID poweroff`` as the QEMU's
    killpath. Host 1 alone sees the lockspace through a file whose I/O then fails (EIO, stallfs
    bind-mounted in its mount namespace only). Seen with the real sanlock (io_timeout 1): renewals
    fail, after 8 s ``check_our_lease failed`` → ``kill PID sig 100`` (the killpath) → the helper
    asks host 1's libvirtd to destroy the domain (shut off, reason destroyed); the lockspace is
    dropped. The disk is free for host 2 once host 1's delta lease is dead (~70 s: 8 s + the
    60 s watchdog fire timeout that sanlock assumes even with -w 0)."""
    from stallfs import StallFs
    from stallfs_fixture import stallfs_skip_reason

    reason = stallfs_skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="vmlease-hosts-", dir="/var/tmp"))
    leases = workdir / "shared/leases"
    leases.mkdir(parents=True)
    # The lockspace made before any libvirtd starts (libvirt initialises it only if missing),
    # so that host 1 can be given its stallable view of it.
    lockspace = leases / "__LIBVIRT__DISKS__"
    with lockspace.open("wb") as f:
        f.truncate(1 << 20)
    init = ["sanlock", "direct", "init", "-o", "1", "-s", f"__LIBVIRT__DISKS__:0:{lockspace}:0"]
    subprocess.run(init, check=True, capture_output=True)
    mnt = tempfile.mkdtemp(prefix="vmlease-stallfs-")
    fs = StallFs(mnt, backing=str(lockspace))  # mounted before the hosts' namespaces copy it

    def prepare(host: Host) -> None:
        if host.index == 1:
            subprocess.run([*host.nsenter(), "mount", "--bind", fs.path, str(lockspace)],
                           check=True, timeout=10)  # fmt: skip

    cluster = Cluster(workdir, host_kit, n=2, lock_daemon=lock_daemon, prepare_host=prepare)
    try:
        start(cluster)
        name = f"vmlh-{uuid.uuid4().hex[:8]}"
        d1 = cluster[1].domain(name, extra="<on_lockfailure>poweroff</on_lockfailure>")
        d1.define()
        d1.start()
        res = resource_of(d1.image("vda"))
        pid1 = cluster[1].qemu_pid(name)
        assert only_holder(cluster, res)[:2] == (1, pid1)
        d2 = cluster[2].domain(name, uuid=d1.uuid)
        d2.define()

        t0 = time.monotonic()
        fs.fail()
        _wait(lambda: not d1.domain().isActive(), 60, "host 1 to fence its domain")
        fenced = time.monotonic() - t0
        assert d1.domain().state() == [libvirt.VIR_DOMAIN_SHUTOFF,
                                       libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED]  # fmt: skip
        assert not alive(pid1)
        if lock_daemon is real_sanlock:  # only the real daemon writes daemon.log there
            log = Path(cluster[1].daemon.run_dir, "daemon.log").read_text()
            assert f"kill {pid1} sig 100" in log  # 100: run the killpath, not a signal
        _wait(lambda: not cluster[1].lockspace_joined(), 30, "host 1 to drop the lockspace")

        # Until host 1's delta lease is dead, host 2 is still refused.
        while True:
            try:
                d2.start()
                break
            except libvirt.libvirtError as e:
                assert BUSY in str(e)
                assert time.monotonic() - t0 < 150, "host 2 never got the disk"
                time.sleep(1)
        failover = time.monotonic() - t0
        assert only_holder(cluster, res)[:2] == (2, cluster[2].qemu_pid(name))
        report("killpath fencing after the lockspace's storage fails (EIO)", f"{fenced:.1f} s")
        report("disk usable on host 2 after host 1's storage failed", f"{failover:.1f} s")
    finally:
        cluster.stop()
        fs.close()
        os.rmdir(mnt)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


# ---- mixed: a real sanlock host and a vmlease-agent host under one libvirt lockspace -----------


def mixed(host: Host) -> LockDaemon:
    """Host 1 runs the real sanlock daemon; the others vmlease-agent --sanlock-api."""
    return real_sanlock(host) if host.index == 1 else vmlease_sanlock_api(host)


def test_mixed_hosts_contend_for_a_domains_disk_both_ways_safety(host_kit: Kit) -> None:
    """A host with the real sanlock and a host with vmlease-agent, both under libvirt's driver
    and one ``__LIBVIRT__DISKS__`` lockspace on the shared directory: whichever runs the domain,
    the other's start is refused (-243); the lease moves with a live migration either way."""
    with cluster_of(host_kit, 2, mixed) as c:
        name, dom_uuid = f"vmlh-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
        on = {i: c[i].domain(name, uuid=dom_uuid) for i in (1, 2)}
        try:
            for d in on.values():
                d.define()
            res = resource_of(on[1].image("vda"))
            for here, there in ((1, 2), (2, 1)):
                on[here].start()
                assert only_holder(c, res)[:2] == (here, c[here].qemu_pid(name))
                assert_refused(on[there])
                on[here].destroy()
            on[1].start()
            _, _, lver = only_holder(c, res)
            for src, dst in ((1, 2), (2, 1)):
                t0 = time.monotonic()
                p2p(c[src].domain(name), c[dst])
                report(f"live migration host {src} -> {dst} (mixed daemons)",
                       f"{time.monotonic() - t0:.2f} s")  # fmt: skip
                lver += 1
                assert only_holder(c, res) == (dst, c[dst].qemu_pid(name), lver)
                c[src].domain(name, uuid=dom_uuid).define()
                assert_refused(c[src].domain(name))
        finally:
            for host in c.hosts:
                with contextlib.suppress(libvirt.libvirtError):
                    host.domain(name).destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    host.domain(name).undefine()


# ---- the seed's walkthrough, and what vmlease adds ---------------------------------------------


def test_the_seed_walkthrough_typed_as_written_works_with_vmlease_agent(host_kit: Kit) -> None:
    """The manual configuration of the seed's walkthrough, its commands as written (the lease
    directory stands for /var/lib/libvirt/sanlock on NFS), with vmlease-agent in place of the
    sanlock daemon and wdmd on each host: truncate and ``sanlock direct init -s``, ``sanlock
    client add_lockspace`` with the walkthrough's relative path on every host, ``host_status``,
    ``sanlock direct init -r`` of the disk's resource lease, the ``<lease>`` in the domain,
    ``virsh start`` on one host, refused on the other. (Its automatic disk lease half is the
    tests above, run with vmlease-agent too.)"""
    with cluster_of(host_kit, 2, vmlease_sanlock_api, auto_disk_leases=False) as c:
        lockspace = c.leases / "TEST_LS"
        subprocess.run(["truncate", "-s", "1M", str(lockspace)], check=True)
        subprocess.run(["sanlock", "direct", "init", "-o", "1", "-s",
                        f"TEST_LS:0:{lockspace}:0"], check=True, capture_output=True)  # fmt: skip
        for host in c.hosts:
            as_typed = f"TEST_LS:{host.index}:{str(lockspace).lstrip('/')}:0"
            added = host.sanlock("add_lockspace", "-s", as_typed)
            assert added.returncode == 0 and "done 0" in added.stdout, added.stdout
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = c[1].sanlock("host_status", "-s", "TEST_LS").stdout
            if all(f"{i} timestamp" in status for i in (1, 2)):
                break
            time.sleep(0.5)
        assert all(f"{i} timestamp" in status for i in (1, 2)), status
        key = "sles11sp2-disk-resource-lock"
        resource = c.leases / key
        subprocess.run(["truncate", "-s", "1M", str(resource)], check=True)
        subprocess.run(["sanlock", "direct", "init", "-r", f"TEST_LS:{key}:{resource}:0"],
                       check=True, capture_output=True)  # fmt: skip
        name, dom_uuid = f"vmlh-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
        lease = LeaseSpec("TEST_LS", key, resource)
        here = c[1].domain(name, uuid=dom_uuid, lease=lease)
        there = c[2].domain(name, uuid=dom_uuid, lease=lease)
        try:
            here.define()
            there.define()
            here.start()
            assert [(x.lockspace, x.resource) for x in c[1].leases()] == [("TEST_LS", key)]
            assert_refused(there)
        finally:
            for d in (here, there):
                with contextlib.suppress(libvirt.libvirtError):
                    d.undefine()


def test_restarting_the_lock_daemon_keeps_the_domains_and_their_leases_safety(
    host_kit: Kit,
) -> None:
    """The walkthrough's warning: "restarting the sanlock daemon will terminate your virtual
    machines". Restarting vmlease-agent (an upgrade, a crash) does not: the domain keeps
    running, the new agent adopts its lease by pid, another host is still refused, and the
    lease goes when the domain stops."""
    with cluster_of(host_kit, 2, vmlease_sanlock_api) as c:
        name, dom_uuid = f"vmlh-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
        here, there = c[1].domain(name, uuid=dom_uuid), c[2].domain(name, uuid=dom_uuid)
        try:
            here.define()
            there.define()
            here.start()
            res = resource_of(here.image("vda"))
            pid = c[1].qemu_pid(name)
            held = only_holder(c, res)
            daemon = c[1].daemon
            assert isinstance(daemon, VmleaseSanlockApi)
            daemon.restart()
            assert alive(pid) and here.domain().isActive()
            assert only_holder(c, res) == held
            assert_refused(there)
            here.destroy()
            deadline = time.monotonic() + 10
            while c.holders(res) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not c.holders(res)
            there.start()
            assert only_holder(c, res)[:2] == (2, c[2].qemu_pid(name))
        finally:
            for d in (here, there):
                with contextlib.suppress(libvirt.libvirtError):
                    d.undefine()
