"""Delta leases: a host's claim on its host_id in a lockspace (Chockler & Malkhi leases).

A host proves it is alive by rewriting the timestamp of its own sector every 2N. Nobody else ever
writes that sector while the host lives, so no consensus is needed: taking a host_id only needs
waits long enough that a live owner *must* have renewed in between (see ``timeouts``).

Acquire (sanlock ``delta_lease_acquire``):
  1. read our sector; the previous owner's N and W come from it;
  2. free (timestamp 0): claim at once;
  3. held under our own host name (an earlier incarnation of us): sanlock claims at once ("fast
     reacquire"), which is what ``identity=None`` (the direct CLI) does. The agent passes its
     machine identity (``ondisk.Identity``) and claims at once only if the record proves a
     *previous boot* of this machine, where every process of the old incarnation is gone. An
     earlier agent of this same boot may have left holders running (its saved state lost), so
     we wait until its deadline + W (``T + 1 + 8N + W`` on our own clock: same boot, same clock)
     and re-read as in 4; a record without a usable identity proves nothing and is waited out
     like another host's. Another machine under our name is waited out like another host too:
     still renewing after 8N+W, it is a live machine using our name and we are refused (-262,
     both machines named); silent, it can no longer write (the proof of step 4), and we claim:
     a reinstalled node keeps its name but not its machine id (a kind node container makes a
     new one at every start), and refusing it forever would strand it;
  4. held by another host name: wait 8N+W (of the previous owner), re-read; the record unchanged
     (or free) proves the owner dead, else the host_id is busy (-262);
  4. claim: timestamp = now, generation + 1, our host name, N and W;
  5. wait 2N, re-read: the record must be exactly ours, else another host claimed too (-262).
Renew: read the whole area (one I/O, also used to judge every other host), check our record is
byte-identical to our last write (else -260/-261: someone else writes our host_id), write it with
a new timestamp and our *current* W (a record resumed after a restart may still carry the W of
the previous agent; the caller's watchdog runs with the smaller of the two until this write is
on disk: see ``advertised_fire_timeout``). Release: rewrite with timestamp 0, keeping owner,
generation and name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from . import errors, ondisk, timeouts
from .clock import REAL_CLOCK, Clock
from .directio import Storage
from .ondisk import Leader, Sizes


@dataclass(frozen=True, slots=True)
class Location:
    """Where a lockspace lives: its name, storage path and byte offset."""

    name: str
    path: str
    offset: int

    def describe(self) -> dict:
        return {"lease": f"lockspace {self.name}", "path": self.path, "offset": self.offset}


def check_offset(loc: Location, sizes: Sizes, what: str) -> None:
    if loc.offset % sizes.align_size:
        a = sizes.align_size
        raise errors.OffsetNotAligned(
            lease=what,
            path=loc.path,
            offset=loc.offset,
            align=a,
            align_name=ondisk.align_name(a),
            suggestion=(loc.offset // a + 1) * a,
        )


def check_io_timeout(io_timeout: object, what: str) -> int:
    """``io_timeout`` if the delta lease can record it, else InvalidArgument naming ``what``.

    Every entry point goes through here: the record stores N in one byte (sanlock writes
    ``N & 0xFF``), so 300 would be read back as 44 by every other host while we wait out 8 x 300.
    """
    if (
        isinstance(io_timeout, bool)
        or not isinstance(io_timeout, int)
        or not 1 <= io_timeout <= timeouts.MAX_IO_TIMEOUT
    ):
        raise errors.InvalidArgument(
            what=f"{what}: io_timeout {io_timeout!r}",
            detail=f"must be a whole number of seconds in 1..{timeouts.MAX_IO_TIMEOUT} "
            "(the delta lease records it in one byte)",
        )
    return io_timeout


def check_host_id(loc: Location, sizes: Sizes, host_id: int) -> None:
    if not 1 <= host_id <= sizes.max_hosts:
        raise errors.HostIdOutOfRange(**loc.describe(), host_id=host_id, max_hosts=sizes.max_hosts)


def verify_delta(
    loc: Location, buf: bytes | memoryview, storage_sector: int | None = None
) -> Leader:
    """Parse and validate a delta lease record (sanlock ``verify_leader``, -223..-229)."""
    leader = Leader.unpack(buf)
    if leader.magic != ondisk.DELTA_DISK_MAGIC:
        hint = (
            "; this area holds a resource lease, not a lockspace"
            if leader.magic in (ondisk.PAXOS_DISK_MAGIC, ondisk.PAXOS_DISK_CLEAR)
            else f"; initialise it with `vmlease direct init -s {loc.name}:0:{loc.path}:"
            f"{loc.offset}` or check the path and offset"
        )
        raise errors.LeaderMagic(
            **loc.describe(),
            kind="lockspace",
            magic=leader.magic,
            expected=ondisk.DELTA_DISK_MAGIC,
            hint=hint,
        )
    if leader.version & ondisk.VERSION_MAJOR_MASK != ondisk.DELTA_VERSION_MAJOR:
        raise errors.LeaderVersion(
            **loc.describe(), version=leader.version, expected=ondisk.DELTA_VERSION_MAJOR
        )
    if leader.space_name != loc.name:
        raise errors.LeaderLockspace(**loc.describe(), found=leader.space_name, expected=loc.name)
    ok, stored, computed = ondisk.leader_checksum_ok(buf)
    if not ok:
        raise errors.LeaderChecksum(**loc.describe(), stored=stored, computed=computed)
    if leader.sector_size not in ondisk.SECTOR_SIZES or (
        storage_sector is not None and leader.sector_size < storage_sector
    ):
        raise errors.LeaderSectorSize(
            **loc.describe(),
            on_disk=leader.sector_size,
            detail=f"the storage has {storage_sector}-byte sectors",
        )
    return leader


def read_sizes(st: Storage, loc: Location, timeout: float) -> tuple[Sizes, Leader]:
    """The lockspace's size class, from host 1's record (sanlock reads the first 4 KiB)."""
    if loc.offset % st.sector_size:
        raise errors.OffsetNotAligned(
            lease=f"lockspace {loc.name}",
            path=loc.path,
            offset=loc.offset,
            align=st.sector_size,
            align_name="sector",
            suggestion=(loc.offset // st.sector_size + 1) * st.sector_size,
        )
    buf = st.read(loc.offset, 4096, timeout)
    if len(buf) < ondisk.LEADER_SIZE:
        raise errors.Truncated(**loc.describe(), size=st.size(), needed=4096)
    leader = verify_delta(loc, buf, st.sector_size)
    sizes = leader.sizes
    check_offset(loc, sizes, f"lockspace {loc.name}")
    if st.size() < loc.offset + sizes.align_size:
        raise errors.Truncated(**loc.describe(), size=st.size(), needed=sizes.align_size)
    return sizes, leader


def sector_offset(loc: Location, sizes: Sizes, host_id: int) -> int:
    return loc.offset + ondisk.delta_sector_index(host_id) * sizes.sector_size


def read_host(st: Storage, loc: Location, sizes: Sizes, host_id: int, timeout: float) -> Leader:
    """Read and verify one host's delta lease (``delta_lease_leader_read``)."""
    check_host_id(loc, sizes, host_id)
    buf = st.read(sector_offset(loc, sizes, host_id), sizes.sector_size, timeout)
    return verify_delta(loc, buf, st.sector_size)


