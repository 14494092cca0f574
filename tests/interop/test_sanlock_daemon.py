"""Mixed contention with the real sanlock 3.8.5 daemon: one lockspace, sanlock's daemon at host_id 1
(driven through python-sanlock by a registered child process) and our engine at host_id 2 with a
renewal thread, as the agent runs it. Each side must see the other alive, refuse a lease the other
holds (-243), and win it once the other releases. io_timeout 1 keeps it quick."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from leasekit import MiB, digest, leader_of, make_file
from sanlockd import SanlockClient, SanlockDaemon, SanlockError, sanlock_skip_reason
from vmlease_agent.engine import delta, errors, ondisk, paxos, timeouts
from vmlease_agent.engine.clock import Clock
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import Sizes

pytestmark = pytest.mark.interop

N = 1
SIZES = Sizes(512, MiB)


@dataclass
class Mixed:
    """The shared lockspace: sanlock's daemon at host 1, our DeltaLease at host 2."""

    dir: str
    ls_path: str
    daemon: SanlockDaemon
    admin: SanlockClient
    st: Storage
    loc: delta.Location
    lease: delta.DeltaLease
    table: delta.HostStatusTable
    stop: threading.Event = field(default_factory=threading.Event)
    renew_errors: list = field(default_factory=list)
    renewals: int = 0

    def renew_loop(self) -> None:
        """The agent's loop: renew every 2N, feed the host-status table with the area read."""
        clock = self.lease.clock
        last = clock.now()
        while not self.stop.wait(0.1):
            if clock.now() - last < timeouts.id_renewal_seconds(N):
                continue
            try:
                _, area = self.lease.renew()
                self.table.update(area, clock.now(), local_host_id=2)
                self.renewals += 1
                last = clock.now()
            except errors.LeaseError as e:  # pragma: no cover - reported by the tests
                self.renew_errors.append(e)

    def resource(self, name: str) -> paxos.Resource:
        path = make_file(self.dir, name)
        subprocess.run(
            ["sanlock", "direct", "init", "-r", f"LS:{name}:{path}:0"],
            check=True,
            capture_output=True,
        )
        return paxos.Resource("LS", name, path, 0)

    def acquirer(self, res: paxos.Resource, st: Storage) -> paxos.Acquirer:
        view = paxos.OwnerView(self.st, self.loc, SIZES, N, self.table)
        return paxos.Acquirer(st, res, 2, self.lease.generation, N, view)

    def holder(self) -> SanlockClient:
        c = self.daemon.client()
        c.call("register")
        return c

    def wait_for(self, what, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            value = what()
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.2)


@pytest.fixture(scope="module")
def mixed() -> Iterator[Mixed]:
    reason = sanlock_skip_reason()
    if reason:
        pytest.skip(reason)
    d = tempfile.mkdtemp(prefix="vmlease-interop-", dir="/var/tmp")
    ls_path = make_file(d, "lockspace")
    subprocess.run(
        ["sanlock", "direct", "init", "-s", f"LS:0:{ls_path}:0", "-o", str(N)],
        check=True,
        capture_output=True,
    )
    daemon = SanlockDaemon()
    admin = daemon.client()
    st = Storage(ls_path)
    loc = delta.Location("LS", ls_path, 0)
    lease = delta.DeltaLease(st, loc, SIZES, 2, "vmlease-host-2", N, clock=Clock())
    joined: list = []
    t = threading.Thread(target=lambda: joined.append(lease.acquire()))
    t.start()  # both join at the same time: ~2N each
    try:
        admin.call("add_lockspace", lockspace="LS", host_id=1, path=ls_path, io_timeout=N)
        t.join()
        assert joined, "our delta lease acquire failed"
        m = Mixed(d, ls_path, daemon, admin, st, loc, lease, delta.HostStatusTable(loc, SIZES, N))
        renewer = threading.Thread(target=m.renew_loop, daemon=True)
        renewer.start()
        yield m
        m.stop.set()
        renewer.join()
        assert not m.renew_errors, m.renew_errors
        lease.release()
    finally:
        t.join()
        admin.close()
        daemon.stop()
        st.close()
        shutil.rmtree(d, ignore_errors=True)


def test_each_side_sees_the_other_alive_in_one_lockspace(mixed):
    def sanlock_sees_us():
        try:
            hosts = mixed.admin.call("get_hosts", lockspace="LS", host_id=2)
        except SanlockError:  # -EAGAIN until its first scan
            return None
        return hosts and hosts[0]["flags"] == delta.STATE_CODES[delta.LIVE] and hosts[0]

    seen = mixed.wait_for(sanlock_sees_us)
    assert seen, mixed.daemon.log_text()
    assert seen["generation"] == mixed.lease.generation and seen["io_timeout"] == N

    def we_see_sanlock():
        hs = mixed.table.hosts.get(1)
        return hs and hs.state(mixed.lease.clock.now(), N) == delta.LIVE

    assert mixed.wait_for(we_see_sanlock)
    hs = mixed.table.hosts[1]
    assert hs.io_timeout == N and hs.fire_timeout == 60 and hs.generation >= 1
    assert mixed.table.hosts[2].state(mixed.lease.clock.now(), N) == delta.LIVE


