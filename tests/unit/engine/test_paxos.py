"""Disk Paxos resource leases, step by step as sanlock 3.8.5 runs them: ballots and their numbers,
leader and dblock fields, release, owner liveness (IDLIVE, waiting out a silent owner exactly),
ballot conflicts, shared leases, requests, and refusing bad areas without writing."""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, replace

import pytest
from leasekit import (
    S512,
    CountingStorage,
    Lockspace,
    MiB,
    assert_refused,
    dblock_of,
    digest,
    join,
    leader_of,
    make_file,
    make_lockspace,
    make_resource,
    mode_block_of,
    read_bytes,
    write_bytes,
)
from vmlease_agent.engine import delta, errors, ondisk, paxos
from vmlease_agent.engine.clock import FakeClock
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import Dblock, Leader, Sizes


@dataclass
class Env:
    ls: Lockspace
    st: CountingStorage
    res: paxos.Resource
    clock: FakeClock

    @property
    def path(self) -> str:
        return self.res.path

    def join(self, host_id: int, table=None, **kw):
        return join(self.ls, host_id, self.clock, self.st, self.res, table, **kw)

    def leader(self) -> Leader:
        return leader_of(self.path)

    def dblock(self, host_id: int) -> Dblock:
        return dblock_of(self.path, host_id)

    def mode(self, host_id: int) -> ondisk.ModeBlock:
        return mode_block_of(self.path, host_id)

    def table(self) -> delta.HostStatusTable:
        return delta.HostStatusTable(self.ls.loc, self.ls.sizes, self.ls.io_timeout)

    def scan(self, table: delta.HostStatusTable, local: int = 0) -> None:
        table.update(read_bytes(self.ls.path, 0, MiB), self.clock.now(), local)

    def put_dblock(self, host_id: int, dblock: Dblock, mode: ondisk.ModeBlock | None = None):
        parts = [(0, dblock.pack())] + ([(128, mode.pack())] if mode else [])
        write_bytes(self.path, (2 + host_id - 1) * 512, ondisk.sector(512, *parts))

    def put_leader(self, leader: Leader) -> None:
        write_bytes(self.path, 0, ondisk.sector(512, (0, leader.pack())))


@pytest.fixture
def env(lease_dir) -> Env:
    ls = make_lockspace(lease_dir, io_timeout=1)
    st, res = make_resource(lease_dir, storage_cls=CountingStorage)
    return Env(ls, st, res, FakeClock(start=1000))


# ---- free acquire, fields, I/O ------------------------------------------------------------------


def test_free_acquire_commits_sanlocks_leader_and_dblock_fields(env):
    h3 = env.join(3)
    now = env.clock.monotime()
    env.clock.sleeps.clear()
    token = h3.acq.acquire()
    assert env.clock.sleeps == []  # a free lease needs no wait at all
    lr = env.leader()
    assert (lr.owner_id, lr.owner_generation, lr.lver, lr.timestamp) == (3, 1, 1, now)
    assert (lr.write_id, lr.write_generation, lr.write_timestamp) == (3, 1, now)
    assert (lr.flags, lr.num_hosts, lr.max_hosts, lr.io_timeout) == (0x10, 2000, 2000, 0)
    assert env.dblock(3) == Dblock(3, 3, 3, 1, now, 1, env.dblock(3).checksum, 0)
    assert env.dblock(3).checksum_ok()
    assert token.dblock.pack() == env.dblock(3).pack()
    assert token.leader == lr and token.lver == 1
    assert not env.mode(3).shared


def test_acquire_does_three_area_reads_and_three_sector_writes(env):
    """sanlock: "3 reads of align_size + 3 sector writes" for a free lease."""
    h3 = env.join(3)
    h3.acq.release(h3.acq.acquire())
    env.st.ops.clear()
    h3.acq.acquire()
    mine = (2 + 3 - 1) * 512
    assert [op[:3] for op in env.st.ops] == [
        ("read", 0, MiB),
        ("write", mine, 512),
        ("read", 0, MiB),
        ("write", mine, 512),
        ("read", 0, MiB),
        ("write", 0, 512),
    ]
    assert {op[3] for op in env.st.ops} == {1}  # every I/O bounded by io_timeout N


def test_ballot_numbers_3_then_2005_then_4003(env):
    """mbal = host_id first, then the next multiple of max_hosts above all mbals, plus host_id
    (reference 1.9f: 3 -> 2005 -> 4003 with max_hosts 2000)."""
    h3, h5 = env.join(3), env.join(5)
    h3.acq.release(h3.acq.acquire())
    assert env.dblock(3).mbal == 3
    h5.acq.release(h5.acq.acquire())
    assert (env.dblock(5).mbal, env.dblock(5).bal, env.dblock(5).lver) == (2005, 2005, 2)
    h3.acq.acquire()
    assert (env.dblock(3).mbal, env.dblock(3).lver) == (4003, 3)
    assert env.leader().lver == 3


def test_lver_increments_by_one_per_acquire_and_never_on_release(env):
    h2 = env.join(2)
    for lver in range(1, 6):
        token = h2.acq.acquire()
        assert env.leader().lver == lver == token.lver
        h2.acq.release(token)
        assert env.leader().lver == lver


def test_reacquire_by_the_owner_runs_a_ballot_without_waiting(env):
    h2 = env.join(2)
    h2.acq.acquire()
    env.clock.sleeps.clear()
    token = h2.acq.acquire()  # held by ourselves: no liveness check
    assert token.lver == 2 and env.clock.sleeps == []


def test_owner_of_an_earlier_generation_is_ourselves(env):
    h2 = env.join(2)
    h2.acq.acquire()
    h2.lease.acquire()  # we restarted: same host name, generation 2, lease never released
    acq = replace(h2.acq, generation=h2.generation)
    env.clock.sleeps.clear()
    token = acq.acquire()  # the leader names us at generation 1 < 2: no liveness check
    assert (token.generation, env.leader().owner_generation, token.lver) == (2, 2, 2)
    assert env.clock.sleeps == []