def read_lockspace(st: Storage, loc: Location, host_id: int, timeout: float) -> Leader:
    """One host's record, as sanlock's ``read_lockspace`` reads it for a client that knows
    only where a lockspace is: ``loc.name`` empty takes the name found on disk (host 1's
    record), a name given must match. Nothing is written."""
    if not loc.name and not loc.offset % st.sector_size:  # (unaligned: read_sizes says so)
        head = st.read(loc.offset, 4096, timeout)
        if len(head) >= ondisk.LEADER_SIZE:
            loc = replace(loc, name=Leader.unpack(head).space_name)
    sizes, _ = read_sizes(st, loc, timeout)
    return read_host(st, loc, sizes, host_id, timeout)


def host_label(leader: Leader) -> str:
    return f"host name {leader.resource_name!r}, generation {leader.owner_generation}"


# ---- init -----------------------------------------------------------------------------------


def new_lockspace_record(name: str, sizes: Sizes, io_timeout: int) -> Leader:
    """What ``sanlock direct init -s`` writes in every host's sector."""
    ondisk.encode_name(name, "lockspace")
    return Leader(
        magic=ondisk.DELTA_DISK_MAGIC,
        version=ondisk.DELTA_DISK_VERSION,
        flags=sizes.align_flag,
        sector_size=sizes.sector_size,
        num_hosts=0,
        max_hosts=1,  # sanlock quirk: every delta record says 1
        owner_id=0,
        owner_generation=0,
        lver=0,
        space_name=name,
        resource_name="",
        timestamp=0,
        io_timeout=io_timeout,
    )