def test_sanlock_holds_we_get_idlive_then_win_after_release(mixed):
    res = mixed.resource("SL_HOLDS")
    holder = mixed.holder()
    try:
        holder.call("acquire", lockspace="LS", resource="SL_HOLDS", path=res.path)
        assert leader_of(res.path).owner_id == 1
        before = digest(res.path)
        with Storage(res.path) as st:
            t0 = time.monotonic()
            with pytest.raises(errors.AcquireIdLive) as info:
                mixed.acquirer(res, st).acquire()
            assert time.monotonic() - t0 < 4 * N  # seen alive within a renewal or two
            assert info.value.code == -243 and "held by host 1" in str(info.value)
            assert digest(res.path) == before
            # the CLI, which has no monitor table, says the same with exit status 243
            cmd = [sys.executable, "-m", "vmlease_agent.cli.main", "direct", "acquire"]
            cmd += ["-r", f"LS:SL_HOLDS:{res.path}:0", "-s", f"LS:0:{mixed.ls_path}:0"]
            cmd += ["-i", "2", "-g", str(mixed.lease.generation), "-o", str(N)]
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert proc.returncode == 243, proc.stderr
            assert proc.stderr.strip().endswith("[error -243]")
            assert digest(res.path) == before
            holder.call("release", lockspace="LS", resource="SL_HOLDS", path=res.path)
            token = mixed.acquirer(res, st).acquire()
            lr = leader_of(res.path)
            assert (lr.owner_id, lr.owner_generation, lr.lver) == (2, mixed.lease.generation, 2)
            assert token.lver == 2
            # and now sanlock is refused in turn
            with pytest.raises(SanlockError) as info:
                holder.call("acquire", lockspace="LS", resource="SL_HOLDS", path=res.path)
            assert info.value.errno == -243
            mixed.acquirer(res, st).release(token)
        holder.call("acquire", lockspace="LS", resource="SL_HOLDS", path=res.path)
        assert (leader_of(res.path).owner_id, leader_of(res.path).lver) == (1, 3)
    finally:
        holder.close()


def test_we_hold_sanlock_gets_idlive_then_wins_after_release(mixed):
    res = mixed.resource("WE_HOLD")
    holder = mixed.holder()
    try:
        with Storage(res.path) as st:
            acq = mixed.acquirer(res, st)
            token = acq.acquire()
            before = digest(res.path)
            t0 = time.monotonic()
            with pytest.raises(SanlockError) as info:
                holder.call("acquire", lockspace="LS", resource="WE_HOLD", path=res.path)
            assert info.value.errno == -243
            assert time.monotonic() - t0 < 4 * N
            assert digest(res.path) == before  # sanlock wrote nothing either
            acq.release(token)
        holder.call("acquire", lockspace="LS", resource="WE_HOLD", path=res.path)
        lr = leader_of(res.path)
        assert (lr.owner_id, lr.lver, lr.write_id) == (1, 2, 1)
    finally:
        holder.close()  # the holder process dies: the daemon releases its lease
    assert mixed.wait_for(lambda: leader_of(res.path).timestamp == 0)
    with Storage(res.path) as st:
        token = mixed.acquirer(res, st).acquire()
        assert token.leader.owner_id == 2 and token.lver == 3
        mixed.acquirer(res, st).release(token)


def test_shared_leases_block_exclusive_ones_across_implementations(mixed):
    res = mixed.resource("SHARED")
    holder = mixed.holder()
    try:
        holder.call("acquire", lockspace="LS", resource="SHARED", path=res.path, shared=True)
        with Storage(res.path) as st:
            with pytest.raises(errors.SharedHeld, match=r"host\(s\) 1"):
                mixed.acquirer(res, st).acquire()
            token = mixed.acquirer(res, st).acquire(shared=True)  # SH + SH is fine
            assert ondisk.ModeBlock.unpack(st.read(0, MiB, N), 3 * 512 + 128).shared
            holder.call("release", lockspace="LS", resource="SHARED", path=res.path)
            with pytest.raises(SanlockError) as info:
                holder.call("acquire", lockspace="LS", resource="SHARED", path=res.path)
            assert info.value.errno == 11  # -EAGAIN: our live SH blocks sanlock's EX
            mixed.acquirer(res, st).release(token)
        holder.call("acquire", lockspace="LS", resource="SHARED", path=res.path)
        assert leader_of(res.path).owner_id == 1
    finally:
        holder.close()