# ---- release --------------------------------------------------------------------------------


def test_release_frees_the_leader_and_marks_the_dblock_released(env):
    h3 = env.join(3)
    token = h3.acq.acquire()
    held_dblock = env.dblock(3)
    env.clock.advance(7)
    h3.acq.release(token)
    lr = env.leader()
    assert lr.timestamp == 0
    assert (lr.owner_id, lr.owner_generation, lr.lver) == (3, 1, 1)
    assert (lr.write_id, lr.write_generation, lr.write_timestamp) == (3, 1, int(env.clock.now()))
    released = env.dblock(3)
    assert released.flags == ondisk.DBLOCK_FL_RELEASED
    assert replace(released, flags=0) == held_dblock  # values kept for concurrent ballots
    assert released.checksum_ok()


def test_release_leaves_a_leader_written_by_another_host_untouched(env):
    """write_id != own: another host committed us; we only mark our dblock RELEASED, and that
    flag lets others take the lease at once although we are alive."""
    h3, h5 = env.join(3), env.join(5)
    token = h3.acq.acquire()
    committed_by_5 = replace(env.leader(), write_id=5, write_generation=1)
    env.put_leader(committed_by_5)
    table = env.table()
    h5.acq.owner_view = env.ls.view(table)
    env.scan(table)
    env.clock.advance(2)
    h3.lease.renew()
    env.scan(table)  # host 3 is live
    h3.acq.release(token)
    assert leader_of(env.path) == committed_by_5.sealed()
    assert env.dblock(3).flags == ondisk.DBLOCK_FL_RELEASED
    token5 = h5.acq.acquire()
    assert (token5.leader.owner_id, token5.lver) == (5, 2)


def test_live_owner_that_did_not_release_blocks_although_another_host_wrote_the_leader(env):
    h3, h5 = env.join(3), env.join(5)
    h3.acq.acquire()
    env.put_leader(replace(env.leader(), write_id=5, write_generation=1))
    table = env.table()
    h5.acq.owner_view = env.ls.view(table)
    env.scan(table)
    env.clock.advance(2)
    h3.lease.renew()
    env.scan(table)
    assert_refused(env.path, errors.AcquireIdLive, h5.acq.acquire)


def test_release_refuses_a_leader_with_another_lver(env):
    h3 = env.join(3)
    token = h3.acq.acquire()
    env.put_leader(replace(env.leader(), lver=9))
    before = read_bytes(env.path, 0, 512)
    with pytest.raises(errors.ReleaseLver, match="lease version on disk is 9, ours is 1"):
        h3.acq.release(token)
    assert read_bytes(env.path, 0, 512) == before


def test_release_refuses_a_lease_already_free_or_owned_by_another(env):
    h3 = env.join(3)
    token = h3.acq.acquire()
    env.put_leader(replace(env.leader(), timestamp=0))
    with pytest.raises(errors.ReleaseOwner, match="already free"):
        h3.acq.release(token)
    env.put_leader(replace(token.leader, owner_id=4))
    with pytest.raises(errors.ReleaseOwner, match="owned by host 4 generation 1, not by us"):
        h3.acq.release(token)


# ---- owner liveness ---------------------------------------------------------------------------


def test_live_owner_fails_at_once_with_idlive_using_the_monitor_table_safety(env):
    h3 = env.join(3)
    h3.acq.acquire()
    table = env.table()
    h5 = env.join(5, table=table)
    env.scan(table, local=5)
    env.clock.advance(2)
    h3.lease.renew()
    env.scan(table, local=5)
    env.clock.sleeps.clear()
    err = assert_refused(env.path, errors.AcquireIdLive, h5.acq.acquire)
    assert env.clock.sleeps == []  # immediate: no wait
    assert err.code == -243
    assert f"disk lease LS:RES at {env.path}:0 is held by host 3 (" in str(err)
    assert "host3, generation 1" in str(err)
    assert "last renewed 0s ago" in str(err)


def test_live_owner_fails_with_idlive_after_one_poll_without_a_table_safety(env):
    h3 = env.join(3)
    h3.acq.acquire()
    h5 = env.join(5)
    env.clock.sleeps.clear()
    env.clock.on_sleep.append(lambda c: h3.lease.renew())  # the owner keeps renewing
    err = assert_refused(env.path, errors.AcquireIdLive, h5.acq.acquire)
    assert env.clock.sleeps == [1.0]
    assert "renewing its host_id" in str(err)


@pytest.mark.parametrize(("owner_w", "needed"), [(60, 68), (20, 28)])
def test_silent_owner_is_waited_out_exactly_8n_plus_w_safety(env, owner_w, needed):
    """The owner (host 3, N=1) stops renewing. Host 5 must not write a single ballot block until
    more than 8N+W seconds have passed since it started watching, then it wins at the first poll
    after that. A hook checks at every poll that nothing was written to the resource."""
    h3 = env.join(3, fire_timeout=owner_w)
    h3.acq.acquire()
    h5 = env.join(5)
    before = digest(env.path)
    start = env.clock.now()
    waits: list[float] = []
    h5.acq.on_wait = lambda owner, waited: waits.append(waited)

    def owner_still_owns(clock):
        if clock.now() - start <= needed:
            assert digest(env.path) == before, "resource written before the owner was dead"
            assert env.leader().owner_id == 3

    env.clock.on_sleep.append(owner_still_owns)
    first_write = []
    env.st.before_write.append(lambda off, data: first_write.append(env.clock.now() - start))
    env.clock.sleeps.clear()
    token = h5.acq.acquire()
    assert env.clock.sleeps == [1.0] * (needed + 1)
    assert first_write[0] == needed + 1
    assert waits == [float(i) for i in range(1, needed + 1)]
    assert (token.leader.owner_id, token.lver, env.leader().owner_id) == (5, 2, 5)


