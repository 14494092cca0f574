"""Delta leases (host_id leases): init, acquire (free / fast reacquire / held-wait / busy), renew,
release, and the host-status table, on real files with a FakeClock for the waits."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from leasekit import (
    S512,
    CountingStorage,
    MiB,
    assert_refused,
    digest,
    make_file,
    make_lockspace,
    read_bytes,
    write_bytes,
)
from vmlease_agent.engine import delta, errors, ondisk, timeouts
from vmlease_agent.engine.clock import Aborted, FakeClock
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import Leader, Sizes

# ---- init -----------------------------------------------------------------------------------


def test_init_writes_record_zero_uncommitted_first_then_commits(lease_dir):
    path = make_file(lease_dir, "ls")
    st = CountingStorage(path)
    writes: list[tuple[int, bytes]] = []
    st.before_write.append(lambda off, data: writes.append((off, data)))
    delta.init_lockspace(st, delta.Location("LS", path, 0), S512, 10)
    assert [(off, len(d)) for off, d in writes] == [(0, MiB), (0, 512)]
    area, commit = writes[0][1], writes[1][1]
    assert int.from_bytes(area[:4], "little") == 0  # magic 0: not a lockspace until committed
    assert Leader.unpack(commit).magic == ondisk.DELTA_DISK_MAGIC
    assert ondisk.leader_checksum_ok(commit)[0]
    assert all(timeout == 60.0 for *_, timeout in st.ops if _[0] == "write")


def test_init_lays_out_one_record_per_host(lease_dir):
    ls = make_lockspace(lease_dir, io_timeout=10)
    data = read_bytes(ls.path, 0, MiB)
    first = data[:512]
    for h in (1, 2, 1000, 2000):
        rec = Leader.unpack(data[(h - 1) * 512 :])
        assert data[(h - 1) * 512 : h * 512] == first
        assert (rec.num_hosts, rec.max_hosts, rec.owner_id, rec.timestamp) == (0, 1, 0, 0)
        assert (rec.io_timeout, rec.flags, rec.sector_size) == (10, 0x10, 512)
    assert not any(data[2000 * 512 :])  # the tail of the 1 MiB area stays zero


def test_init_4k_2m_lays_out_500_records_at_4k_stride(lease_dir):
    sizes = Sizes(4096, 2 * MiB)
    ls = make_lockspace(lease_dir, sizes=sizes)
    data = read_bytes(ls.path, 0, 2 * MiB)
    for h in (1, 500):
        rec = Leader.unpack(data[(h - 1) * 4096 :])
        assert rec.magic == ondisk.DELTA_DISK_MAGIC and rec.flags == 0x20
        assert rec.sector_size == 4096
    assert not any(data[500 * 4096 :])
    assert delta.read_sizes(ls.st, ls.loc, 1)[0] == sizes


@pytest.mark.parametrize("n", [0, 256, -1])
def test_init_refuses_io_timeout_out_of_range(lease_dir, n):
    path = make_file(lease_dir, "ls")
    with Storage(path) as st:
        assert_refused(
            path,
            errors.InvalidArgument,
            lambda: delta.init_lockspace(st, delta.Location("LS", path, 0), S512, n),
        )


def test_init_refuses_unaligned_offset_and_long_name(lease_dir):
    path = make_file(lease_dir, "ls", 3 * MiB)
    with Storage(path) as st:
        err = assert_refused(
            path,
            errors.OffsetNotAligned,
            lambda: delta.init_lockspace(st, delta.Location("LS", path, 512), S512, 1),
        )
        assert "use an offset such as 1048576" in str(err)
        assert_refused(
            path,
            errors.NameTooLong,
            lambda: delta.init_lockspace(st, delta.Location("L" * 49, path, 0), S512, 1),
        )


def test_init_refuses_512_leases_on_4k_storage(loop_device_4k):
    with Storage(loop_device_4k) as st:
        before = digest(loop_device_4k)
        with pytest.raises(errors.LeaderSectorSize, match="use -Z 4096"):
            delta.init_lockspace(st, delta.Location("LS", loop_device_4k, 0), S512, 1)
        assert digest(loop_device_4k) == before
        # beyond the end of the device
        with pytest.raises(errors.Truncated):
            delta.init_lockspace(
                st, delta.Location("LS", loop_device_4k, 16 * MiB), Sizes(4096, MiB), 1
            )
        assert digest(loop_device_4k) == before
        delta.init_lockspace(st, delta.Location("LS", loop_device_4k, 0), Sizes(4096, MiB), 1)
        assert delta.read_sizes(st, delta.Location("LS", loop_device_4k, 0), 1)[0] == Sizes(
            4096, MiB
        )


# ---- reading and validating -------------------------------------------------------------------


def _corrupt(ls, host_id, pos, value: bytes, fix_checksum: bool = True):
    off = (host_id - 1) * ls.sizes.sector_size
    rec = bytearray(read_bytes(ls.path, off, 512))
    rec[pos : pos + len(value)] = value
    if fix_checksum:
        rec[0xA8:0xAC] = ondisk.crc(bytes(rec[:168])).to_bytes(4, "little")
    write_bytes(ls.path, off, bytes(rec))


@pytest.mark.parametrize(
    ("pos", "value", "fix", "exc", "code", "match"),
    [
        (0, b"\0\0\0\0", True, errors.LeaderMagic, -223, "initialise it with `vmlease direct"),
        (4, b"\x04\0\x04\0", True, errors.LeaderVersion, -224, "not recognised"),
        (0x38, b"XX", True, errors.LeaderLockspace, -226, "belongs to lockspace 'XX'"),
        (0x68, b"junk", False, errors.LeaderChecksum, -229, "checksum mismatch"),
        (0x0C, (1024).to_bytes(4, "little"), True, errors.LeaderSectorSize, -225, "sector size"),
    ],
)
def test_bad_records_are_refused_and_nothing_written(lease_dir, pos, value, fix, exc, code, match):
    ls = make_lockspace(lease_dir)
    _corrupt(ls, 2, pos, value, fix)
    lease = ls.lease(2, FakeClock())
    err = assert_refused(ls.path, exc, lease.acquire)
    assert err.code == code
    assert str(err).startswith(f"lockspace LS at {ls.path}:0: ") and match in str(err)


def test_resource_area_is_not_a_lockspace(lease_dir):
    from leasekit import make_resource

    st, res = make_resource(lease_dir)
    with pytest.raises(errors.LeaderMagic, match="holds a resource lease, not a lockspace"):
        delta.read_sizes(st, delta.Location("LS", res.path, 0), 1)


def test_truncated_lockspace_is_refused(lease_dir):
    ls = make_lockspace(lease_dir)
    os.truncate(ls.path, 4096)
    with pytest.raises(errors.Truncated, match="storage ends at 4096 bytes"):
        delta.read_sizes(ls.st, ls.loc, 1)
    os.truncate(ls.path, 100)
    with pytest.raises(errors.Truncated):
        delta.read_sizes(ls.st, ls.loc, 1)


def test_read_sizes_refuses_unaligned_offsets(lease_dir):
    ls = make_lockspace(lease_dir)
    with pytest.raises(errors.OffsetNotAligned, match="sector"):
        delta.read_sizes(ls.st, delta.Location("LS", ls.path, 100), 1)


@pytest.mark.parametrize("host_id", [0, -1, 2001])
def test_host_id_out_of_range_is_refused_and_nothing_written(lease_dir, host_id):
    ls = make_lockspace(lease_dir)
    err = assert_refused(ls.path, errors.HostIdOutOfRange, ls.lease(host_id, FakeClock()).acquire)
    assert err.code == -231 and "holds host_ids 1..2000" in str(err)


def test_host_name_over_48_bytes_is_refused_and_nothing_written(lease_dir):
    ls = make_lockspace(lease_dir)
    assert_refused(ls.path, errors.NameTooLong, ls.lease(1, FakeClock(), name="h" * 49).acquire)


# ---- acquire --------------------------------------------------------------------------------


def test_acquire_free_claims_and_waits_2n(lease_dir):
    ls = make_lockspace(lease_dir, io_timeout=1)
    clock = FakeClock(start=5000)
    lease = ls.lease(3, clock, name="node-3")
    rec = lease.acquire()
    assert clock.sleeps == [2]  # delta_short_delay of the previous record's N (init wrote 1)
    assert ls.record(3) == rec
    assert (rec.owner_id, rec.owner_generation, rec.timestamp) == (3, 1, 5000)
    assert (rec.resource_name, rec.io_timeout, rec.max_hosts) == ("node-3", 1, 1)
    assert ondisk.watchdog_fire_timeout_of(rec, 0) == 60
    assert lease.generation == 1
    assert not any(read_bytes(ls.path, 2 * 512 + 256, 256))  # bitmap clear


def test_acquire_waits_2n_of_the_previous_owner(lease_dir):
    ls = make_lockspace(lease_dir, io_timeout=7)  # init records N=7
    clock = FakeClock()
    ls.lease(1, clock).acquire()
    assert clock.sleeps == [14]


def test_fast_reacquire_by_the_same_host_name(lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    ls.lease(2, clock, name="n").acquire()
    clock.advance(100)  # "crashed" without release: the record still says held
    again = ls.lease(2, clock, name="n").acquire()
    assert clock.sleeps == [2, 2]  # no 8N+60 wait
    assert again.owner_generation == 2


# ---- which machine, which boot (an agent that lost its saved state) --------------------------

MACHINE_A, MACHINE_B = "a" * 32, "b" * 32


def test_previous_boot_of_this_machine_is_reacquired_at_once(lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    ls.lease(2, clock, name="n", identity=ondisk.Identity.of(MACHINE_A, "boot-1")).acquire()
    clock.sleeps.clear()
    again = ls.lease(2, clock, name="n", identity=ondisk.Identity.of(MACHINE_A, "boot-2"))
    assert again.acquire().owner_generation == 2
    assert clock.sleeps == [2]  # every process of boot-1 is gone: no wait


def test_earlier_agent_of_this_boot_is_waited_out_until_its_deadline_plus_w_safety(lease_dir):
    """Saved state lost (deleted, another run directory): the old agent's holders may still run,
    so the host_id is re-taken only after its deadline T + 8N + W (and the record unchanged)."""
    ls = make_lockspace(lease_dir, io_timeout=1)
    me = ondisk.Identity.of(MACHINE_A, "boot-1")
    clock = FakeClock(start=1000)
    old = ls.lease(2, clock, name="n", identity=me, fire_timeout=10)
    t = old.acquire().timestamp  # T = 1000
    clock.advance(3)
    clock.sleeps.clear()
    new = ls.lease(2, clock, name="n", identity=me, fire_timeout=10)
    seen: list[float] = []
    clock.on_sleep.append(lambda c: seen.append(new.previous_until))
    started = clock.now()
    rec = new.acquire()
    assert clock.sleeps[0] == t + 1 + 8 * 1 + 10 - started  # until T + 1 + 8N + W, our clock
    assert seen[0] == t + 1 + 8 + 10 and new.previous_until == 0.0
    assert rec.owner_generation == 2


def test_earlier_agent_of_this_boot_still_renewing_is_busy_safety(lease_dir):
    ls = make_lockspace(lease_dir)
    me = ondisk.Identity.of(MACHINE_A, "boot-1")
    clock = FakeClock()
    old = ls.lease(2, clock, name="n", identity=me)
    old.acquire()
    clock.advance(1)
    clock.on_sleep.append(lambda c: old.renew())  # the old agent is alive after all
    with pytest.raises(errors.HostIdBusy, match="in use"):
        ls.lease(2, clock, name="n", identity=me).acquire()
    assert ls.record(2) == old.record  # nothing of ours was written


def test_same_name_without_an_identity_is_waited_out_like_another_host_safety(lease_dir):
    """A record with our name but no identity (sanlock, an older vmlease) proves nothing."""
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    ls.lease(2, clock, name="n").acquire()
    clock.sleeps.clear()
    ls.lease(2, clock, name="n", identity=ondisk.Identity.of(MACHINE_A, "b")).acquire()
    assert clock.sleeps == [8 + 60, 2]


def test_without_a_machine_id_a_reboot_is_never_assumed_safety(lease_dir):
    """Two machines without /etc/machine-id and one node name must not look like a reboot."""
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    unknown = ondisk.Identity.of("", "boot-1")
    rec = ls.lease(2, clock, name="n", identity=unknown).acquire()
    assert ondisk.Identity.unpack_for(read_bytes(ls.path, 512, 512), rec) is None  # not written
    clock.sleeps.clear()
    ls.lease(2, clock, name="n", identity=ondisk.Identity.of("", "boot-2")).acquire()
    assert clock.sleeps == [8 + 60, 2]  # waited out like another host


def test_another_machine_with_our_name_still_renewing_is_refused_and_named_safety(lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    theirs, ours = ondisk.Identity.of(MACHINE_B, "x"), ondisk.Identity.of(MACHINE_A, "y")
    other = ls.lease(2, clock, name="n", identity=theirs)
    other.acquire()
    clock.on_sleep.append(lambda c: other.renew())  # the other machine is alive
    before_wait = clock.sleeps[:]
    with pytest.raises(errors.HostNameCollision) as e:
        ls.lease(2, clock, name="n", identity=ours).acquire()
    assert clock.sleeps[len(before_wait)] == 8 + 60  # waited out like another host first
    assert e.value.code == -262
    assert theirs.machine_hex in str(e.value) and ours.machine_hex in str(e.value)
    assert "--node-name" in str(e.value)
    assert ls.record(2) == other.record  # nothing of ours was written


def test_another_machine_with_our_name_silent_for_8n_plus_w_is_taken_over_safety(lease_dir):
    """A reinstalled node (or a kind node container, which makes a new machine id at every
    start) keeps its name: once the old record is proven dead, the host_id is ours."""
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    theirs, ours = ondisk.Identity.of(MACHINE_B, "x"), ondisk.Identity.of(MACHINE_A, "y")
    old = ls.lease(2, clock, name="n", identity=theirs).acquire()
    clock.sleeps.clear()
    rec = ls.lease(2, clock, name="n", identity=ours).acquire()
    assert clock.sleeps == [8 + 60, 2]  # never at once: 8N + W of silence first
    assert rec.owner_generation == old.owner_generation + 1


def test_identity_is_bound_to_the_record_it_was_written_with(lease_dir):
    ls = make_lockspace(lease_dir)
    me = ondisk.Identity.of(MACHINE_A, "b")
    rec = ls.lease(2, FakeClock(), name="n", identity=me).acquire()
    sector = read_bytes(ls.path, 512, 512)
    assert ondisk.Identity.unpack_for(sector, rec) == me
    assert ondisk.Identity.unpack_for(sector, replace(rec, owner_generation=9)) is None
    assert not any(sector[ondisk.LEADER_SIZE : ondisk.IDENTITY_OFFSET])


# ---- W across restarts -----------------------------------------------------------------------


def test_renew_advertises_the_current_w_after_a_resume_with_another_w_safety(lease_dir):
    """An agent restarted with W 10 -> 60 resumes a record that says 10: its first renewal
    must say 60, and until then ``advertised_fire_timeout`` says 10 (what peers judge by)."""
    ls = make_lockspace(lease_dir, io_timeout=1)
    clock = FakeClock(start=100)
    rec = ls.lease(5, clock, name="n", fire_timeout=10).acquire()
    resumed = ls.lease(5, clock, name="n", fire_timeout=60, record=rec)
    assert resumed.advertised_fire_timeout == 10
    clock.advance(2)
    new, _ = resumed.renew()
    assert ondisk.watchdog_fire_timeout_of(new, 0) == 60 == resumed.advertised_fire_timeout
    assert ondisk.watchdog_fire_timeout_of(ls.record(5), 0) == 60


def test_held_by_another_host_name_is_waited_out_8n_plus_60(lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    ls.lease(2, clock, name="old").acquire()
    clock.sleeps.clear()
    rec = ls.lease(2, clock, name="new").acquire()
    assert clock.sleeps == [68, 2]
    assert (rec.owner_generation, rec.resource_name) == (2, "new")


def test_held_wait_uses_the_previous_owners_declared_watchdog_timeout(lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    ls.lease(2, clock, name="old", fire_timeout=20).acquire()
    clock.sleeps.clear()
    ls.lease(2, clock, name="new").acquire()
    assert clock.sleeps == [8 + 20, 2]


def test_held_host_id_renewed_during_the_wait_is_busy_safety(lease_dir):
    """A host_id whose owner renews while we wait is never taken: -262, and we wrote nothing."""
    ls = make_lockspace(lease_dir)
    owner_clock = FakeClock(start=10)
    owner = ls.lease(2, owner_clock, name="owner")
    owner.acquire()
    clock = FakeClock()

    def owner_renews(_c):
        owner_clock.advance(2)
        owner.renew()

    clock.on_sleep.append(owner_renews)
    with pytest.raises(errors.HostIdBusy) as info:
        ls.lease(2, clock, name="thief").acquire()
    err = info.value
    assert err.code == -262
    assert "host name 'owner', generation 1" in str(err)
    assert clock.sleeps == [68]  # gave up after the held wait, never claimed
    assert ls.record(2) == owner.record


def test_concurrent_claim_during_the_2n_wait_is_detected_safety(lease_dir):
    """Two hosts claim the same free host_id: the one whose claim was overwritten must fail."""
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    other = ls.lease(4, FakeClock(start=77), name="other")

    def other_claims(_c):
        clock.on_sleep.clear()
        other_rec = other._claim(ls.record(4))
        other._write(other_rec, 1)

    clock.on_sleep.append(other_claims)
    with pytest.raises(errors.HostIdBusy, match="host name 'other'"):
        ls.lease(4, clock, name="me").acquire()
    assert ls.record(4).resource_name == "other"


def test_acquire_wait_can_be_aborted_before_writing(lease_dir):
    import threading

    ls = make_lockspace(lease_dir)
    ls.lease(2, FakeClock(), name="old").acquire()
    abort = threading.Event()
    abort.set()
    assert_refused(ls.path, Aborted, lambda: ls.lease(2, FakeClock(), name="new").acquire(abort))


# ---- renew / release / resume ------------------------------------------------------------------


def test_renew_rewrites_timestamp_with_a_host_dead_write_timeout(lease_dir):
    ls = make_lockspace(lease_dir, io_timeout=1)
    st = CountingStorage(ls.path)
    clock = FakeClock(start=100)
    lease = delta.DeltaLease(st, ls.loc, ls.sizes, 5, "n5", 1, fire_timeout=30, clock=clock)
    first = lease.acquire()
    clock.advance(2)
    st.ops.clear()
    new, area = lease.renew()
    assert new.timestamp == first.timestamp + 4 == 104  # claimed at 100, then 2N + 2
    assert replace(new, timestamp=0, checksum=0) == replace(first, timestamp=0, checksum=0)
    assert ls.record(5) == new
    assert len(area) == MiB
    assert st.ops == [("read", 0, MiB, 1), ("write", 4 * 512, 512, 8 + 30)]


def test_renew_writes_the_bitmap(lease_dir):
    ls = make_lockspace(lease_dir)
    lease = ls.lease(3, FakeClock())
    lease.acquire()
    bm = bytearray(256)
    ondisk.bitmap_set(bm, 5)
    lease.renew(bytes(bm))
    assert read_bytes(ls.path, 2 * 512 + 256, 256) == bytes(bm)
    lease.renew()  # keeps the last bitmap
    assert read_bytes(ls.path, 2 * 512 + 256, 1) == b"\x10"


def test_a_peer_carrying_our_bit_is_a_sender_only_while_it_does(lease_dir):
    """sanlock's request notification: host 3 renews with host 5's bit; host 5's scan sees
    host 3 as a sender; once host 3 renews without it, it is not."""
    ls = make_lockspace(lease_dir)
    requester = ls.lease(3, FakeClock())
    requester.acquire()
    bm = bytearray(256)
    ondisk.bitmap_set(bm, 5)
    requester.renew(bytes(bm))
    table = delta.HostStatusTable(ls.loc, ls.sizes, 1)
    area = read_bytes(ls.path, 0, MiB)
    changed = table.update(area, 10.0, 5)
    assert table.senders_to(area, 5, [3, 5, 7]) == [3]
    assert table.senders_to(area, 4, [3]) == []  # someone else's bit
    assert table.senders_to(area, 3, [3]) == []  # never ourselves
    assert 3 in changed or 3 in table.hosts
    requester.renew(bytes(256))
    assert table.senders_to(read_bytes(ls.path, 0, MiB), 5, [3]) == []


def test_renew_detects_our_host_id_taken_over_safety(lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    ours = ls.lease(2, clock, name="us")
    ours.acquire()
    thief = ls.lease(2, FakeClock(start=5000), name="them")
    thief._write(thief._claim(ls.record(2)), 1)
    err = assert_refused(ls.path, errors.RenewOwner, ours.renew)
    assert err.code == -260 and "'them', generation 2" in str(err)


def test_renew_detects_a_foreign_write_with_our_identity_safety(lease_dir):
    ls = make_lockspace(lease_dir)
    ours = ls.lease(2, FakeClock())
    ours.acquire()
    write_bytes(ls.path, 512, ondisk.sector(512, (0, replace(ours.record, timestamp=9).pack())))
    err = assert_refused(ls.path, errors.RenewDiff, ours.renew)
    assert err.code == -261


def test_release_frees_but_keeps_owner_generation_and_name(lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    lease = ls.lease(2, clock, name="n2")
    lease.acquire()
    freed = lease.release()
    rec = ls.record(2)
    assert rec == freed
    assert (rec.timestamp, rec.owner_id, rec.owner_generation, rec.resource_name) == (
        0,
        2,
        1,
        "n2",
    )
    # a free host_id is taken at once, by anyone, with the next generation
    clock.sleeps.clear()
    assert ls.lease(2, clock, name="other").acquire().owner_generation == 2
    assert clock.sleeps == [2]


def test_release_refuses_when_the_record_is_no_longer_ours(lease_dir):
    ls = make_lockspace(lease_dir)
    ours = ls.lease(2, FakeClock(), name="us")
    ours.acquire()
    thief = ls.lease(2, FakeClock(start=9000), name="them")
    thief._write(thief._claim(ls.record(2)), 1)
    assert_refused(ls.path, errors.RenewDiff, ours.release)


def test_resume_adopts_only_an_unchanged_record(lease_dir):
    ls = make_lockspace(lease_dir)
    lease = ls.lease(2, FakeClock())
    rec = lease.acquire()
    again = ls.lease(2, FakeClock(), record=rec)
    assert again.resume() == rec
    other = ls.lease(2, FakeClock(), record=replace(rec, timestamp=rec.timestamp + 1))
    with pytest.raises(errors.RenewDiff):
        other.resume()
    with pytest.raises(errors.RenewDiff):
        ls.lease(2, FakeClock()).resume()


# ---- host status --------------------------------------------------------------------------------


def _table(ls, n=1):
    return delta.HostStatusTable(ls.loc, ls.sizes, n)


def _scan(ls, table, now, local=0):
    return table.update(read_bytes(ls.path, 0, MiB), now, local)


def test_state_codes_match_sanlock():
    assert delta.STATE_CODES == {"unknown": 1, "free": 2, "live": 3, "fail": 4, "dead": 5}


def test_host_states_unknown_live_fail_dead_free(lease_dir):
    ls = make_lockspace(lease_dir)
    hclock = FakeClock(start=50)
    h2 = ls.lease(2, hclock)
    h2.acquire()
    table = _table(ls)
    assert _scan(ls, table, 1000.0) == []
    hs = table.hosts[2]
    assert hs.state(1000.0, 1) == delta.UNKNOWN  # never seen it change yet
    assert table.hosts[3].state(1000.0, 1) == delta.FREE
    hclock.advance(2)
    h2.renew()
    assert _scan(ls, table, 1002.0) == [2]
    assert hs.state(1002.0, 1) == delta.LIVE
    assert hs.state(1010.0, 1) == delta.LIVE  # quiet 8 = 8N: still live (sanlock: <=)
    assert hs.state(1010.5, 1) == delta.FAIL
    assert hs.state(1070.0, 1) == delta.FAIL  # 8N + 60
    assert hs.state(1070.5, 1) == delta.DEAD
    # scans without change do not make it live again
    assert _scan(ls, table, 1071.0) == []
    assert hs.state(1071.0, 1) == delta.DEAD
    h2.release()
    assert _scan(ls, table, 1072.0) == [2]
    assert hs.state(1072.0, 1) == delta.FREE


def test_never_changing_host_goes_unknown_then_fail_then_dead(lease_dir):
    ls = make_lockspace(lease_dir)
    ls.lease(2, FakeClock()).acquire()
    table = _table(ls)
    _scan(ls, table, 0.0 + 1)
    hs = table.hosts[2]
    assert [hs.state(t, 1) for t in (1, 9, 9.5, 69, 69.5)] == [
        delta.UNKNOWN,
        delta.UNKNOWN,
        delta.FAIL,
        delta.FAIL,
        delta.DEAD,
    ]


def test_each_host_is_judged_with_its_own_io_timeout_and_watchdog_timeout(lease_dir):
    ls = make_lockspace(lease_dir)
    clocks = {h: FakeClock(start=10) for h in (2, 3, 4)}
    leases = {
        2: ls.lease(2, clocks[2]),  # N=1, W=60: fail after 8, dead after 68
        3: delta.DeltaLease(ls.st, ls.loc, ls.sizes, 3, "h3", 10, clock=clocks[3]),  # N=10
        4: ls.lease(4, clocks[4], fire_timeout=20),  # N=1, W=20: dead after 28
    }
    for lease in leases.values():
        lease.acquire()
    table = _table(ls)
    _scan(ls, table, 100.0)
    for h, lease in leases.items():
        clocks[h].advance(5)
        lease.renew()
    _scan(ls, table, 101.0)
    at = 101.0 + 30
    assert table.hosts[2].state(at, 1) == delta.FAIL
    assert table.hosts[3].state(at, 1) == delta.LIVE
    assert table.hosts[4].state(at, 1) == delta.DEAD
    assert (table.hosts[3].io_timeout, table.hosts[4].fire_timeout) == (10, 20)
    assert table.hosts[2].dead_after(1) == 68 and table.hosts[4].dead_after(1) == 28


def test_local_host_is_always_live(lease_dir):
    ls = make_lockspace(lease_dir)
    ls.lease(2, FakeClock()).acquire()
    table = _table(ls)
    _scan(ls, table, 1.0, local=2)
    _scan(ls, table, 500.0, local=2)
    assert table.hosts[2].state(500.0, 1) == delta.LIVE


def test_corrupt_records_are_flagged_bad_but_tracked(lease_dir):
    ls = make_lockspace(lease_dir)
    ls.lease(6, FakeClock()).acquire()
    table = _table(ls)
    _scan(ls, table, 1.0)
    assert not table.hosts[6].lease_bad
    _corrupt(ls, 6, 0x98, b"\x07", fix_checksum=False)  # a new timestamp, checksum not updated
    _scan(ls, table, 2.0)
    assert table.hosts[6].lease_bad
    assert table.hosts[6].last_check == 2.0
    _corrupt(ls, 6, 0x98, b"\x08", fix_checksum=True)
    assert _scan(ls, table, 3.0) == [6]
    assert not table.hosts[6].lease_bad


def test_generation_or_owner_change_counts_as_alive(lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock(start=10)
    ls.lease(2, clock, name="a").acquire()
    table = _table(ls)
    _scan(ls, table, 1.0)
    ls.lease(2, clock, name="a").acquire()  # same timestamp second is possible: gen changes
    assert _scan(ls, table, 2.0) == [2]
    assert table.hosts[2].generation == 2


def test_host_status_default_n_for_records_without_io_timeout():
    hs = delta.HostStatus(7, timestamp=5, io_timeout=0, first_check=1.0, last_live=2.0)
    assert hs.state(2.0 + 80, 10) == delta.LIVE
    assert hs.state(2.0 + 81, 10) == delta.FAIL
    assert hs.dead_after(10) == timeouts.host_dead_seconds(10)
