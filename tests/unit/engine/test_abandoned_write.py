"""A write abandoned at io_timeout may still land much later (dm-multipath requeues a stuck
request; an NFS server answers after a failover). If it lands over a newer write of ours to the
same sector, our dblock goes back in time, and Disk Paxos loses its one assumption: an
acceptor's block never regresses. These tests hold a real write in a worker thread, let the caller
time out, and release it when the scenario needs it to land."""

from __future__ import annotations

import errno
import threading

import pytest
from leasekit import (
    S512,
    CountingStorage,
    MiB,
    assert_refused,
    dblock_of,
    join,
    leader_of,
    make_file,
    make_lockspace,
    read_bytes,
)
from vmlease_agent.engine import errors, paxos
from vmlease_agent.engine.clock import FakeClock
from vmlease_agent.engine.directio import Storage


class HoldingStorage(CountingStorage):
    """A Storage whose next write, once armed, stays "in the kernel" until ``land()``."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._armed = False
        self._release = threading.Event()
        self.landed = threading.Event()
        self.fail_held = False  # the held write fails (EIO) instead of landing

    def hold_next_write(self) -> None:
        self._armed = True

    def land(self) -> None:
        """Let the held write return (reach the disk, or fail), and wait until it has."""
        self._release.set()
        assert self.landed.wait(5), "the held write never landed"

    def _pwrite(self, offset: int, data: bytes) -> None:
        if not self._armed:
            return super()._pwrite(offset, data)
        self._armed = False
        self._release.wait()
        try:
            if self.fail_held:
                raise OSError(errno.EIO, "held write failed")
            super()._pwrite(offset, data)
        finally:
            self.landed.set()
        return None


def test_late_abandoned_dblock_write_never_makes_two_owners_safety(lease_dir):
    """Host 1's phase-1 write is abandoned; host 1 retries and wins lver 1; the abandoned write
    then lands and wipes its phase-2 value; host 2, which read the area before host 1 won, runs
    its ballot over the wiped block and wins lver 1 too, unless the retry was refused."""
    ls = make_lockspace(lease_dir)
    path = make_file(lease_dir, "resource", MiB)
    clock = FakeClock(start=1000)
    st1, st2 = HoldingStorage(path), HoldingStorage(path)
    res = paxos.Resource("LS", "RES", path, 0)
    paxos.init_resource(st1, res, S512)
    h1, h2 = join(ls, 1, clock, st1, res), join(ls, 2, clock, st2, res)

    st1.hold_next_write()
    with pytest.raises(errors.IoTimeout):
        h1.acq.acquire()  # phase-1 write abandoned after io_timeout (1 s), still in the kernel

    owners: dict[int, paxos.Token] = {}
    refusals: list[errors.LeaseError] = []

    def host1_retries_then_its_old_write_lands(offset: int, data: bytes) -> None:
        # host 2 has read the free area already; this is its phase-1 write
        st2.before_write.clear()
        try:
            owners[1] = h1.acq.acquire()
        except errors.WriteAbandoned as e:
            refusals.append(e)
        st1.land()

    st2.before_write = [host1_retries_then_its_old_write_lands]
    try:
        owners[2] = h2.acq.acquire()
    except errors.LeaseError as e:
        refusals.append(e)
    lvers = {h: t.lver for h, t in owners.items()}
    assert len(set(lvers.values())) == len(lvers), (
        f"two owners of one lease version {lvers}: host 1's phase-2 value was wiped by its late "
        f"write (its dblock is now {dblock_of(path, 1)}; the leader says {leader_of(path)})"
    )
    assert 2 in owners and owners[2].lver == 1
    assert [type(e) for e in refusals] == [errors.WriteAbandoned]


def test_writes_over_an_abandoned_write_are_refused_until_it_lands_safety(lease_dir):
    """Refused on any Storage of this process on the same file, for overlapping bytes only, with
    a message naming the place, the age and the fix; allowed again once the write has returned."""
    path = make_file(lease_dir, "f", MiB)
    held, other = HoldingStorage(path), Storage(path)
    held.hold_next_write()
    with pytest.raises(errors.IoTimeout):
        held.write(4096, b"\1" * 1024, 0.2)
    err = assert_refused(path, errors.WriteAbandoned, lambda: other.write(4608, b"\2" * 512, 5))
    assert err.code == -errno.EBUSY
    assert f"at {path}:4608 refused" in str(err) and f"{path}:4096 was abandoned" in str(err)
    assert "cannot be written until that write completes or fails" in str(err)
    assert 0 <= err.ago < 1 and f"abandoned at its io_timeout {err.ago:.1f}s ago" in str(err)
    other.write(3584, b"\3" * 512, 5)  # the sectors on either side are not fenced
    other.write(5120, b"\3" * 512, 5)
    assert other.read(4096, 512, 5) == bytes(512)  # reads are never refused
    held.land()
    other.write(4608, b"\4" * 512, 5)
    assert read_bytes(path, 4096, 1024) == b"\1" * 512 + b"\4" * 512


def test_a_timed_out_write_that_fails_in_the_kernel_stops_fencing_safety(lease_dir):
    path = make_file(lease_dir, "f", MiB)
    st = HoldingStorage(path)
    st.hold_next_write()
    st.fail_held = True
    with pytest.raises(errors.IoTimeout):
        st.write(0, b"\1" * 512, 0.2)
    with pytest.raises(errors.WriteAbandoned):
        st.write(0, b"\2" * 512, 5)
    st.land()
    st.write(0, b"\2" * 512, 5)
    assert read_bytes(path, 0, 512) == b"\2" * 512