def test_owner_renewing_during_the_wait_gets_idlive_safety(env):
    h3 = env.join(3)
    h3.acq.acquire()
    h5 = env.join(5)
    start = env.clock.now()

    def owner_wakes(clock):
        if clock.now() - start == 30:
            h3.lease.renew()

    env.clock.on_sleep.append(owner_wakes)
    env.clock.sleeps.clear()
    assert_refused(env.path, errors.AcquireIdLive, h5.acq.acquire)
    assert len(env.clock.sleeps) == 30


def test_monitor_that_saw_the_owner_live_starts_the_wait_at_its_last_change(env):
    h3 = env.join(3)
    h3.acq.acquire()
    table = env.table()
    h5 = env.join(5, table=table)
    env.scan(table)
    env.clock.advance(2)
    h3.lease.renew()
    env.scan(table)  # host 3 last seen changing now
    env.clock.advance(50)  # silent since
    env.scan(table)
    env.clock.sleeps.clear()
    h5.acq.acquire()
    assert len(env.clock.sleeps) == 69 - 50  # 8N+W counted from the monitor's last_live


def test_owner_that_freed_its_host_id_lost_the_lease(env):
    h3 = env.join(3)
    h3.acq.acquire()
    h3.lease.release()
    h5 = env.join(5)
    env.clock.sleeps.clear()
    assert h5.acq.acquire().lver == 2
    assert env.clock.sleeps == []


def test_owner_that_rejoined_with_a_new_generation_lost_the_lease(env):
    h3 = env.join(3)
    h3.acq.acquire()
    h3.lease.acquire()  # generation 2: the generation-1 holder is gone
    h5 = env.join(5)
    env.clock.sleeps.clear()
    assert h5.acq.acquire().leader.owner_id == 5
    assert env.clock.sleeps == []


def test_owner_judged_by_an_older_generations_record_is_refused_not_guessed_safety(env):
    """Host 3 holds the lease at generation 3 (N=1, W=60). The lockspace is then re-initialised
    and another node takes host_id 3 (generation 1, W=5) and goes silent. That record says
    nothing about the owner: waiting out its 8+5 s would take the lease while the real owner's
    watchdog (60 s) may not have fired. The acquire must refuse without writing anything."""
    h3 = env.join(3)
    for _ in range(2):
        h3.lease.acquire()  # restarts: generation 3
    replace(h3.acq, generation=h3.generation).acquire()
    delta.init_lockspace(env.ls.st, env.ls.loc, env.ls.sizes, 1, force=True)
    env.ls.lease(3, env.clock, name="intruder", fire_timeout=5).acquire()  # generation 1
    h5 = env.join(5)
    env.clock.sleeps.clear()
    err = assert_refused(env.path, errors.OwnerRecordOlder, h5.acq.acquire)
    assert err.code == -243
    assert "held by host 3 generation 3" in str(err)
    assert "older record for host_id 3 (generation 1)" in str(err)
    assert f"vmlease direct init -r LS:RES:{env.path}:0" in str(err)
    assert env.leader().owner_generation == 3


def test_nowait_reports_owned_retry(env):
    h3 = env.join(3)
    h3.acq.acquire()
    h5 = env.join(5)
    err = assert_refused(env.path, errors.AcquireOwnedRetry, lambda: h5.acq.acquire(nowait=True))
    assert err.code == -247


def test_leader_change_during_the_wait_restarts_the_acquire(env):
    h3 = env.join(3)
    token = h3.acq.acquire()
    h5 = env.join(5)
    start = env.clock.now()

    def owner_releases(clock):
        if clock.now() - start == 5:
            h3.acq.release(token)

    env.clock.on_sleep.append(owner_releases)
    env.clock.sleeps.clear()
    assert h5.acq.acquire().lver == 2
    assert len(env.clock.sleeps) == 5


def test_held_lease_without_a_lockspace_view_says_what_to_give(env):
    h3 = env.join(3)
    h3.acq.acquire()
    acq = paxos.Acquirer(env.st, env.res, 5, 1, 1, clock=env.clock)
    err = assert_refused(env.path, errors.LeaseError, acq.acquire)
    assert "-s LS:0:PATH:OFFSET" in str(err)


def test_acquire_lver_mismatch(env):
    h3 = env.join(3)
    err = assert_refused(env.path, errors.AcquireLver, lambda: h3.acq.acquire(acquire_lver=4))
    assert err.code == -240
    assert h3.acq.acquire(acquire_lver=0).lver == 1


# ---- ballot conflicts ---------------------------------------------------------------------------


def _inject_once(env, host_id: int, fn):
    """Run ``fn`` right after ``host_id``'s first dblock write (between phase-1 write and read)."""
    mine = (2 + host_id - 1) * 512
    done = []

    def hook(off, _data):
        if off == mine and not done:
            done.append(1)
            fn()

    env.st.after_write.append(hook)


def test_higher_mbal_seen_retries_with_mbal_plus_max_hosts(env):
    h3 = env.join(3)
    h3.acq.rand = lambda: 0.25
    _inject_once(env, 3, lambda: env.put_dblock(7, Dblock(mbal=2007, lver=1)))
    env.clock.sleeps.clear()
    token = h3.acq.acquire()
    assert env.clock.sleeps == [0.25, 0.25]  # 3 < 2007, 2003 < 2007, 4003 wins
    assert (token.dblock.mbal, token.lver, token.leader.owner_id) == (4003, 1, 3)


def test_competitor_commits_first_gives_acquire_owned_safety(env):
    h3 = env.join(3)
    h3.acq.rand = lambda: 0.5

    def competitor_wins():
        env.put_dblock(7, Dblock(mbal=2007, bal=2007, inp=7, inp2=1, inp3=55, lver=1))
        env.put_leader(
            replace(env.leader(), owner_id=7, owner_generation=1, lver=1, timestamp=55, write_id=7)
        )

    _inject_once(env, 3, competitor_wins)
    with pytest.raises(errors.AcquireOwned) as info:
        h3.acq.acquire()
    err = info.value
    assert err.code == -244
    lr = env.leader()
    assert (lr.owner_id, lr.write_id) == (7, 7)  # we never overwrote the winner's leader