def lockspace_image(name: str, sizes: Sizes, io_timeout: int) -> tuple[bytes, bytes]:
    """(whole area with record 0 uncommitted, the committed sector 0)."""
    record = new_lockspace_record(name, sizes, io_timeout)
    ss = sizes.sector_size
    one = ondisk.sector(ss, (0, record.pack()))
    first = ondisk.sector(ss, (0, replace(record, magic=0).pack()))
    return first + one * (sizes.max_hosts - 1) + bytes(sizes.align_size - ss * sizes.max_hosts), one


def init_lockspace(
    st: Storage,
    loc: Location,
    sizes: Sizes,
    io_timeout: int = timeouts.DEFAULT_IO_TIMEOUT,
    *,
    force: bool = False,
    write_timeout: float = 60.0,
) -> None:
    """Format a lockspace area; refuses to overwrite live leases or foreign data unless forced.

    Like sanlock, record 0 is first written with magic 0, then committed, so a crash half-way
    leaves an area nobody mistakes for a lockspace. ``write_timeout`` is sanlock's
    ``write_init_io_timeout`` (60 s): one large write may legitimately take longer than N.
    """
    check_offset(loc, sizes, f"lockspace {loc.name}")
    if sizes.sector_size < st.sector_size:
        raise errors.LeaderSectorSize(
            **loc.describe(),
            on_disk=sizes.sector_size,
            detail=f"the storage has {st.sector_size}-byte sectors (use -Z {st.sector_size})",
        )
    check_io_timeout(io_timeout, f"lockspace {loc.name}")
    image, commit = lockspace_image(loc.name, sizes, io_timeout)
    if not force:
        from .inspect import refuse_overwrite

        refuse_overwrite(st, loc.path, loc.offset, sizes.align_size, f"lockspace {loc.name}")
    if st.is_block and st.size() < loc.offset + sizes.align_size:
        raise errors.Truncated(**loc.describe(), size=st.size(), needed=sizes.align_size)
    st.write(loc.offset, image, write_timeout)
    st.write(loc.offset, commit, write_timeout)


# ---- host status ----------------------------------------------------------------------------

FREE, UNKNOWN, LIVE, FAIL, DEAD = "free", "unknown", "live", "fail", "dead"
#: sanlock_get_hosts flag values (src/sanlock_admin.h)
STATE_CODES = {UNKNOWN: 1, FREE: 2, LIVE: 3, FAIL: 4, DEAD: 5}


@dataclass(slots=True)
class HostStatus:
    """The local monitor's view of one host (sanlock ``struct host_status``)."""

    host_id: int
    owner_id: int = 0
    generation: int = 0
    timestamp: int = 0
    io_timeout: int = 0
    fire_timeout: int = timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT
    owner_name: str = ""
    first_check: float = 0.0
    last_check: float = 0.0
    last_live: float = 0.0
    lease_bad: bool = False

    def dead_after(self, default_io_timeout: int) -> int:
        return timeouts.host_dead_seconds(self.io_timeout or default_io_timeout, self.fire_timeout)

    def state(self, now: float, default_io_timeout: int) -> str:
        """free / unknown / live / fail / dead, judged with the host's own N and W."""
        if self.timestamp == 0:
            return FREE
        n = self.io_timeout or default_io_timeout
        last = self.last_live or self.first_check
        quiet = now - last
        if quiet <= timeouts.id_renewal_fail_seconds(n):
            return UNKNOWN if self.first_check == self.last_live else LIVE
        if quiet <= timeouts.host_dead_seconds(n, self.fire_timeout):
            return FAIL
        return DEAD

    def seconds_since_renewal(self, now: float) -> float:
        return now - (self.last_live or self.first_check)


