"""Resource leases: Disk Paxos on a single lease area, as sanlock 3.8.5 runs it.

Who may write a VM disk is decided by a *ballot*: every host has its own block (dblock) in the
resource area, and a host becomes owner of lease version ``lver + 1`` only after writing its
ballot number (mbal) twice and, each time, reading every other host's block without finding a
higher ballot or a newer version (Gafni & Lamport, "Disk Paxos"). The winner writes the leader
record; others find it there.

Acquire (``paxos_lease_acquire``):
  1. read the whole area: leader, our dblock, the highest mbal of any host;
  2. free leader, or owned by us (this or an earlier generation): run a ballot;
  3. owned by another host: judge the owner through its delta lease in the lockspace — if its
     timestamp changes (or our monitor saw it live) the owner is alive: fail at once with
     IDLIVE (-243), unless the owner's dblock says RELEASED; if it stays unchanged for the
     owner's 8N + W, its watchdog has fired: run a ballot; if the owner's host_id was freed or
     re-acquired with a newer generation, it lost the lease: run a ballot; if the record there
     is of an *older* generation than the owner's (the lockspace area was re-initialised), it
     does not describe the owner at all: refuse (OwnerRecordOlder), never guess its N and W;
  4. ballot: mbal = host_id the first time, else the next multiple of max_hosts above every mbal
     seen, plus host_id (so ballot numbers never collide); phase 1 writes (mbal, lver+1), reads
     all; phase 2 writes the value (our id/generation/time, or the highest-bal value another
     host already proposed), reads all; a higher mbal or lver aborts (-213/-212): sleep 0..1 s,
     raise mbal by max_hosts, retry;
  5. commit: write the leader with owner = the ballot's value; if that is another host's earlier
     proposal, we lost (-245).
Release: our dblock gets the RELEASED flag (values kept: a concurrent ballot may still read
them), then, if we wrote the leader, its timestamp becomes 0.
Retract (sanlock's T_RETRACT_PAXOS / R_ERASE_ALL): once we have written a phase-2 value, another
host's ballot may adopt it and commit us, and our own commit may land although its write
reported an error. An acquire failing after that point (an I/O error or timeout in phase 2 or at
commit, an abort) would leave a lease held on disk in our name that we do not know we hold (an
orphan: other hosts get IDLIVE while we live). So it retracts before raising: it rewrites its
latest dblock with the RELEASED flag and frees the leader if the leader is exactly our own
commit of this version; then it raises the original error (with a note if the retract failed).
Why a retract never makes two owners:
  * our dblock keeps the values of our latest write, so it never goes back in time (sanlock
    writes a zeroed dblock here; that could erase a value our ballot had chosen, failing at
    commit, and let a concurrent ballot choose another owner of the same lver while our commit
    write is still landing). The flag is not part of the Paxos state: it only lets other hosts
    skip *us* as owner of a leader someone else wrote, which is true: we never use this lver;
  * the leader is freed only if it names us, was written by us and is at the version of this
    ballot: then every later acquire runs a ballot for the next version. A concurrent commit of
    the same version carries the same value (Paxos) with another writer: it is left alone, and
    our RELEASED flag covers it, as in a release. A newer version cannot appear between our read
    and our write: taking the lease from a live owner whose own commit is in the leader is
    refused (IDLIVE), and a leader regressing is harmless anyway (directio's docstring);
  * the retract's writes go through directio's guard like any write: one over a write of ours
    that may still land is refused, so the retract cannot be undone by our own late write.
  * an acquire that failed because another host's value won this version (AcquireOwned,
    AcquireOther) does not retract: only one value is chosen per version, and it is not ours.
If the retract itself fails (the storage still fails), the orphan stays until we acquire and
release the lease, or leave the lockspace (others then see our host_id free).
Shared leases: win the ballot with SHORT_HOLD, write our mode block SHARED with our generation,
release the leader. An exclusive acquire that saw SHARED mode blocks fails with -EAGAIN while any
of their hosts is alive, and clears the blocks of dead ones.
Convert: EX->SH marks our mode block SHARED before it frees the leader; SH->EX is an exclusive
acquire whose ballot writes keep our SHARED mode block (a retract too), cleared only once the
lease is ours and no other live host holds it shared. Either way, at every moment another host
reads the lease as ours, shared or exclusive: never free, never exclusive beside a sharer.
Lock value block: one sector (``ondisk``), read at acquire when asked, changed in memory, written
by the exclusive holder before it releases or converts to shared (never by a shared holder).
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import delta, errors, ondisk, timeouts
from .clock import REAL_CLOCK, Clock
from .directio import Storage
from .ondisk import Dblock, Leader, ModeBlock, RequestRecord, Sizes


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a resource lease lives: ``lockspace:name:path:offset`` (sanlock's syntax)."""

    lockspace: str
    name: str
    path: str
    offset: int

    @property
    def label(self) -> str:
        return f"{self.lockspace}:{self.name}"

    def describe(self) -> dict:
        return {"lease": self.label, "path": self.path, "offset": self.offset}