def test_newer_lver_seen_aborts_the_ballot_safety(env):
    h3 = env.join(3)
    h7 = env.join(7)
    h3.acq.rand = lambda: 0.5
    table = env.table()
    h3.acq.owner_view = env.ls.view(table)
    env.scan(table)
    env.clock.advance(2)
    h7.lease.renew()
    env.scan(table)

    def competitor_already_at_lver_2():
        env.put_dblock(7, Dblock(mbal=7, bal=7, inp=7, inp2=1, inp3=9, lver=2))
        env.put_leader(
            replace(env.leader(), owner_id=7, owner_generation=1, lver=2, timestamp=9, write_id=7)
        )

    _inject_once(env, 3, competitor_already_at_lver_2)
    with pytest.raises(errors.AcquireIdLive):
        h3.acq.acquire()
    assert env.clock.sleeps[-1] == 0.5  # the -212 retry sleep, then restart -> owner 7 live
    assert env.leader().owner_id == 7


def test_ballot_adopts_an_earlier_proposal_and_reports_acquire_other_safety(env):
    """Host 5 crashed after phase 2 (its value may have been seen as chosen): our ballot must
    carry its value forward, commit host 5 as owner, and tell us we did not get the lease."""
    h3 = env.join(3)
    env.put_dblock(5, Dblock(mbal=5, bal=5, inp=5, inp2=1, inp3=777, lver=1))
    with pytest.raises(errors.AcquireOther) as info:
        h3.acq.acquire()
    err = info.value
    assert err.code == -245
    lr = env.leader()
    assert (lr.owner_id, lr.owner_generation, lr.timestamp, lr.lver) == (5, 1, 777, 1)
    assert (lr.write_id, lr.write_generation) == (3, 1)
    d3 = env.dblock(3)
    assert (d3.mbal, d3.bal, d3.inp, d3.inp2, d3.inp3) == (2003, 2003, 5, 1, 777)


def test_stale_dblocks_of_older_versions_are_ignored(env):
    h3 = env.join(3)
    h3.acq.release(h3.acq.acquire())
    env.put_dblock(9, Dblock(mbal=9, bal=9, inp=9, inp2=1, inp3=5, lver=1))  # older lver
    h3.acq.rand = lambda: 0.0
    token = h3.acq.acquire()
    assert (token.leader.owner_id, token.lver) == (3, 2)


def test_corrupt_dblock_is_skipped_in_a_ballot_but_refused_on_the_first_read(env):
    h3 = env.join(3)
    bad = bytearray(Dblock(mbal=99, lver=1).pack())
    bad[0] ^= 1
    write_bytes(env.path, (2 + 8 - 1) * 512, bytes(bad))
    err = assert_refused(env.path, errors.DblockChecksum, h3.acq.acquire)
    assert err.code == -214 and "host_id 8" in str(err)
    # a dblock that goes bad during the ballot is ignored (sanlock: `continue`)
    write_bytes(env.path, (2 + 8 - 1) * 512, bytes(512))
    _inject_once(env, 3, lambda: write_bytes(env.path, (2 + 8 - 1) * 512, bytes(bad)))
    assert h3.acq.acquire().lver == 1


# ---- retract after a failed acquire ------------------------------------------------------------


def _fail_write(env: Env, host_id: int, when) -> list[int]:
    """After host ``host_id`` writes a sector for which ``when(offset, data)`` holds, the write
    has landed but reports EIO (as a path failure after the data reached the array can)."""
    failed: list[int] = []
    mine = (2 + host_id - 1) * 512

    def hook(offset: int, data: bytes) -> None:
        if offset in (0, mine) and when(offset, data):
            failed.append(offset)
            raise errors.IoFailed(op="write", length=len(data), path=env.path, offset=offset,
                                  detail="Input/output error")  # fmt: skip

    env.st.after_write.append(hook)
    return failed


def test_commit_error_retracts_our_lease_so_it_is_not_orphaned(env):
    """Our commit landed but reported EIO: we do not hold the lease, so it must not stay held
    on disk in our name (others would get IDLIVE while we live)."""
    h3, h5 = env.join(3), env.join(5)
    failed = _fail_write(env, 3, lambda off, data: off == 0 and not failed)
    with pytest.raises(errors.IoFailed) as info:
        h3.acq.acquire()
    assert not getattr(info.value, "__notes__", None)  # the retract itself succeeded
    lr = env.leader()
    assert (lr.lver, lr.owner_id, lr.write_id, lr.timestamp) == (1, 3, 3, 0)
    mine = env.dblock(3)
    assert mine.flags == ondisk.DBLOCK_FL_RELEASED and (mine.bal, mine.inp, mine.lver) == (3, 3, 1)
    env.clock.on_sleep.append(lambda c: h3.lease.renew())  # host 3 is alive
    env.clock.sleeps.clear()
    assert h5.acq.acquire().lver == 2
    assert env.clock.sleeps == []


def test_phase2_error_after_another_host_committed_our_value_is_retracted(env):
    """Our phase-2 write reports EIO after landing; meanwhile host 5's ballot adopted our value and
    committed us. The retract keeps our dblock's values (never going back) and marks it RELEASED,
    so host 5 may take the lease from us although we are alive."""
    h3, h5 = env.join(3), env.join(5)
    committed_by_5: list[errors.LeaseError] = []

    def phase2(off: int, data: bytes) -> bool:
        if off == 0 or ondisk.Dblock.unpack(data).bal == 0 or failed:
            return False
        with pytest.raises(errors.AcquireOther) as info:
            h5.acq.acquire()  # adopts our value and commits host 3
        committed_by_5.append(info.value)
        return True

    failed = _fail_write(env, 3, phase2)
    with pytest.raises(errors.IoFailed):
        h3.acq.acquire()
    assert committed_by_5
    lr = env.leader()
    assert (lr.lver, lr.owner_id, lr.write_id) == (1, 3, 5) and lr.timestamp != 0  # left alone
    mine = env.dblock(3)
    assert mine.flags == ondisk.DBLOCK_FL_RELEASED and (mine.bal, mine.inp) == (3, 3)
    env.clock.on_sleep.append(lambda c: h3.lease.renew())  # host 3 is alive
    token = h5.acq.acquire()
    assert (token.lver, token.leader.owner_id) == (2, 5)