@dataclass
class HostStatusTable:
    """Tracks every host of a lockspace from successive whole-area reads (``check_other_leases``).

    Only records whose owner, generation or timestamp bytes changed since the previous scan are
    parsed and checksummed: a scan of 2000 idle hosts costs 2000 slices, not 2000 unpacks.
    """

    loc: Location
    sizes: Sizes
    io_timeout: int
    hosts: dict[int, HostStatus] = field(default_factory=dict)
    _last_keys: list | None = None

    def update(self, area: bytes, now: float, local_host_id: int = 0) -> list[int]:
        """Record one scan made at local monotonic ``now``; returns host_ids seen changing."""
        ss = self.sizes.sector_size
        n = self.sizes.max_hosts
        keys = [
            area[off + 0x20 : off + 0x30] + area[off + 0x98 : off + 0xA0]
            for off in range(0, ss * n, ss)
        ]
        changed: list[int] = []
        previous = self._last_keys
        for idx, key in enumerate(keys):
            if previous is not None and previous[idx] == key and (idx + 1) in self.hosts:
                self.hosts[idx + 1].last_check = now
                continue
            host_id = idx + 1
            off = idx * ss
            hs = self.hosts.get(host_id)
            try:
                leader = verify_delta(self.loc, area[off : off + ss])
            except errors.LeaseError:
                if hs is None:
                    hs = self.hosts[host_id] = HostStatus(host_id, first_check=now)
                hs.lease_bad = True
                hs.last_check = now
                continue
            if hs is None:
                hs = self.hosts[host_id] = HostStatus(host_id, first_check=now, last_live=now)
            elif (
                hs.timestamp != leader.timestamp
                or hs.owner_id != leader.owner_id
                or hs.generation != leader.owner_generation
            ):
                hs.last_live = now
                changed.append(host_id)
            hs.lease_bad = False
            hs.owner_id = leader.owner_id
            hs.generation = leader.owner_generation
            hs.timestamp = leader.timestamp
            hs.io_timeout = leader.io_timeout
            hs.fire_timeout = ondisk.watchdog_fire_timeout_of(
                leader, timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT
            )
            hs.owner_name = leader.resource_name
            hs.last_check = now
        if local_host_id in self.hosts:
            self.hosts[local_host_id].last_live = now
        self._last_keys = keys
        return changed

    def senders_to(self, area: bytes, host_id: int, among: Iterable[int]) -> list[int]:
        """Hosts among ``among`` whose record in ``area`` carries ``host_id``'s bit: they ask
        ``host_id`` to examine its leases (a request record was written for one of them), as
        sanlock's ``check_other_leases`` reads it. A requester keeps the bit in its renewals for
        ``set_bitmap_seconds``, so checking the hosts that renewed since the last scan suffices."""
        ss = self.sizes.sector_size
        out = []
        for h in among:
            if h == host_id or not 1 <= h <= self.sizes.max_hosts:
                continue
            off = ondisk.delta_sector_index(h) * ss + ondisk.HOSTID_BITMAP_OFFSET
            if ondisk.bitmap_test(area[off : off + ondisk.HOSTID_BITMAP_SIZE], host_id):
                out.append(h)
        return out


@dataclass(frozen=True, slots=True)
class HostEvent:
    """sanlock's host event (``sanlk_host_event``): a number and data for ``host_id`` at
    ``generation``. The sender carries generation, event and data in its delta lease record
    (``write_id``, ``write_generation``, ``write_timestamp``) and sets the receivers' bits in
    its bitmap; a receiver reads it in the renewals that carry its bit."""

    host_id: int
    generation: int
    event: int
    data: int = 0


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """A host event read in a sender's record, with the sender's host_id and generation."""

    event: HostEvent
    from_host_id: int
    from_generation: int


def events_to(
    area: bytes, sizes: Sizes, host_id: int, senders: Iterable[int]
) -> list[ReceivedEvent]:
    """The events the records of ``senders`` (hosts carrying ``host_id``'s bit) carry for
    ``host_id`` (an event number 0 is none), as sanlock's ``check_other_leases`` reads them."""
    out = []
    for h in senders:
        off = ondisk.delta_sector_index(h) * sizes.sector_size
        rec = Leader.unpack(area[off : off + ondisk.LEADER_SIZE])
        if rec.write_generation:
            he = HostEvent(host_id, rec.write_id, rec.write_generation, rec.write_timestamp)
            out.append(ReceivedEvent(he, rec.owner_id, rec.owner_generation))
    return out


# ---- acquire / renew / release ----------------------------------------------------------------