# ---- reading and verifying ------------------------------------------------------------------


def verify_leader(
    res: Resource, buf: bytes | memoryview, host_id: int = 0, storage_sector: int | None = None
) -> Leader:
    """Parse and validate a paxos leader (sanlock ``_verify_leader``, -223..-229)."""
    leader = Leader.unpack(buf)
    d = res.describe()
    if leader.magic != ondisk.PAXOS_DISK_MAGIC:
        if leader.magic == ondisk.PAXOS_DISK_CLEAR:
            hint = "; it was cleared (init -z); initialise it again to use it"
        elif leader.magic == ondisk.DELTA_DISK_MAGIC:
            hint = "; this area holds a lockspace, not a resource"
        else:
            hint = (
                f"; initialise it with `vmlease direct init -r {res.lockspace}:{res.name}:"
                f"{res.path}:{res.offset}` or check the path and offset"
            )
        raise errors.LeaderMagic(
            **d, kind="resource", magic=leader.magic, expected=ondisk.PAXOS_DISK_MAGIC, hint=hint
        )
    if leader.version & ondisk.VERSION_MAJOR_MASK != ondisk.PAXOS_VERSION_MAJOR:
        raise errors.LeaderVersion(**d, version=leader.version, expected=ondisk.PAXOS_VERSION_MAJOR)
    if leader.space_name != res.lockspace:
        raise errors.LeaderLockspace(**d, found=leader.space_name, expected=res.lockspace)
    if leader.resource_name != res.name:
        raise errors.LeaderResource(**d, found=leader.resource_name, expected=res.name)
    if host_id and leader.num_hosts < host_id:
        raise errors.LeaderNumHosts(**d, num_hosts=leader.num_hosts, host_id=host_id)
    ok, stored, computed = ondisk.leader_checksum_ok(buf)
    if not ok:
        raise errors.LeaderChecksum(**d, stored=stored, computed=computed)
    if leader.sector_size not in ondisk.SECTOR_SIZES or (
        storage_sector is not None and leader.sector_size < storage_sector
    ):
        raise errors.LeaderSectorSize(
            **d, on_disk=leader.sector_size, detail=f"the storage has {storage_sector}-byte sectors"
        )
    return leader


def check_resource_offset(st: Storage, res: Resource, sizes: Sizes) -> None:
    delta.check_offset(delta.Location(res.lockspace, res.path, res.offset), sizes, res.label)
    if st.size() < res.offset + ondisk.DBLOCK_FIRST_SECTOR * sizes.sector_size:
        raise errors.Truncated(**res.describe(), size=st.size(), needed=sizes.align_size)