def test_failed_retract_is_reported_on_the_error(env):
    h3 = env.join(3)
    _fail_write(env, 3, lambda off, data: off == 0 or ondisk.Dblock.unpack(data).flags)
    with pytest.raises(errors.IoFailed) as info:
        h3.acq.acquire()
    (note,) = info.value.__notes__
    assert "retracting our ballot for lver 1 failed too" in note
    assert "may stay held on disk in our name (host 3 generation 1)" in note


def test_failure_before_any_phase2_write_needs_no_retract(env):
    h3 = env.join(3)
    writes: list[int] = []
    env.st.before_write.append(lambda off, data: writes.append(off))
    _fail_write(env, 3, lambda off, data: True)
    with pytest.raises(errors.IoFailed):
        h3.acq.acquire()
    assert writes == [(2 + 3 - 1) * 512]  # the phase-1 write only: nothing to retract
    assert env.dblock(3).flags == 0


# ---- shared leases ----------------------------------------------------------------------------


def test_shared_acquire_leaves_the_leader_free_and_a_shared_mode_block(env):
    h3 = env.join(3)
    leader_writes = []
    env.st.before_write.append(
        lambda off, data: leader_writes.append(Leader.unpack(data)) if off == 0 else None
    )
    token = h3.acq.acquire(shared=True)
    assert [bool(lw.flags & ondisk.LFL_SHORT_HOLD) for lw in leader_writes] == [True, False]
    lr = env.leader()
    assert (lr.timestamp, lr.owner_id, lr.lver, lr.write_id, lr.flags) == (0, 3, 1, 3, 0x10)
    d = env.dblock(3)
    assert d.flags == ondisk.DBLOCK_FL_RELEASED and d.inp == 3 and d.checksum_ok()
    assert env.mode(3) == ondisk.ModeBlock(ondisk.MBLOCK_SHARED, 1)
    assert token.shared


def test_two_shared_holders_and_read_owners(env):
    h3, h5 = env.join(3), env.join(5)
    h3.acq.acquire(shared=True)
    t5 = h5.acq.acquire(shared=True)
    assert t5.lver == 2
    _, owners = paxos.read_owners(env.st, env.res, 1)
    assert owners == [paxos.Owner(3, 1, True), paxos.Owner(5, 1, True)]


def test_shared_release_zeroes_the_mode_block_and_keeps_the_dblock(env):
    h3 = env.join(3)
    token = h3.acq.acquire(shared=True)
    d = env.dblock(3)
    h3.acq.release(token)
    assert not env.mode(3).shared and env.mode(3).generation == 0
    assert env.dblock(3) == d
    assert env.leader().timestamp == 0


def test_exclusive_acquire_blocked_by_live_shared_holders_safety(env):
    h3, h5, h7 = env.join(3), env.join(5), env.join(7)
    h3.acq.acquire(shared=True)
    h5.acq.acquire(shared=True)
    with pytest.raises(errors.SharedHeld) as info:
        h7.acq.acquire()
    err = info.value
    assert err.code == -errno.EAGAIN == -11
    assert "held shared by host(s) 3, 5" in str(err)
    assert env.leader().timestamp == 0  # the leader we won was released again
    assert env.mode(3).shared and env.mode(5).shared
    assert env.dblock(7).flags == ondisk.DBLOCK_FL_RELEASED


@pytest.mark.parametrize("how", ["freed", "new generation", "silent past host_dead"])
def test_exclusive_acquire_clears_dead_shared_holders(env, how):
    h3 = env.join(3)
    h3.acq.acquire(shared=True)
    table = env.table()
    h7 = env.join(7, table=table)
    if how == "freed":
        h3.lease.release()
    elif how == "new generation":
        h3.lease.acquire()
    env.scan(table)
    if how == "silent past host_dead":
        env.clock.advance(69)
        env.scan(table)
    token = h7.acq.acquire()
    assert token.leader.owner_id == 7 and env.leader().timestamp != 0
    assert read_bytes(env.path, (2 + 3 - 1) * 512, 512) == bytes(512)  # whole sector zeroed


def test_shared_holder_not_yet_dead_still_blocks(env):
    h3 = env.join(3)
    h3.acq.acquire(shared=True)
    table = env.table()
    h7 = env.join(7, table=table)
    env.scan(table)
    env.clock.advance(68)  # quiet exactly 8N+W: not dead yet
    env.scan(table)
    with pytest.raises(errors.SharedHeld):
        h7.acq.acquire()
    assert env.mode(3).shared


# ---- convert ------------------------------------------------------------------------------------


def test_convert_to_exclusive_keeps_the_shared_mark_through_the_ballot(env):
    h3 = env.join(3)
    shared = h3.acq.acquire(shared=True)
    marks: list[bool] = []
    mine = (2 + 3 - 1) * 512
    env.st.before_write.append(
        lambda off, data: (
            marks.append(ondisk.ModeBlock.unpack(data, 128).shared) if off == mine else None
        )
    )
    token = h3.acq.to_exclusive(shared)
    assert marks == [True, True, False]  # phase 1, phase 2 kept it; cleared once the lease won
    assert not token.shared and token.lver == 2
    lr = env.leader()
    assert (lr.owner_id, lr.lver) == (3, 2) and lr.timestamp != 0
    assert not env.mode(3).shared and env.dblock(3).flags == 0