@dataclass
class DeltaLease:
    """Our delta lease on ``host_id`` in the lockspace at ``loc``; ``record`` is our last write."""

    st: Storage
    loc: Location
    sizes: Sizes
    host_id: int
    host_name: str
    io_timeout: int
    fire_timeout: int = timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT
    clock: Clock = REAL_CLOCK
    record: Leader | None = None
    bitmap: bytes = bytes(ondisk.HOSTID_BITMAP_SIZE)
    #: which machine and boot we are (the agent); None: sanlock's fast reacquire by host name
    identity: ondisk.Identity | None = None
    #: while acquire waits out an earlier incarnation of this host name: until when (our clock)
    previous_until: float = 0.0
    #: set by ``acquire`` while it waits out another machine that used our host name
    collision: dict[str, str] | None = None
    #: the timestamp of the claim ``acquire`` began to write (0: none yet)
    claim_timestamp: int = 0
    #: how long the last renewal's read and write took, in ms (sanlock's renewal history)
    read_ms: int = 0
    write_ms: int = 0

    def __post_init__(self) -> None:
        check_io_timeout(self.io_timeout, f"lockspace {self.loc.name}")

    @property
    def generation(self) -> int:
        return self.record.owner_generation if self.record else 0

    def _offset(self) -> int:
        return sector_offset(self.loc, self.sizes, self.host_id)

    @property
    def advertised_fire_timeout(self) -> int:
        """The W our record on disk tells other hosts to judge us by (60 without a tag)."""
        if self.record is None:
            return self.fire_timeout
        return ondisk.watchdog_fire_timeout_of(self.record, timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT)

    def _read_own(self) -> tuple[Leader, bytes]:
        """Our record and our whole sector (the identity block follows the record)."""
        buf = self.st.read(self._offset(), self.sizes.sector_size, self.io_timeout)
        leader = verify_delta(self.loc, buf, self.st.sector_size)
        return leader, bytes(buf)

    def _claim(self, base: Leader) -> Leader:
        return self._seal(
            replace(
                base,
                timestamp=self.clock.monotime(),
                io_timeout=self.io_timeout,
                owner_id=self.host_id,
                owner_generation=base.owner_generation + 1,
                resource_name=self.host_name,
            )
        )

    def _seal(self, leader: Leader) -> Leader:
        """``leader`` with our current W tag (owner, generation and name as in ``leader``)."""
        tag = ondisk.fire_timeout_field(
            self.fire_timeout, leader.resource_name, leader.owner_id, leader.owner_generation
        )
        return replace(leader, unused1=tag).sealed()

    def _write(self, leader: Leader, timeout: float) -> None:
        parts = [(0, leader.pack())]
        if self.identity is not None and self.identity.known and leader.timestamp:
            parts.append((ondisk.IDENTITY_OFFSET, self.identity.pack_for(leader)))
        if any(self.bitmap):
            parts.append((ondisk.HOSTID_BITMAP_OFFSET, self.bitmap))
        self.st.write(self._offset(), ondisk.sector(self.sizes.sector_size, *parts), timeout)

    def acquire(
        self,
        abort: threading.Event | None = None,
        before_claim: Callable[[], None] | None = None,
    ) -> Leader:
        """Take the host_id (steps in the module docstring); returns the record written.

        ``before_claim`` runs after any wait for an earlier holder and before our first write;
        an exception from it ends the acquire with nothing written (the agent arms the
        watchdog there when the node itself is fenced by this lockspace).
        """
        check_host_id(self.loc, self.sizes, self.host_id)
        ondisk.encode_name(self.host_name, "host")
        self.collision = None  # what an earlier acquire saw is no evidence now
        current, raw = self._read_own()
        other_n = current.io_timeout or self.io_timeout
        other_w = ondisk.watchdog_fire_timeout_of(current, timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT)
        wait = self._held_wait(current, raw, other_n, other_w) if current.timestamp else 0.0
        if wait > 0:
            try:
                self.clock.sleep(wait, abort)
            finally:
                self.previous_until = 0.0
            again, raw_again = self._read_own()
            if (
                again.timestamp != 0
                and raw_again[: ondisk.LEADER_SIZE] != raw[: ondisk.LEADER_SIZE]
            ):
                if self.collision is not None:
                    raise errors.HostNameCollision(
                        **self.loc.describe(), host_id=self.host_id, **self.collision
                    )
                raise errors.HostIdBusy(
                    **self.loc.describe(), host_id=self.host_id, holder=host_label(again)
                )
            current = again
        if before_claim is not None:
            before_claim()
        claim = self._claim(current)
        self.bitmap = bytes(ondisk.HOSTID_BITMAP_SIZE)
        self.claim_timestamp = claim.timestamp  # before the write: it may land and still fail
        self._write(claim, self.io_timeout)
        self.clock.sleep(timeouts.delta_short_delay(other_n), abort)
        after, _ = self._read_own()
        if after.pack() != claim.pack():
            raise errors.HostIdBusy(
                **self.loc.describe(), host_id=self.host_id, holder=host_label(after)
            )
        self.record = claim
        return claim

    def _held_wait(self, current: Leader, sector: bytes, other_n: int, other_w: int) -> float:
        """Seconds to wait before claiming a held host_id (steps 3 and 4 of the docstring)."""
        held_wait = float(timeouts.delta_acquire_held_wait(other_n, other_w))
        if current.resource_name != self.host_name:
            return held_wait
        if self.identity is None:
            return 0.0  # sanlock's fast reacquire
        if not self.identity.known:
            self.previous_until = self.clock.now() + held_wait
            return held_wait  # we cannot tell a reboot from a lost state: never guess
        theirs = ondisk.Identity.unpack_for(sector, current)
        if theirs is not None and theirs.machine != self.identity.machine:
            # another machine under our name: waited out like another host (step 3 above)
            self.collision = {
                "name": self.host_name,
                "theirs": theirs.machine_hex,
                "ours": self.identity.machine_hex,
            }
            return held_wait
        if theirs is not None and theirs.boot != self.identity.boot:
            return 0.0  # a previous boot of this machine: none of its processes survived
        if theirs is not None:
            # this boot: the timestamp is on our clock, truncated to whole seconds (+1)
            until = float(current.timestamp + 1 + timeouts.host_dead_seconds(other_n, other_w))
            wait = until - self.clock.now()
        else:
            wait, until = held_wait, self.clock.now() + held_wait
        if wait > 0:
            self.previous_until = until
        return wait

    def resume(self) -> Leader:
        """Adopt our delta lease after an agent restart, without bumping the generation.

        Safe only if the record on disk is still exactly the one we last wrote (the caller
        passes it in ``record``) — i.e. nobody else took the host_id while we were away.
        """
        current, _ = self._read_own()
        if self.record is None or current.pack() != self.record.pack():
            raise errors.RenewDiff(**self.loc.describe(), host_id=self.host_id)
        return current

    def renew(
        self, bitmap: bytes | None = None, event: HostEvent | None = None
    ) -> tuple[Leader, bytes]:
        """One renewal, carrying ``bitmap`` and ``event`` (generation, number and data; its
        host_id is what the bitmap says), or what the last one carried when None; returns
        (record written, the whole area as read, for host status)."""
        assert self.record is not None, "renew before acquire"
        began = time.monotonic()
        area = self.st.read(self.loc.offset, self.sizes.align_size, self.io_timeout)
        self.read_ms = int((time.monotonic() - began) * 1000)
        off = ondisk.delta_sector_index(self.host_id) * self.sizes.sector_size
        current = verify_delta(self.loc, area[off : off + self.sizes.sector_size])
        mine = self.record
        if (
            current.owner_id != mine.owner_id
            or current.owner_generation != mine.owner_generation
            or current.resource_name != mine.resource_name
        ):
            raise errors.RenewOwner(
                **self.loc.describe(), host_id=self.host_id, detail=host_label(current)
            )
        if area[off : off + ondisk.LEADER_SIZE] != mine.pack():
            raise errors.RenewDiff(**self.loc.describe(), host_id=self.host_id)
        if bitmap is not None:
            self.bitmap = bitmap
        new = replace(mine, timestamp=self.clock.monotime())
        if event is not None:
            new = replace(
                new,
                write_id=event.generation,
                write_generation=event.event,
                write_timestamp=event.data,
            )
        new = self._seal(new)
        began = time.monotonic()
        self._write(new, timeouts.host_dead_seconds(self.io_timeout, self.fire_timeout))
        self.write_ms = int((time.monotonic() - began) * 1000)
        self.record = new
        return new, area

    def release(self) -> Leader:
        """Free the host_id: timestamp 0, owner, generation and name stay for the next acquire."""
        assert self.record is not None, "release before acquire"
        current, _ = self._read_own()
        if current.pack() != self.record.pack():
            raise errors.RenewDiff(**self.loc.describe(), host_id=self.host_id)
        freed = replace(self.record, timestamp=0).sealed()
        self.bitmap = bytes(ondisk.HOSTID_BITMAP_SIZE)
        self._write(freed, self.io_timeout)
        self.record = freed
        return freed