def read_leader(st: Storage, res: Resource, timeout: float, host_id: int = 0) -> Leader:
    """Read and verify the leader (first sector; 4 KiB covers both sector sizes)."""
    if res.offset % st.sector_size:
        raise errors.OffsetNotAligned(
            lease=res.label,
            path=res.path,
            offset=res.offset,
            align=st.sector_size,
            align_name="sector",
            suggestion=(res.offset // st.sector_size + 1) * st.sector_size,
        )
    buf = st.read(res.offset, st.sector_size, timeout)
    if len(buf) < ondisk.LEADER_SIZE:
        raise errors.Truncated(**res.describe(), size=st.size(), needed=ondisk.LEADER_SIZE)
    leader = verify_leader(res, buf, host_id, st.sector_size)
    check_resource_offset(st, res, leader.sizes)
    return leader


@dataclass(slots=True)
class AreaScan:
    """What one read of the resource area says: leader, our dblock, highest mbal, SH holders."""

    leader: Leader
    own: Dblock
    max_mbal: int
    dblocks: dict[int, Dblock]
    shared: dict[int, ModeBlock]


_ZERO_BLOCK = bytes(ondisk.DBLOCK_SIZE)
#: Sectors compared at once when skipping the never-written part of an area.
_SKIP_SECTORS = 32


@functools.cache
def _zeros(length: int) -> bytes:
    return bytes(length)


def scan_dblocks(
    buf: bytes, num_hosts: int, sector_size: int, res: Resource, strict: bool
) -> tuple[dict[int, Dblock], dict[int, ModeBlock]]:
    """Every written dblock and SHARED mode block among hosts 1..num_hosts.

    Never-written blocks are all zero. Runs of 32 all-zero sectors are skipped with one in-place
    comparison (``bytes.startswith`` at an offset: no copy), then each sector of the rest by its
    dblock and mode-block bytes, so a 2000-host area costs about 60 comparisons plus a few dozen
    per written block; only written blocks are unpacked and checksummed. A corrupt dblock raises
    -214 when ``strict`` (the initial read) and is ignored otherwise (a ballot).
    """
    dblocks: dict[int, Dblock] = {}
    shared: dict[int, ModeBlock] = {}
    start = ondisk.DBLOCK_FIRST_SECTOR * sector_size
    end = min(len(buf), start + num_hosts * sector_size)
    zero = _ZERO_BLOCK
    mb_off = ondisk.MBLOCK_OFFSET
    at_zero = buf.startswith
    run = _SKIP_SECTORS * sector_size
    for chunk in range(start, end, run):
        chunk_end = min(end, chunk + run)
        if at_zero(_zeros(chunk_end - chunk), chunk):
            continue
        for off in range(chunk, chunk_end, sector_size):
            if at_zero(zero, off) and buf[off + mb_off] == 0:
                continue
            host_id = (off - start) // sector_size + 1
            dblock = Dblock.unpack(buf, off)
            if not dblock.checksum_ok():
                if strict:
                    raise errors.DblockChecksum(**res.describe(), host_id=host_id)
                continue
            dblocks[host_id] = dblock
            mb = ModeBlock.unpack(buf, off + mb_off)
            if mb.shared:
                shared[host_id] = mb
    return dblocks, shared


def read_area(st: Storage, res: Resource, sizes: Sizes, host_id: int, timeout: float) -> AreaScan:
    """Read 1 of an acquire: the whole align-size area in one I/O."""
    buf = st.read(res.offset, sizes.align_size, timeout)
    if len(buf) < sizes.align_size:
        raise errors.Truncated(**res.describe(), size=st.size(), needed=sizes.align_size)
    leader = verify_leader(res, buf, host_id, st.sector_size)
    dblocks, shared = scan_dblocks(buf, leader.num_hosts, sizes.sector_size, res, strict=True)
    max_mbal = max((d.mbal for d in dblocks.values()), default=0)
    return AreaScan(leader, dblocks.get(host_id, Dblock()), max_mbal, dblocks, shared)


# ---- owner liveness (the lockspace side of an acquire) --------------------------------------


class OwnerView:
    """How an acquire judges another host: its delta lease, and our monitor's view if we have one.

    ``table`` is the HostStatusTable of a lockspace we have joined (the agent); without it (the
    direct CLI) liveness is learnt only by watching the owner's delta lease change.
    """

    def __init__(
        self,
        st: Storage,
        loc: delta.Location,
        sizes: Sizes,
        io_timeout: int,
        table: delta.HostStatusTable | None = None,
    ) -> None:
        self.st = st
        self.loc = loc
        self.sizes = sizes
        self.io_timeout = io_timeout
        self.table = table

    def read_host(self, host_id: int) -> Leader:
        return delta.read_host(self.st, self.loc, self.sizes, host_id, self.io_timeout)

    def status(self, host_id: int) -> delta.HostStatus | None:
        return self.table.hosts.get(host_id) if self.table else None

    def shared_holder_live(self, host_id: int, generation: int, now: float) -> bool:
        """sanlock ``host_live``: unknown hosts count as alive (never guess they are dead)."""
        hs = self.status(host_id)
        if hs is None or not hs.last_check:
            try:
                d = self.read_host(host_id)
            except errors.LeaseError:
                return True
            return not (d.timestamp == 0 or d.owner_generation > generation)
        if hs.timestamp == 0 or hs.generation > generation:
            return False
        return hs.seconds_since_renewal(now) <= hs.dead_after(self.io_timeout)


# ---- acquire --------------------------------------------------------------------------------


@dataclass(slots=True)
class Token:
    """A lease we hold: what we committed and our last dblock (needed to release correctly)."""

    res: Resource
    sizes: Sizes
    host_id: int
    generation: int
    shared: bool
    leader: Leader
    dblock: Dblock
    #: the lock value block read at acquire (sanlock's SANLK_ACQUIRE_LVB), None without it;
    #: one copy per host, shared by every local holder of a shared lease, as sanlock's r->lvb
    lvb: bytearray | None = None
    #: set_lvb changed it: the exclusive holder writes it back at release or EX->SH convert
    lvb_dirty: bool = False

    @property
    def lver(self) -> int:
        return self.leader.lver

    def set_lvb(self, data: bytes) -> None:
        """Overwrite the first ``len(data)`` bytes (the rest stays, as sanlock's memcpy)."""
        if self.lvb is None:
            raise errors.LvbNotAcquired(lease=self.res.label)
        if len(data) > self.sizes.sector_size:
            raise errors.LvbTooBig(
                lease=self.res.label, size=len(data), limit=self.sizes.sector_size
            )
        self.lvb[: len(data)] = data
        self.lvb_dirty = True

    def get_lvb(self, size: int = 0) -> bytes:
        """The first ``size`` bytes of the in-memory copy (0: the whole sector)."""
        if self.lvb is None:
            raise errors.LvbNotAcquired(lease=self.res.label)
        return bytes(self.lvb[: size or self.sizes.sector_size])


@dataclass
class Acquirer:
    """Runs acquire/release for one host (host_id, generation) with a given clock and waits."""

    st: Storage
    res: Resource
    host_id: int
    generation: int
    io_timeout: int
    owner_view: OwnerView | None = None
    clock: Clock = REAL_CLOCK
    abort: threading.Event | None = None
    rand: Callable[[], float] = random.random
    #: called with (owner_id, seconds waited) while waiting out a silent owner
    on_wait: Callable[[int, float], None] | None = None
    #: the area's size class, learnt from its leader on first use
    sizes: Sizes | None = None

    def _d(self) -> dict:
        return self.res.describe()

    # -- step 3: the current owner --

    def _owner_verdict(self, leader: Leader, nowait: bool) -> str:
        """'run' when the owner provably lost the lease, else raise (IDLIVE, OWNED_RETRY)."""
        if self.owner_view is None:
            raise errors.LeaseError(
                detail=f"disk lease {self.res.label} at {self.res.path}:{self.res.offset} is "
                f"held by host {leader.owner_id}; to judge whether that host is alive, give the "
                f"lockspace location (-s {self.res.lockspace}:0:PATH:OFFSET)"
            ) from None
        view = self.owner_view
        hs = view.status(leader.owner_id)
        if (
            hs is not None
            and hs.last_check
            and hs.last_live
            and hs.owner_id == leader.owner_id
            and hs.generation == leader.owner_generation
        ):
            wait_start, last_ts = hs.last_live, hs.timestamp
        else:
            hs = None
            wait_start, last_ts = self.clock.now(), 0
        while True:
            d = view.read_host(leader.owner_id)
            if d.timestamp == 0:
                return "run"  # owner freed its host_id: it cannot hold leases
            if d.owner_id != leader.owner_id or d.owner_generation > leader.owner_generation:
                return "run"  # host_id re-acquired since: the old incarnation is gone
            if d.owner_generation < leader.owner_generation:
                # an older record (the lockspace was re-initialised or overwritten) says nothing
                # about the owner: not when it last renewed, not its N and W. No wait is known
                # to be long enough (W is each host's own), so refuse rather than guess.
                raise errors.OwnerRecordOlder(
                    **self._d(),
                    owner_id=leader.owner_id,
                    owner_generation=leader.owner_generation,
                    record_generation=d.owner_generation,
                    lockspace=self.res.lockspace,
                )
            now = self.clock.now()
            owner_n = d.io_timeout or self.io_timeout
            owner_w = ondisk.watchdog_fire_timeout_of(d, timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT)
            if last_ts == 0:
                last_ts = d.timestamp
            else:
                # sanlock's rule: alive if its timestamp moved since we looked, or our
                # monitor saw it move at its latest scan; a host that merely renewed "recently"
                # but not since is waited out (and refused the moment it renews again)
                monitor_live = hs is not None and hs.last_live == hs.last_check
                if d.timestamp != last_ts or monitor_live:
                    if leader.write_id != leader.owner_id and self._owner_released(leader):
                        return "run"
                    since = hs.seconds_since_renewal(now) if hs is not None else None
                    raise errors.AcquireIdLive(
                        **self._d(),
                        owner_id=leader.owner_id,
                        owner_name=d.resource_name or "unnamed host",
                        owner_generation=leader.owner_generation,
                        renewed=(
                            f", last renewed {since:.0f}s ago"
                            if since is not None
                            else ", renewing its host_id"
                        ),
                    )
                needed = timeouts.host_dead_seconds(owner_n, owner_w)
                if now - wait_start > needed:
                    return "run"  # silent for 8N+W: its watchdog has fired
                if nowait:
                    raise errors.AcquireOwnedRetry(
                        **self._d(),
                        owner_id=leader.owner_id,
                        waited=now - wait_start,
                        needed=needed,
                    )
                if self.on_wait:
                    self.on_wait(leader.owner_id, now - wait_start)
            self.clock.sleep(timeouts.paxos_owner_poll_seconds(), self.abort)
            again = read_leader(self.st, self.res, self.io_timeout, self.host_id)
            if again.pack() != leader.pack():
                return "restart"

    def _owner_released(self, leader: Leader) -> bool:
        sizes = leader.sizes
        off = self.res.offset + ondisk.dblock_sector_index(leader.owner_id) * sizes.sector_size
        buf = self.st.read(off, sizes.sector_size, self.io_timeout)
        return bool(Dblock.unpack(buf).flags & ondisk.DBLOCK_FL_RELEASED)

    # -- step 4: the ballot --

    def _write_dblock(self, sizes: Sizes, dblock: Dblock, keep_shared: bool = False) -> None:
        parts = [(0, dblock.pack())]
        if keep_shared:
            mb = ModeBlock(ondisk.MBLOCK_SHARED, self.generation)
            parts.append((ondisk.MBLOCK_OFFSET, mb.pack()))
        off = self.res.offset + ondisk.dblock_sector_index(self.host_id) * sizes.sector_size
        self.st.write(off, ondisk.sector(sizes.sector_size, *parts), self.io_timeout)

    def _read_ballot(
        self, sizes: Sizes, num_hosts: int, ours: Dblock, shared: dict[int, ModeBlock]
    ) -> Dblock | None:
        """Read all dblocks after a phase write; abort on newer lver/mbal; return highest-bal."""
        buf = self.st.read(
            self.res.offset, ondisk.ballot_read_size(num_hosts, sizes), self.io_timeout
        )
        dblocks, sh = scan_dblocks(buf, num_hosts, sizes.sector_size, self.res, strict=False)
        shared.update(sh)
        best: Dblock | None = None
        for bk in dblocks.values():
            if bk.lver < ours.lver:
                continue
            if bk.lver > ours.lver:
                raise errors.DblockLver(lease=self.res.label)
            if bk.mbal > ours.mbal:
                raise errors.DblockMbal(lease=self.res.label)
            if bk.inp and bk.bal and (best is None or bk.bal > best.bal):
                best = bk
        return best

    def _run_ballot(
        self,
        sizes: Sizes,
        num_hosts: int,
        next_lver: int,
        mbal: int,
        keep_shared: bool,
        attempts: list[Dblock],
        own: Dblock,
    ) -> tuple[Dblock, dict[int, ModeBlock]]:
        """One ballot; every dblock write is first appended to ``attempts`` (for a retract).

        Phase 1 keeps the value we accepted earlier in this same lease version (Disk Paxos keeps
        ``bal``/``inp`` when raising ``mbal``): zeroing it, as a fresh ballot does, would erase
        evidence that a value may have been chosen, and another host could then choose another.
        """
        shared: dict[int, ModeBlock] = {}
        prev = attempts[-1] if attempts else own
        if prev.lver == next_lver and prev.bal:
            ours = replace(prev, mbal=mbal, flags=0)
        else:
            ours = Dblock(mbal=mbal, lver=next_lver)
        attempts.append(ours)
        self._write_dblock(sizes, ours, keep_shared)
        best = self._read_ballot(sizes, num_hosts, ours, shared)
        if best is not None:
            value = (best.inp, best.inp2, best.inp3)
        else:
            value = (self.host_id, self.generation, self.clock.monotime())
        ours = replace(ours, bal=mbal, inp=value[0], inp2=value[1], inp3=value[2])
        attempts.append(ours)
        self._write_dblock(sizes, ours, keep_shared)
        self._read_ballot(sizes, num_hosts, ours, {})
        return ours, shared

    def acquire(
        self,
        *,
        shared: bool = False,
        acquire_lver: int | None = None,
        nowait: bool = False,
        keep_shared: bool = False,
        lvb: bool = False,
    ) -> Token:
        """Acquire the lease (steps in the module docstring). ``keep_shared``: SH->EX convert
        (``to_exclusive``); ``lvb``: read the lock value block into the token."""
        while True:  # "restart" in sanlock
            if self.sizes is None:
                self.sizes = read_leader(self.st, self.res, self.io_timeout, self.host_id).sizes
            sizes = self.sizes
            scan = read_area(self.st, self.res, sizes, self.host_id, self.io_timeout)
            cur = scan.leader
            if cur.sizes != sizes:  # the lease was re-initialised with other sizes
                self.sizes = None
                continue
            if acquire_lver is not None and cur.lver != acquire_lver:
                raise errors.AcquireLver(
                    lease=self.res.label, found=cur.lver, expected=acquire_lver
                )
            mine = cur.owner_id == self.host_id and cur.owner_generation <= self.generation
            if cur.timestamp != 0 and not mine and self._owner_verdict(cur, nowait) == "restart":
                continue
            won = self._ballot_and_commit(cur, scan, sizes, shared, keep_shared)
            if won is None:
                continue
            token, seen_shared = won
            if not shared:
                self._check_shared_holders(token, {**scan.shared, **seen_shared}, keep_shared)
            else:
                self._become_shared(token)
            if lvb:
                self._load_lvb(token)
            return token

    def to_exclusive(self, token: Token, nowait: bool = False) -> Token:
        """SH->EX convert (sanlock ``convert_sh2ex_token``): a ballot whose writes keep our
        SHARED mode block, so that at no moment does another host see this lease neither
        shared nor exclusively ours; refused (-EAGAIN, still shared, leader freed) while
        another live host holds it shared. Won: our mode block is cleared. If that write
        fails we hold it exclusively all the same, as sanlock: the SHARED mark left only
        blocks others more, and the release clears it."""
        won = self.acquire(nowait=nowait, keep_shared=True)
        with contextlib.suppress(errors.LeaseError):
            self._write_dblock(won.sizes, won.dblock)
        won.lvb, won.lvb_dirty = token.lvb, token.lvb_dirty
        return won

    def to_shared(self, token: Token) -> None:
        """EX->SH convert (sanlock ``convert_ex2sh_token``): write a dirty LVB, mark our mode
        block SHARED, then free the leader, in that order: no moment without either."""
        lvb_error = self._flush_lvb(token, "convert to shared")
        self._become_shared(token)
        token.shared = True
        if lvb_error is not None:
            raise lvb_error

    # -- the lock value block --

    def _lvb_offset(self, sizes: Sizes) -> int:
        return self.res.offset + ondisk.LVB_SECTOR * sizes.sector_size

    def _load_lvb(self, token: Token) -> None:
        """Read the LVB sector into the token (beyond the end of the storage: zeros). One that
        cannot be read is not handed out as zeros (sanlock hands out whatever its buffer
        held): the lease is released and the error raised."""
        size = token.sizes.sector_size
        try:
            data = self.st.read(self._lvb_offset(token.sizes), size, self.io_timeout)
        except errors.LeaseError as e:
            try:
                self.release(token)
            except errors.LeaseError as r:
                e.add_note(f"releasing the lease after that failed too ({r})")
            raise
        token.lvb = bytearray(data.ljust(size, b"\0"))

    def _flush_lvb(self, token: Token, done: str) -> errors.LvbNotWritten | None:
        """Write a dirty LVB (exclusive holders only); the error, for the caller to raise once
        the release or convert it belongs to is done."""
        if token.lvb is None or not token.lvb_dirty or token.shared:
            return None
        try:
            self.st.write(self._lvb_offset(token.sizes), bytes(token.lvb), self.io_timeout)
        except errors.LeaseError as e:
            return errors.LvbNotWritten(lease=self.res.label, cause=e, done=done)
        token.lvb_dirty = False
        return None

    def _ballot_and_commit(
        self, cur: Leader, scan: AreaScan, sizes: Sizes, shared: bool, keep_shared: bool
    ) -> tuple[Token, dict[int, ModeBlock]] | None:
        """Ballots until one completes; None means the leader changed: restart the acquire.
        Retracts (module docstring) when it fails after a phase-2 write.

        The lease version balloted is normally ``leader.lver + 1``. A dblock of a later version
        proves the leader went back in time: a commit abandoned at io_timeout landed after newer
        ones (a requeued write). Nobody writes a dblock for version M before reading the leader
        at M - 1 and finding its owner gone (or itself), so re-running instance M is exactly as
        safe as the ballot that started it, and Paxos makes us re-adopt any value chosen in M.
        Balloting M - 1 again instead would hand that version out twice.
        """
        next_lver = max([cur.lver + 1, *(d.lver for d in scan.dblocks.values())])
        attempts: list[Dblock] = []
        try:
            return self._ballots(cur, next_lver, scan, sizes, shared, keep_shared, attempts)
        except (errors.AcquireOwned, errors.AcquireOther):
            raise  # this version went to another host's value: ours cannot be committed
        except Exception as e:
            if any(d.bal for d in attempts):
                try:
                    self._retract(sizes, attempts[-1], next_lver, keep_shared)
                except errors.LeaseError as r:
                    e.add_note(
                        f"retracting our ballot for lver {next_lver} failed too ({r}); the "
                        f"lease may stay held on disk in our name (host {self.host_id} "
                        f"generation {self.generation}) until this host acquires and releases "
                        f"it or leaves the lockspace"
                    )
            raise

    def _retract(self, sizes: Sizes, last: Dblock, lver: int, keep_shared: bool) -> None:
        """Undo a failed acquire on disk without ever going back in time (module docstring)."""
        self._write_dblock(sizes, replace(last, flags=ondisk.DBLOCK_FL_RELEASED), keep_shared)
        leader = read_leader(self.st, self.res, self.io_timeout, self.host_id)
        if (
            leader.lver == lver
            and leader.timestamp != 0
            and (leader.owner_id, leader.owner_generation) == (self.host_id, self.generation)
            and (leader.write_id, leader.write_generation) == (self.host_id, self.generation)
        ):
            self._free_leader(leader, sizes)

    def _ballots(
        self,
        cur: Leader,
        next_lver: int,
        scan: AreaScan,
        sizes: Sizes,
        shared: bool,
        keep_shared: bool,
        attempts: list[Dblock],
    ) -> tuple[Token, dict[int, ModeBlock]] | None:
        max_mbal = scan.max_mbal
        mh = cur.max_hosts
        mbal = self.host_id if max_mbal == 0 else max_mbal - max_mbal % mh + mh + self.host_id
        first = True
        while True:
            tmp = cur if first else read_leader(self.st, self.res, self.io_timeout, self.host_id)
            first = False
            if tmp.lver == next_lver:
                if tmp.owner_id == self.host_id and tmp.owner_generation == self.generation:
                    own = self._read_own_dblock(sizes)
                    token = Token(self.res, sizes, self.host_id, self.generation, shared, tmp, own)
                    return token, {}
                raise errors.AcquireOwned(
                    **self._d(), owner_id=tmp.owner_id, owner_generation=tmp.owner_generation
                )
            if tmp.lver > next_lver or tmp.pack() != cur.pack():
                return None  # restart from the top
            try:
                dblock, seen_shared = self._run_ballot(
                    sizes, cur.num_hosts, next_lver, mbal, keep_shared, attempts, scan.own
                )
            except errors.DblockLver:
                # a later version is being balloted: start over from a new read of the area
                self.clock.sleep(self.rand() * timeouts.ballot_retry_max_sleep(), self.abort)
                return None
            except errors.DblockMbal:
                self.clock.sleep(self.rand() * timeouts.ballot_retry_max_sleep(), self.abort)
                mbal += mh
                continue
            break
        flags = cur.flags
        if dblock.inp == self.host_id:
            flags = flags | ondisk.LFL_SHORT_HOLD if shared else flags & ~ondisk.LFL_SHORT_HOLD
        new = replace(
            cur,
            lver=dblock.lver,
            owner_id=dblock.inp,
            owner_generation=dblock.inp2,
            timestamp=dblock.inp3,
            write_id=self.host_id,
            write_generation=self.generation,
            write_timestamp=self.clock.monotime(),
            flags=flags,
        ).sealed()
        self.st.write(
            self.res.offset, ondisk.sector(sizes.sector_size, (0, new.pack())), self.io_timeout
        )
        if new.owner_id != self.host_id or new.owner_generation != self.generation:
            raise errors.AcquireOther(**self._d(), owner_id=new.owner_id)
        return Token(
            self.res, sizes, self.host_id, self.generation, shared, new, dblock
        ), seen_shared

    def _read_own_dblock(self, sizes: Sizes) -> Dblock:
        off = self.res.offset + ondisk.dblock_sector_index(self.host_id) * sizes.sector_size
        return Dblock.unpack(self.st.read(off, sizes.sector_size, self.io_timeout))

    # -- shared leases --

    def _check_shared_holders(
        self, token: Token, seen: dict[int, ModeBlock], keep_shared: bool
    ) -> None:
        """EX acquired: other hosts' SHARED mode blocks block us while those hosts live. Then
        the leader is freed; a converting holder (``keep_shared``) stays shared."""
        seen = {h: mb for h, mb in seen.items() if h != self.host_id}
        if not seen:
            return
        sizes = token.sizes
        live = []
        now = self.clock.now()
        for host_id in sorted(seen):
            off = self.res.offset + ondisk.dblock_sector_index(host_id) * sizes.sector_size
            buf = self.st.read(off, sizes.sector_size, self.io_timeout)
            mb = ModeBlock.unpack(buf, ondisk.MBLOCK_OFFSET)
            if not mb.shared or not mb.generation:
                continue
            view = self.owner_view
            alive = True if view is None else view.shared_holder_live(host_id, mb.generation, now)
            if alive:
                live.append(host_id)
            else:  # "cleared shared lease for dead host_id": zero its whole sector
                self.st.write(off, bytes(sizes.sector_size), self.io_timeout)
        if live:
            if keep_shared:
                self._become_shared(token)
            else:
                self.release(token)
            raise errors.SharedHeld(**self._d(), hosts=", ".join(map(str, live)))

    def _become_shared(self, token: Token) -> None:
        """SH acquired: mark our mode block SHARED (dblock kept, RELEASED), free the leader."""
        sizes = token.sizes
        rel = replace(token.dblock, flags=ondisk.DBLOCK_FL_RELEASED)
        mb = ModeBlock(ondisk.MBLOCK_SHARED, self.generation)
        off = self.res.offset + ondisk.dblock_sector_index(self.host_id) * sizes.sector_size
        sector = ondisk.sector(
            sizes.sector_size, (0, rel.pack()), (ondisk.MBLOCK_OFFSET, mb.pack())
        )
        self.st.write(off, sector, self.io_timeout)
        token.dblock = rel
        self._release_leader(token)

    # -- release --

    def release(self, token: Token) -> None:
        """Release (sanlock ``_release_token``): a dirty LVB first (exclusive only), then
        RELEASED dblock, mode block zero, free leader."""
        lvb_error = self._flush_lvb(token, "release")
        sizes = token.sizes
        rel = replace(token.dblock, flags=ondisk.DBLOCK_FL_RELEASED)
        off = self.res.offset + ondisk.dblock_sector_index(self.host_id) * sizes.sector_size
        self.st.write(off, ondisk.sector(sizes.sector_size, (0, rel.pack())), self.io_timeout)
        token.dblock = rel
        if not token.shared:
            self._release_leader(token)
        if lvb_error is not None:
            raise lvb_error

    def _release_leader(self, token: Token) -> None:
        leader = read_leader(self.st, self.res, self.io_timeout)
        if leader.write_id != self.host_id:
            return  # another host committed us; our RELEASED dblock tells them we are done
        last = token.leader
        if leader.lver != last.lver:
            raise errors.ReleaseLver(**self._d(), found=leader.lver, expected=last.lver)
        if leader.timestamp == 0:
            raise errors.ReleaseOwner(**self._d(), detail="the lease is already free on disk")
        if leader.owner_id != self.host_id or leader.owner_generation != self.generation:
            raise errors.ReleaseOwner(
                **self._d(),
                detail=f"it is owned by host {leader.owner_id} generation "
                f"{leader.owner_generation}, not by us",
            )
        if leader.pack() != last.pack():
            raise errors.ReleaseOwner(
                **self._d(), detail="the leader changed since we committed it"
            )
        token.leader = self._free_leader(leader, token.sizes)

    def _free_leader(self, leader: Leader, sizes: Sizes) -> Leader:
        """Write ``leader`` back with timestamp 0 (free), as written by us; returns it."""
        freed = replace(
            leader,
            timestamp=0,
            write_id=self.host_id,
            write_generation=self.generation,
            write_timestamp=self.clock.monotime(),
            flags=leader.flags & ~ondisk.LFL_SHORT_HOLD,
        ).sealed()
        self.st.write(
            self.res.offset, ondisk.sector(sizes.sector_size, (0, freed.pack())), self.io_timeout
        )
        return freed


# ---- init, owners, requests ------------------------------------------------------------------


def resource_image(
    res: Resource, sizes: Sizes, num_hosts: int = 0, clear: bool = False, write_timestamp: int = 0
) -> bytes:
    """The whole area ``sanlock direct init -r`` writes: leader, request record, zeros."""
    ondisk.encode_name(res.lockspace, "lockspace")
    ondisk.encode_name(res.name, "resource")
    if not num_hosts or num_hosts > sizes.max_hosts:
        num_hosts = sizes.max_hosts
    leader = Leader(
        magic=ondisk.PAXOS_DISK_CLEAR if clear else ondisk.PAXOS_DISK_MAGIC,
        version=ondisk.PAXOS_DISK_VERSION,
        flags=sizes.align_flag,
        sector_size=sizes.sector_size,
        num_hosts=num_hosts,
        max_hosts=sizes.max_hosts,
        owner_id=0,
        owner_generation=0,
        lver=0,
        space_name=res.lockspace,
        resource_name=res.name,
        timestamp=0,
        write_timestamp=write_timestamp if clear else 0,
    )
    ss = sizes.sector_size
    head = ondisk.sector(ss, (0, leader.pack())) + ondisk.sector(ss, (0, RequestRecord().pack()))
    return head + bytes(sizes.align_size - 2 * ss)


def init_resource(
    st: Storage,
    res: Resource,
    sizes: Sizes,
    *,
    num_hosts: int = 0,
    clear: bool = False,
    force: bool = False,
    clock: Clock = REAL_CLOCK,
    write_timeout: float = 60.0,
) -> None:
    """Format a resource area; refuses to overwrite a held lease or foreign data unless forced."""
    delta.check_offset(delta.Location(res.lockspace, res.path, res.offset), sizes, res.label)
    if sizes.sector_size < st.sector_size:
        raise errors.LeaderSectorSize(
            **res.describe(),
            on_disk=sizes.sector_size,
            detail=f"the storage has {st.sector_size}-byte sectors (use -Z {st.sector_size})",
        )
    image = resource_image(res, sizes, num_hosts, clear, clock.monotime())
    if not force:
        from .inspect import refuse_overwrite

        refuse_overwrite(st, res.path, res.offset, sizes.align_size, f"resource {res.label}")
    if st.is_block and st.size() < res.offset + sizes.align_size:
        raise errors.Truncated(**res.describe(), size=st.size(), needed=sizes.align_size)
    st.write(res.offset, image, write_timeout)


@dataclass(frozen=True, slots=True)
class Owner:
    host_id: int
    generation: int
    shared: bool
    timestamp: int = 0


def read_owners(st: Storage, res: Resource, timeout: float) -> tuple[Leader, list[Owner]]:
    """The exclusive owner (if the leader is held) and every SHARED holder."""
    sizes = read_leader(st, res, timeout).sizes
    scan = read_area(st, res, sizes, 0, timeout)
    owners = []
    if scan.leader.timestamp:
        owners.append(
            Owner(scan.leader.owner_id, scan.leader.owner_generation, False, scan.leader.timestamp)
        )
    owners += [Owner(h, mb.generation, True) for h, mb in sorted(scan.shared.items())]
    return scan.leader, owners


def read_request(st: Storage, res: Resource, sizes: Sizes, timeout: float) -> RequestRecord:
    off = res.offset + ondisk.REQUEST_SECTOR * sizes.sector_size
    rr = RequestRecord.unpack(st.read(off, sizes.sector_size, timeout))
    if rr.magic != ondisk.REQ_DISK_MAGIC or rr.version != ondisk.REQ_DISK_VERSION:
        raise errors.RequestMagic(**res.describe())
    return rr


def write_request(st: Storage, res: Resource, lver: int, force_mode: int, timeout: float) -> Leader:
    """Ask the owner to give the lease up (sanlock ``request_token``); returns the leader read."""
    leader = read_leader(st, res, timeout)
    sizes = leader.sizes
    off = res.offset + ondisk.REQUEST_SECTOR * sizes.sector_size
    if lver == 0 and force_mode == 0:
        read_request(st, res, sizes, timeout)
        st.write(off, ondisk.sector(sizes.sector_size, (0, RequestRecord().pack())), timeout)
        return leader
    if leader.timestamp == 0:
        return leader
    if lver == 0:
        lver = leader.lver + 1
    if leader.lver >= lver:
        raise errors.RequestOld(lease=res.label, requested=lver, current=leader.lver)
    existing = read_request(st, res, sizes, timeout)
    if existing.lver > lver:
        raise errors.RequestLver(lease=res.label, existing=existing.lver)
    rr = RequestRecord(lver=lver, force_mode=force_mode)
    st.write(off, ondisk.sector(sizes.sector_size, (0, rr.pack())), timeout)
    return leader