def test_convert_to_exclusive_refused_while_another_host_holds_it_shared_safety(env):
    """Refused with -EAGAIN, and still shared on disk: the other sharer's exclusive attempt must
    keep seeing our SHARED mark (a release would have cleared it: two exclusive holders)."""
    h3, h5 = env.join(3), env.join(5)
    shared = h3.acq.acquire(shared=True)
    h5.acq.acquire(shared=True)
    with pytest.raises(errors.SharedHeld) as info:
        h3.acq.to_exclusive(shared)
    assert info.value.code == -errno.EAGAIN and "held shared by host(s) 5" in str(info.value)
    assert env.leader().timestamp == 0  # the leader won for the check was freed
    assert env.mode(3) == ondisk.ModeBlock(ondisk.MBLOCK_SHARED, 1) and env.mode(5).shared
    with pytest.raises(errors.SharedHeld, match=r"host\(s\) 3\b"):
        h5.acq.acquire()  # host 5's exclusive attempt still sees us


def test_convert_to_shared_marks_shared_before_freeing_the_leader_safety(env):
    """No moment in which another host could read the lease free: the SHARED mark lands first."""
    h3, h5 = env.join(3), env.join(5)
    token = h3.acq.acquire()
    seen: list[str] = []
    names = {0: "leader", (2 + 3 - 1) * 512: "mine"}
    env.st.before_write.append(lambda off, data: seen.append(names[off]) if off in names else None)
    h3.acq.to_shared(token)
    assert seen == ["mine", "leader"]
    assert token.shared and env.leader().timestamp == 0
    assert env.mode(3) == ondisk.ModeBlock(ondisk.MBLOCK_SHARED, 1)
    with pytest.raises(errors.SharedHeld):
        h5.acq.acquire()
    assert h5.acq.acquire(shared=True).shared  # sharing it is fine


# ---- the lock value block -----------------------------------------------------------------------

LVB_AT = ondisk.LVB_SECTOR * 512


def test_lvb_is_read_at_acquire_and_written_at_exclusive_release(env):
    write_bytes(env.path, LVB_AT, b"old value".ljust(512, b"\0"))
    h3 = env.join(3)
    assert h3.acq.acquire().lvb is None  # not asked for
    h3.acq.release(env_token := h3.acq.acquire(lvb=True))
    assert env_token.lvb is not None and env_token.lvb.startswith(b"old value")
    token = h3.acq.acquire(lvb=True)
    token.set_lvb(b"new")  # a prefix, the rest kept: sanlock's memcpy
    assert token.get_lvb(9) == b"new value" and len(token.get_lvb()) == 512
    assert read_bytes(env.path, LVB_AT, 9) == b"old value"  # in memory until the release
    h3.acq.release(token)
    assert read_bytes(env.path, LVB_AT, 9) == b"new value"


def test_lvb_is_not_written_by_a_shared_holder(env):
    h3 = env.join(3)
    token = h3.acq.acquire(shared=True, lvb=True)
    token.set_lvb(b"shared")
    h3.acq.release(token)
    assert read_bytes(env.path, LVB_AT, 512) == bytes(512)


def test_lvb_is_written_when_converting_to_shared(env):
    h3 = env.join(3)
    token = h3.acq.acquire(lvb=True)
    token.set_lvb(b"before sharing")
    h3.acq.to_shared(token)
    assert read_bytes(env.path, LVB_AT, 14) == b"before sharing"
    assert h3.acq.to_exclusive(token).get_lvb(6) == b"before"  # the copy goes along


def test_lvb_refusals(env):
    h3 = env.join(3)
    without = h3.acq.acquire()
    err = assert_refused(env.path, errors.LvbNotAcquired, lambda: without.set_lvb(b"x"))
    assert err.code == -errno.EINVAL
    with pytest.raises(errors.LvbNotAcquired):
        without.get_lvb()
    h3.acq.release(without)
    token = h3.acq.acquire(lvb=True)
    with pytest.raises(errors.LvbTooBig) as info:
        token.set_lvb(bytes(513))
    assert info.value.code == -errno.E2BIG and not token.lvb_dirty


def test_lvb_write_error_is_raised_after_the_release(env):
    h3, h5 = env.join(3), env.join(5)
    token = h3.acq.acquire(lvb=True)
    token.set_lvb(b"lost")

    def fail(off: int, data: bytes) -> None:
        if off == LVB_AT:
            raise errors.IoFailed(op="write", length=512, path=env.path, offset=off,
                                  detail="Input/output error")  # fmt: skip

    env.st.before_write.append(fail)
    with pytest.raises(errors.LvbNotWritten, match="the release went ahead"):
        h3.acq.release(token)
    assert env.leader().timestamp == 0  # released all the same, as sanlock
    assert h5.acq.acquire(lvb=True).get_lvb(4) == bytes(4)


# ---- requests -----------------------------------------------------------------------------------


def _request(env) -> ondisk.RequestRecord:
    return ondisk.RequestRecord.unpack(read_bytes(env.path, 512, 24))


def test_request_next_lver_on_a_held_lease(env):
    env.join(3).acq.acquire()
    paxos.write_request(env.st, env.res, 0, ondisk.REQ_FORCE, 1)
    assert _request(env) == ondisk.RequestRecord(lver=2, force_mode=1)
    paxos.write_request(env.st, env.res, 2, ondisk.REQ_GRACEFUL, 1)  # equal lver is allowed
    assert _request(env).force_mode == 2
    paxos.write_request(env.st, env.res, 0, 0, 1)  # lver 0 + force 0 clears
    assert _request(env) == ondisk.RequestRecord()


def test_request_for_an_old_lver_is_refused(env):
    env.join(3).acq.acquire()
    err = assert_refused(
        env.path, errors.RequestOld, lambda: paxos.write_request(env.st, env.res, 1, 1, 1)
    )
    assert err.code == -272


def test_request_below_a_pending_newer_request_is_refused(env):
    env.join(3).acq.acquire()
    paxos.write_request(env.st, env.res, 5, 1, 1)
    err = assert_refused(
        env.path, errors.RequestLver, lambda: paxos.write_request(env.st, env.res, 3, 1, 1)
    )
    assert err.code == -273


def test_request_on_a_free_lease_writes_nothing(env):
    before = digest(env.path)
    leader = paxos.write_request(env.st, env.res, 0, 1, 1)
    assert leader.timestamp == 0 and digest(env.path) == before


def test_request_with_a_bad_request_record(env):
    env.join(3).acq.acquire()
    write_bytes(env.path, 512, bytes(512))
    assert_refused(
        env.path, errors.RequestMagic, lambda: paxos.write_request(env.st, env.res, 0, 1, 1)
    )


# ---- bad areas --------------------------------------------------------------------------------


def _acq(st, res, host_id=1):
    return paxos.Acquirer(st, res, host_id, 1, 1, clock=FakeClock())


def _patch_leader(path, pos, value, fix=True):
    rec = bytearray(read_bytes(path, 0, 512))
    rec[pos : pos + len(value)] = value
    if fix:
        rec[0xA8:0xAC] = ondisk.crc(bytes(rec[:168])).to_bytes(4, "little")
    write_bytes(path, 0, bytes(rec))


@pytest.mark.parametrize(
    ("pos", "value", "fix", "exc", "match"),
    [
        (0, b"\0\0\0\0", True, errors.LeaderMagic, "initialise it with `vmlease direct init -r"),
        (4, b"\x04\0\x07\0", True, errors.LeaderVersion, "not recognised"),
        (0x38, b"XX", True, errors.LeaderLockspace, "belongs to lockspace 'XX'"),
        (0x68, b"OTHER", True, errors.LeaderResource, "is resource 'OTHER', not 'RES'"),
        (0x30, b"\x09", False, errors.LeaderChecksum, "checksum mismatch"),
        (0x0C, (2048).to_bytes(4, "little"), True, errors.LeaderSectorSize, "sector size 2048"),
    ],
)
def test_bad_leaders_are_refused_and_nothing_written(env, pos, value, fix, exc, match):
    _patch_leader(env.path, pos, value, fix)
    err = assert_refused(env.path, exc, _acq(env.st, env.res).acquire)
    assert match in str(err) and f"{env.path}:0" in str(err)


def test_cleared_lease_and_lockspace_area_are_not_resources(lease_dir):
    path = make_file(lease_dir, "r")
    res = paxos.Resource("LS", "RES", path, 0)
    with Storage(path) as st:
        paxos.init_resource(st, res, S512, clear=True)
        assert leader_of(path).magic == ondisk.PAXOS_DISK_CLEAR
        err = assert_refused(path, errors.LeaderMagic, _acq(st, res).acquire)
        assert "cleared (init -z)" in str(err)
    ls = make_lockspace(lease_dir)
    res_ls = paxos.Resource("LS", "RES", ls.path, 0)
    err = assert_refused(ls.path, errors.LeaderMagic, _acq(ls.st, res_ls).acquire)
    assert "holds a lockspace, not a resource" in str(err)


def test_uninitialised_area_is_refused(lease_dir):
    path = make_file(lease_dir, "zeros")
    with Storage(path) as st:
        err = assert_refused(
            path, errors.LeaderMagic, _acq(st, paxos.Resource("LS", "R", path, 0)).acquire
        )
        assert err.code == -223


def test_host_id_beyond_num_hosts_is_refused(lease_dir):
    st, res = make_resource(lease_dir, num_hosts=4)
    assert leader_of(res.path).num_hosts == 4
    err = assert_refused(res.path, errors.LeaderNumHosts, _acq(st, res, host_id=5).acquire)
    assert err.code == -228 and "re-initialise it with a larger -n" in str(err)
    assert _acq(st, res, host_id=4).acquire().lver == 1


def test_truncated_resource_is_refused(env):
    os.truncate(env.path, 4096)
    err = assert_refused(env.path, errors.Truncated, _acq(env.st, env.res).acquire)
    assert "storage ends at 4096 bytes" in str(err)


@pytest.mark.parametrize("offset", [512, 100, MiB + 4096])
def test_unaligned_resource_offsets_are_refused(lease_dir, offset):
    path = make_file(lease_dir, "r", 3 * MiB)
    with Storage(path) as st:
        res = paxos.Resource("LS", "RES", path, offset)
        err = assert_refused(
            path, errors.OffsetNotAligned, lambda: paxos.init_resource(st, res, S512)
        )
        assert "is not a multiple of the 1M align size" in str(err)
        assert f"{path}:{offset}" in str(err) and "use an offset such as" in str(err)
        # acquire: nothing to find there (-223), or not even a sector boundary
        exc = errors.OffsetNotAligned if offset % 512 else errors.LeaderMagic
        assert_refused(path, exc, _acq(st, res).acquire)


def test_lease_found_at_an_unaligned_offset_is_refused(lease_dir):
    path = make_file(lease_dir, "r", 3 * MiB)
    with Storage(path) as st:
        paxos.init_resource(st, paxos.Resource("LS", "RES", path, MiB), S512)
        data = read_bytes(path, MiB, MiB)
        write_bytes(path, MiB + 4096, data[: 2 * 512])  # a copy of the head, 4 KiB further
        res = paxos.Resource("LS", "RES", path, MiB + 4096)
        assert_refused(path, errors.OffsetNotAligned, _acq(st, res).acquire)


def test_512_resource_on_4k_storage_is_refused(loop_device_4k):
    with Storage(loop_device_4k) as st:
        res = paxos.Resource("LS", "RES", loop_device_4k, 0)
        before = digest(loop_device_4k)
        with pytest.raises(errors.LeaderSectorSize, match="use -Z 4096"):
            paxos.init_resource(st, res, S512)
        assert digest(loop_device_4k) == before
        paxos.init_resource(st, res, Sizes(4096, MiB))
        token = _acq(st, res, host_id=250).acquire()
        assert token.lver == 1 and token.sizes == Sizes(4096, MiB)
        d = dblock_of(loop_device_4k, 250, sector_size=4096)
        assert (d.inp, d.mbal) == (250, 250)


def test_names_over_48_bytes_are_refused_at_init(lease_dir):
    path = make_file(lease_dir, "r")
    with Storage(path) as st:
        for res in (paxos.Resource("L" * 49, "R", path, 0), paxos.Resource("L", "R" * 49, path, 0)):
            assert_refused(path, errors.NameTooLong, lambda r=res: paxos.init_resource(st, r, S512))


def test_init_num_hosts_and_clear_fields(lease_dir):
    path = make_file(lease_dir, "r")
    with Storage(path) as st:
        res = paxos.Resource("LS", "RES", path, 0)
        paxos.init_resource(st, res, S512, num_hosts=10)
        assert (leader_of(path).num_hosts, leader_of(path).max_hosts) == (10, 2000)
        paxos.init_resource(st, res, S512, num_hosts=5000)  # capped at max_hosts
        assert leader_of(path).num_hosts == 2000
        paxos.init_resource(st, res, S512, clear=True, clock=FakeClock(start=4242), force=True)
        lr = leader_of(path)
        assert (lr.magic, lr.write_timestamp) == (ondisk.PAXOS_DISK_CLEAR, 4242)


@pytest.mark.parametrize(("sector", "align"), [(4096, 2 * MiB), (4096, 8 * MiB)])
def test_4k_resources_work_on_files(lease_dir, sector, align):
    sizes = Sizes(sector, align)
    ls = make_lockspace(lease_dir, sizes=sizes)
    st, res = make_resource(lease_dir, sizes=sizes)
    h = join(ls, sizes.max_hosts, FakeClock(), st, res)
    token = h.acq.acquire()
    assert token.sizes == sizes and leader_of(res.path).flags & 0xF0 == sizes.align_flag
    d = dblock_of(res.path, sizes.max_hosts, sector_size=sector)
    assert d.mbal == sizes.max_hosts and d.lver == 1
    h.acq.release(token)


# ---- the dblock scan ----------------------------------------------------------------------------


def _naive_scan(buf: bytes, num_hosts: int, ss: int):
    found, shared = {}, {}
    for h in range(1, num_hosts + 1):
        off = (2 + h - 1) * ss
        if off + ss > len(buf):
            break
        d = Dblock.unpack(buf, off)
        mb = ondisk.ModeBlock.unpack(buf, off + 128)
        if not any(buf[off : off + 56]) and not mb.flags:
            continue
        if d.checksum_ok():
            found[h] = d
            if mb.shared:
                shared[h] = mb
    return found, shared


@pytest.mark.parametrize("sizes", [S512, Sizes(4096, 2 * MiB)])
def test_scan_finds_every_written_block_wherever_it_lies(sizes):
    ss, max_hosts = sizes.sector_size, sizes.max_hosts
    buf = bytearray(sizes.align_size)
    hosts = [1, 31, 32, 33, 64, 65, max_hosts - 1, max_hosts]
    for h in hosts:
        off = (2 + h - 1) * ss
        buf[off : off + 56] = Dblock(mbal=h, lver=1).pack()
    sh_only = 100  # a SHARED mode block with an all-zero dblock
    buf[(2 + sh_only - 1) * ss + 128 : (2 + sh_only - 1) * ss + 144] = ondisk.ModeBlock(1, 4).pack()
    buf[(2 + 200 - 1) * ss + 300] = 0xFF  # junk outside the dblock and mode block: not a block
    res = paxos.Resource("LS", "R", "/x", 0)
    got = paxos.scan_dblocks(bytes(buf), max_hosts, ss, res, strict=True)
    assert got == _naive_scan(bytes(buf), max_hosts, ss)
    assert sorted(got[0]) == sorted([*hosts, sh_only])
    assert list(got[1]) == [sh_only]
    # num_hosts limits the scan like sanlock's ballot (hosts above it are not read)
    few = paxos.scan_dblocks(bytes(buf), 40, ss, res, strict=True)[0]
    assert sorted(few) == [1, 31, 32, 33]


# ---- a leader that went back in time (a late commit landed over newer ones) --------------------


def test_a_regressed_leader_never_hands_a_version_out_twice_safety(env):
    """Found by the model (seed 187): a leader write abandoned at io_timeout lands after newer
    versions were decided, so the leader goes back in time. The dblocks still prove the newer
    version; re-running that instance re-adopts its value and repairs the leader, where balloting
    leader + 1 again aborts forever (or, once the evidence is overwritten, re-issues it)."""
    h1, h3 = env.join(1), env.join(3)
    h1.acq.release(h1.acq.acquire())  # lver 1
    stale = env.leader()  # host 1's release of lver 1: abandoned, it lands later
    h3.acq.release(h3.acq.acquire())  # lver 2
    assert h1.acq.acquire().lver == 3  # host 1 holds version 3
    env.put_leader(stale)  # the late write lands: the leader says lver 1, free
    abort = threading.Event()
    env.clock.on_sleep.append(lambda c: abort.set() if len(c.sleeps) > 50 else None)
    h3.acq.abort = abort
    with pytest.raises(errors.AcquireOther):
        h3.acq.acquire(nowait=True)  # version 3 is host 1's: re-adopted, never re-chosen
    leader = env.leader()
    assert (leader.lver, leader.owner_id, leader.owner_generation) == (3, 1, h1.generation)


def test_phase_one_keeps_the_value_we_accepted_in_the_same_version_safety(env):
    h3 = env.join(3)
    accepted = Dblock(mbal=3, bal=3, inp=1, inp2=1, inp3=500, lver=1)
    env.put_dblock(3, accepted)  # we accepted host 1's value for lver 1, then lost the ballot
    writes: list[Dblock] = []
    env.st.before_write.append(
        lambda off, data: writes.append(Dblock.unpack(data)) if off == 4 * 512 else None
    )
    with pytest.raises(errors.AcquireOther):
        h3.acq.acquire(nowait=True)
    phase1 = writes[0]
    assert phase1.mbal > accepted.mbal
    assert (phase1.bal, phase1.inp, phase1.inp2, phase1.inp3) == (3, 1, 1, 500)
    assert (env.leader().lver, env.leader().owner_id) == (1, 1)
