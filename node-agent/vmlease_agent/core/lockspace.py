"""A joined lockspace: our delta lease on one host_id, renewed by a thread of its own.

One thread per lockspace, each with its own Storage (and so its own I/O workers), so a stalled or
failing path to one lockspace never delays the renewals of another.

Health, in the terms of ``engine.timeouts`` (T = our last successful renewal, local monotonic):
  * ``T + 8N`` is the lockspace's *deadline*: the watchdog may only be fed while every lockspace
    is before its deadline (minus a margin), and fencing starts when it passes;
  * a renewal that finds our record changed by someone else (-260/-261, a bad checksum) fails
    the lockspace at once: another writer owns our host_id, so we must stop writing now.
The on-disk timestamp we write *is* T (our CLOCK_MONOTONIC seconds), which is what lets a
restarted agent know its deadline without trusting anything but the disk.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from vmlease_agent.core.snapshot import LockspaceSnapshot
from vmlease_agent.engine import SANLK_RENEW_OWNER, delta, errors, ondisk, paxos, timeouts
from vmlease_agent.engine.clock import REAL_CLOCK, Aborted, Clock
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import Leader

log = logging.getLogger(__name__)

JOINING, LIVE, FAILED, STOPPED = "joining", "live", "failed", "stopped"

#: Seconds of margin between our last keepalive and the deadline T + 8N: the check and the
#: keepalive are not atomic, and our clock reading is rounded to whole seconds on disk.
FEED_MARGIN = 1.0

#: Pause between a failed renewal and the next attempt (sanlock retries after 0.5 s).
RENEW_RETRY_SECONDS = 0.5

#: Renewals remembered per lockspace (sanlock's default ``renewal_history_size``: about an
#: hour at N = 10), for ``sanlock client renewal``.
RENEWAL_HISTORY_SIZE = 180


#: SET_EVENT's flags (sanlock's SANLK_SETEV_* bits): the receiver's current generation when
#: none is given; stop notifying one host; end the event; replace an event still being carried;
#: notify every host
(
    SETEV_CUR_GENERATION,
    SETEV_CLEAR_HOSTID,
    SETEV_CLEAR_EVENT,
    SETEV_REPLACE_EVENT,
    SETEV_ALL_HOSTS,
) = (0x1, 0x2, 0x4, 0x8, 0x10)


class EventBusy(errors.LeaseError):
    code = -errno.EBUSY
    template = (
        "lockspace {lockspace}: event {current} is still being sent ({left:.0f}s more); "
        "replace it (SETEV_REPLACE_EVENT), clear it, or wait"
    )


@dataclass(slots=True)
class Renewal:
    """One successful write of our delta lease (the first: the join, with 0 ms), and how many
    attempts failed after it: what sanlock's renewal history keeps, to tell slow or failing
    storage from a dead host after the fact."""

    timestamp: int
    read_ms: int = 0
    write_ms: int = 0
    next_timeouts: int = 0
    next_errors: int = 0


class ResumeExpired(errors.LeaseError):
    code = SANLK_RENEW_OWNER
    template = (
        "lockspace {lockspace}: our host_id {host_id} lease was last renewed {ago:.0f}s ago, past "
        "its {limit}s deadline while the agent was down; other hosts may own our leases now, so "
        "their holders here are being stopped. Add the lockspace again once they are gone."
    )


@dataclass(frozen=True, slots=True)
class LockspaceConfig:
    name: str
    host_id: int
    path: str
    offset: int
    io_timeout: int = timeouts.DEFAULT_IO_TIMEOUT
    #: The longest watchdog fire timeout the other hosts of this lockspace may assume of us.
    #: sanlock hosts ignore our fire-timeout tag and assume 60 s, and nothing outside Kubernetes
    #: keeps them out of a lockspace, so 60 unless a Kubernetes Lockspace promises otherwise.
    promised_fire_timeout: int = timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT
    #: Node fencing (a Kubernetes Lockspace's ``nodeFencing``): while this lockspace may hold our
    #: delta lease, the watchdog stays armed whether or not anything is held, and a failure of
    #: the lockspace resets the node. So "Dead on disk" proves the node was reset, which is what
    #: lets the operator mark the node out of service (``Agent`` docstring, "Node fencing").
    fence_node: bool = False

    def __post_init__(self) -> None:
        # every way in (--lockspace, the API, Kubernetes, saved state) builds one of these
        delta.check_io_timeout(self.io_timeout, f"lockspace {self.name}")

    @property
    def location(self) -> delta.Location:
        return delta.Location(self.name, self.path, self.offset)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.host_id}:{self.path}:{self.offset}"


class FireTimeoutTooLong(errors.LeaseError):
    code = -22
    template = (
        "lockspace {lockspace}: this agent's watchdog fires {fire_timeout} s after its last "
        "keepalive, but the other hosts of the lockspace judge it by {promised} s{why}: they "
        "would take its leases before it is reset. Run the agent with --watchdog-fire-timeout "
        "{promised} or less"
    )


class CannotFenceNode(errors.LeaseError):
    code = -5  # EIO, as a join that could not write
    template = (
        "lockspace {lockspace} fences the node (nodeFencing), and the watchdog cannot be armed "
        "before our host_id is written: {why}. Nothing was written; the join is retried"
    )


class JoinedLockspace:
    """This node's membership in one lockspace (our delta lease on one host_id), not to be
    confused with the Kubernetes object ``vmlease_api.models.Lockspace`` that may ask for it.
    ``on_change(lockspace)`` is called on state changes."""

    def __init__(
        self,
        cfg: LockspaceConfig,
        host_name: str,
        fire_timeout: int,
        clock: Clock = REAL_CLOCK,
        on_change: Callable[[JoinedLockspace], None] | None = None,
        identity: ondisk.Identity | None = None,
        before_claim: Callable[[JoinedLockspace], None] | None = None,
        on_host_event: Callable[[JoinedLockspace, delta.ReceivedEvent], None] | None = None,
    ) -> None:
        """``before_claim(lockspace)``: called before the first write of a join (not of a
        resume); raising ``CannotFenceNode`` there ends the join with nothing written.
        ``on_host_event(lockspace, received)``: a host event for us read in a renewal (from
        the renewal thread; it must not block)."""
        if fire_timeout > cfg.promised_fire_timeout:
            sanlock = cfg.promised_fire_timeout == timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT
            raise FireTimeoutTooLong(
                lockspace=cfg.name,
                fire_timeout=fire_timeout,
                promised=cfg.promised_fire_timeout,
                why=" (sanlock hosts assume 60 s and ignore our tag)" if sanlock else "",
            )
        self.cfg = cfg
        self.host_name = host_name
        self.fire_timeout = fire_timeout
        self.identity = identity
        self.clock = clock
        #: set once the lockspace has failed or stopped: aborts acquisitions waiting under it
        self.lost = threading.Event()
        self.on_change = on_change or (lambda ls: None)
        self.before_claim = before_claim
        self.state = JOINING
        self.error: str = ""
        self.error_code = 0  # sanlock's code of the error that ended a join (0: none)
        self.last_success = 0.0  # T, local monotonic seconds (0: never)
        self.last_error_at = 0.0
        self.renewal_ms = 0.0
        self.st = Storage(cfg.path)
        self.sizes: ondisk.Sizes | None = None
        self.lease: delta.DeltaLease | None = None
        self.table: delta.HostStatusTable | None = None
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._thread: threading.Thread | None = None
        # Who closes the storage: ``stop`` if the thread has finished, else the thread itself
        # once its (maybe stalled) I/O returns; closing under a running I/O could let the fd
        # number be reused by another open while a queued write still targets it.
        self._closing = threading.Lock()
        self._finished = False
        self._close_on_exit = False
        # Requests (sanlock's host bitmap): the hosts whose bit our renewals carry, until when
        # (``notify``); and whether a peer's renewal carried ours (``take_examine``).
        self._bits: dict[int, float] = {}
        self._bits_lock = threading.Lock()
        self._examine = threading.Event()
        # Host events (sanlock's set_event): the one our renewals carry, set when, and who is
        # told of events read in theirs
        self._host_event = delta.HostEvent(0, 0, 0)
        self._event_set_at = float("-inf")
        self.on_host_event = on_host_event or (lambda ls, received: None)
        self._renewals: deque[Renewal] = deque(maxlen=RENEWAL_HISTORY_SIZE)
        self._renewals_lock = threading.Lock()

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def generation(self) -> int:
        return self.lease.generation if self.lease else 0

    def start(self, resume: Leader | None = None) -> None:
        """Join in the background (acquire the host_id, or resume ``resume``), then renew.

        A resumed lease is protected from the first moment: its deadline counts from the
        timestamp we last wrote, not from when we got it back.
        """
        if resume is not None:
            self.last_success = float(resume.timestamp)
        self._thread = threading.Thread(
            target=self._run, args=(resume,), name=f"lockspace:{self.name}", daemon=True
        )
        self._thread.start()

    def wait_joined(self, timeout: float | None = None) -> bool:
        self._joined.wait(timeout)
        return self.state == LIVE

    def _set(self, state: str, error: str = "") -> None:
        self.state, self.error = state, error
        if state in (FAILED, STOPPED):
            self.lost.set()
        self._notify()

    @property
    def advertised_fire_timeout(self) -> int | None:
        """The W our record on disk tells peers to judge us by (None: no record of ours yet)."""
        if self.lease is None or self.lease.record is None or not self.lease.record.timestamp:
            return None
        return self.lease.advertised_fire_timeout

    @property
    def previous_until(self) -> float:
        """While joining waits out an earlier holder of our host_id (perhaps an earlier agent of
        this machine whose saved state was lost): until when. The watchdog must not be opened
        before then: that would feed the earlier agent's countdown."""
        return self.lease.previous_until if self.lease is not None else 0.0

    def _notify(self) -> None:
        try:
            self.on_change(self)
        except Exception:  # an observer's bug must never stop the renewals
            log.exception("lockspace %s: change handler failed", self.name)

    def _run(self, resume: Leader | None) -> None:
        try:
            self._run_until_stopped(resume)
        finally:
            with self._closing:
                self._finished = True
                if self._close_on_exit:
                    self.st.close()

    def _run_until_stopped(self, resume: Leader | None) -> None:
        try:
            self._join(resume)
        except Aborted:
            self._set(STOPPED)
            self._joined.set()
            return
        except errors.LeaseError as e:
            log.error("lockspace %s: join failed: %s", self.name, e)
            self.error_code = e.code
            # a lease we had before a restart and cannot take back: its holders must be fenced
            self._set(FAILED if resume is not None else STOPPED, str(e))
            self._joined.set()
            return
        self._joined.set()
        self._renew_loop()

    def _join(self, resume: Leader | None) -> None:
        cfg = self.cfg
        self.sizes, _ = delta.read_sizes(self.st, cfg.location, cfg.io_timeout)
        delta.check_host_id(cfg.location, self.sizes, cfg.host_id)
        self.table = delta.HostStatusTable(cfg.location, self.sizes, cfg.io_timeout)
        self.lease = delta.DeltaLease(
            self.st,
            cfg.location,
            self.sizes,
            cfg.host_id,
            self.host_name,
            cfg.io_timeout,
            fire_timeout=self.fire_timeout,
            clock=self.clock,
            identity=self.identity,
        )
        if resume is not None:
            self.lease.record = self._adopt(resume)
        else:
            hook = self.before_claim
            self.lease.acquire(self._stop, (lambda: hook(self)) if hook else None)
        assert self.lease.record is not None  # acquire and adopt both set it
        self.last_success = float(self.lease.record.timestamp)
        self._renewed(Renewal(self.lease.record.timestamp))
        log.info(
            "lockspace %s: %s host_id %d generation %d",
            self.name,
            "resumed" if resume else "joined",
            cfg.host_id,
            self.lease.generation,
        )
        self._set(LIVE)

    def _adopt(self, remembered: Leader) -> Leader:
        """Restart without harm: take back our delta lease as it is on disk, same generation.

        The record on disk must be ours (owner, generation, host name) and identical to what we
        remember except for a newer timestamp of our own and the host event our renewals carry
        (we may have renewed, and set an event, after the state was saved; only we write them
        in our sector). Anything else means someone else touched our host_id: refuse.
        """
        assert self.lease is not None and self.sizes is not None
        current = delta.read_host(
            self.st, self.cfg.location, self.sizes, self.cfg.host_id, self.cfg.io_timeout
        )
        expired = current.timestamp + timeouts.id_renewal_fail_seconds(self.cfg.io_timeout)
        if self.clock.now() + FEED_MARGIN >= expired:
            # others may already have judged us dead and taken our leases: never renew it
            raise ResumeExpired(
                lockspace=self.name,
                host_id=self.cfg.host_id,
                ago=self.clock.now() - current.timestamp,
                limit=timeouts.id_renewal_fail_seconds(self.cfg.io_timeout),
            )
        same = replace(
            current,
            timestamp=remembered.timestamp,
            write_id=remembered.write_id,
            write_generation=remembered.write_generation,
            write_timestamp=remembered.write_timestamp,
            checksum=0,
        )
        if (
            current.timestamp == 0
            or current.timestamp < remembered.timestamp
            or (same.pack() != replace(remembered, checksum=0).pack())
        ):
            raise errors.RenewDiff(**self.cfg.location.describe(), host_id=self.cfg.host_id)
        return current

    # ---- renewal ------------------------------------------------------------------------------

    def deadline(self) -> float:
        """T + 8N: after this our leases must be considered lost (fencing starts)."""
        return self.last_success + timeouts.id_renewal_fail_seconds(self.cfg.io_timeout)

    @property
    def delta_on_disk(self) -> bool:
        """May a delta lease of ours be on disk with a timestamp (a claim begun, a renewal, the
        record we resume)? False once it was released, or if nothing was ever written."""
        if self.lease is not None and self.lease.record is not None:
            return self.lease.record.timestamp != 0
        return bool(self.last_success) or bool(self.lease and self.lease.claim_timestamp)

    def healthy(self, now: float | None = None) -> bool:
        """May the watchdog be fed on this lockspace's behalf?"""
        if self.state in (JOINING, STOPPED) and not self.last_success:
            if self.cfg.fence_node and self.lease is not None and self.lease.claim_timestamp:
                # A claim written (or begun) but never confirmed, e.g. a join that failed after
                # its write: peers may have read it, so they judge us by its timestamp.
                n = timeouts.id_renewal_fail_seconds(self.cfg.io_timeout)
                return (self.clock.now() if now is None else now) + FEED_MARGIN < (
                    self.lease.claim_timestamp + n
                )
            return True  # no delta lease held (yet): nothing to protect
        if self.state == FAILED:
            return False
        now = self.clock.now() if now is None else now
        return now + FEED_MARGIN < self.deadline()

    def _renew_loop(self) -> None:
        assert self.lease is not None and self.table is not None
        n = self.cfg.io_timeout
        interval = timeouts.id_renewal_seconds(n)
        warned = False
        while not self._stop.is_set():
            now = self.clock.now()
            due = self.last_success + interval
            if now < due:
                self._stop.wait(min(1.0, due - now))
                continue
            if self.state == FAILED:
                self._stop.wait(1.0)
                continue
            if now >= self.deadline():
                # past T + 8N a renewal must not happen: others start counting our death from
                # T, and a late write would only hide that we lost our leases
                self._set(FAILED, f"no successful renewal for {now - self.last_success:.0f}s")
                continue
            started = self.clock.now()
            try:
                record, area = self.lease.renew(
                    bitmap=self.carried_bitmap(started), event=self.carried_event()
                )
            except (
                errors.RenewOwner,
                errors.RenewDiff,
                errors.LeaderMagic,
                errors.LeaderChecksum,
                errors.LeaderLockspace,
                errors.LeaderVersion,
            ) as e:
                log.error("lockspace %s: our host_id lease is no longer ours: %s", self.name, e)
                self._renew_failed(e)
                self._set(FAILED, str(e))
                continue
            except errors.LeaseError as e:
                self._renew_failed(e)
                self.last_error_at = self.clock.now()
                lag = self.last_error_at - self.last_success
                if lag >= timeouts.id_renewal_warn_seconds(n) and not warned:
                    log.warning("lockspace %s: renewal failing for %.0fs: %s", self.name, lag, e)
                    warned = True
                if self.clock.now() >= self.deadline():
                    self._set(FAILED, f"renewal failed for {lag:.0f}s: {e}")
                self._stop.wait(RENEW_RETRY_SECONDS)
                continue
            warned = False
            self.renewal_ms = (self.clock.now() - started) * 1000
            self.last_success = float(record.timestamp)
            self._renewed(Renewal(record.timestamp, self.lease.read_ms, self.lease.write_ms))
            changed = self.table.update(area, self.clock.now(), self.cfg.host_id)
            senders = self.table.senders_to(area, self.cfg.host_id, changed)
            if senders:
                self._examine.set()
                for received in delta.events_to(area, self.lease.sizes, self.cfg.host_id, senders):
                    self.on_host_event(self, received)
            self._notify()

    def _renewed(self, renewal: Renewal) -> None:
        with self._renewals_lock:
            self._renewals.append(renewal)

    def _renew_failed(self, e: errors.LeaseError) -> None:
        """Counted on the last success, as sanlock does (timeouts apart from other errors)."""
        with self._renewals_lock:
            if self._renewals:
                last = self._renewals[-1]
                if isinstance(e, errors.IoTimeout):
                    last.next_timeouts += 1
                else:
                    last.next_errors += 1

    def renewal_history(self) -> list[Renewal]:
        """The renewals remembered, oldest first (copies)."""
        with self._renewals_lock:
            return [replace(r) for r in self._renewals]

    # ---- requests (sanlock's host bitmap) ---------------------------------------------------

    def notify(self, host_id: int) -> None:
        """Ask ``host_id`` to examine its leases in this lockspace: our renewals carry its bit
        for ``set_bitmap_seconds`` (6N), so it reads at least two of them (it scans every 2N)
        even if one of its reads fails. sanlock's ``host_status_set_bit``."""
        until = self.clock.now() + timeouts.set_bitmap_seconds(self.cfg.io_timeout)
        with self._bits_lock:
            self._bits[host_id] = until

    def carried_bitmap(self, now: float) -> bytes:
        """The bitmap our renewal at ``now`` carries (bits still within their 6N)."""
        bitmap = bytearray(ondisk.HOSTID_BITMAP_SIZE)
        with self._bits_lock:
            for host_id, until in list(self._bits.items()):
                if until <= now:
                    del self._bits[host_id]
                else:
                    ondisk.bitmap_set(bitmap, host_id)
        return bytes(bitmap)

    def carried_event(self) -> delta.HostEvent:
        with self._bits_lock:
            return self._host_event

    def set_event(self, he: delta.HostEvent, flags: int) -> None:
        """sanlock's ``lockspace_set_event``: our renewals carry ``he`` and, for 6N, the bit of
        ``he.host_id`` (of every host with SETEV_ALL_HOSTS). Another event still being sent
        within those 6N is not replaced without SETEV_REPLACE_EVENT (its receivers might miss
        it); SETEV_CLEAR_EVENT ends the event, SETEV_CLEAR_HOSTID one host's bit."""
        assert self.sizes is not None and self.table is not None, "set_event before the join"
        if not 1 <= he.host_id <= self.sizes.max_hosts:
            raise errors.InvalidArgument(
                what=f"host_id {he.host_id}",
                detail=f"lockspace {self.name} holds host_ids 1..{self.sizes.max_hosts}",
            )
        if not he.generation and flags & SETEV_CUR_GENERATION:
            hs = self.table.hosts.get(he.host_id)
            he = replace(he, generation=hs.generation if hs else 0)
        now = self.clock.now()
        window = timeouts.set_bitmap_seconds(self.cfg.io_timeout)
        with self._bits_lock:
            if flags & SETEV_CLEAR_EVENT:
                self._host_event = delta.HostEvent(0, 0, 0)
                self._event_set_at = now
                return
            if flags & SETEV_CLEAR_HOSTID:
                self._bits.pop(he.host_id, None)
                return
            current = self._host_event.event
            left = self._event_set_at + window - now
            replacing = current and he.event and he.event != current
            if replacing and left > 0 and not flags & SETEV_REPLACE_EVENT:
                raise EventBusy(lockspace=self.name, current=current, left=left)
            self._event_set_at = now
            self._host_event = he
            hosts = range(1, self.sizes.max_hosts + 1) if flags & SETEV_ALL_HOSTS else []
            for host_id in {he.host_id, *hosts} - {self.cfg.host_id}:
                self._bits[host_id] = now + window

    def request_examine(self) -> None:
        """Have the agent examine our leases' request records on its next pass."""
        self._examine.set()

    def take_examine(self) -> bool:
        """Did a peer ask us to examine our leases since the last call? (Clears the flag.)"""
        if not self._examine.is_set():
            return False
        self._examine.clear()
        return True

    def check_deadline(self, now: float | None = None) -> bool:
        """Mark the lockspace failed once its deadline has passed (called by the main loop too,
        because a renewal stuck in a stalled write cannot notice the time itself)."""
        now = self.clock.now() if now is None else now
        if self.state == LIVE and now >= self.deadline():
            self._set(FAILED, f"no successful renewal for {now - self.last_success:.0f}s")
            return True
        return self.state == FAILED

    def stop(self, release: bool, wait: bool = True) -> None:
        """Stop renewing; ``release`` frees the host_id on disk (only if our lease is healthy).

        ``wait=False`` (an agent exiting for a restart) waits for nothing: a renewal stuck in I/O
        is a daemon thread that ends with the process, and the delta lease stays on disk for the
        next agent.
        """
        self._stop.set()
        self.lost.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=self.cfg.io_timeout * 2 + 1)
        with self._closing:
            done = self._finished or self._thread is None
            self._close_on_exit = not done
        live = self.state == LIVE
        self.state = STOPPED
        if not done:
            return
        if release and self.lease is not None and self.lease.record and live:
            try:
                self.lease.release()
            except errors.LeaseError as e:
                log.warning("lockspace %s: release of host_id failed: %s", self.name, e)
        self.st.close()

    # ---- views --------------------------------------------------------------------------------

    def owner_view(self) -> paxos.OwnerView:
        assert self.sizes is not None
        return paxos.OwnerView(
            self.st, self.cfg.location, self.sizes, self.cfg.io_timeout, self.table
        )

    def hosts(self) -> list[dict]:
        """The host-status table (sanlock ``host_status``), with names and ages."""
        if self.table is None:
            return []
        now = self.clock.now()
        rows = []
        for host_id, hs in sorted(self.table.hosts.items()):
            if hs.timestamp == 0 and hs.generation == 0:
                continue
            rows.append(
                {
                    "host_id": host_id,
                    "name": hs.owner_name,
                    "generation": hs.generation,
                    "timestamp": hs.timestamp,
                    "io_timeout": hs.io_timeout,
                    "watchdog_fire_timeout": hs.fire_timeout,
                    "state": hs.state(now, self.cfg.io_timeout),
                    "renewed_ago": round(hs.seconds_since_renewal(now), 1),
                    "local": host_id == self.cfg.host_id,
                }
            )
        return rows

    def snapshot(self) -> LockspaceSnapshot:
        now = self.clock.now()
        return LockspaceSnapshot(
            name=self.name,
            host_id=self.cfg.host_id,
            path=self.cfg.path,
            offset=self.cfg.offset,
            io_timeout=self.cfg.io_timeout,
            generation=self.generation,
            state=self.state,
            error=self.error,
            last_renewal_ago=round(now - self.last_success, 1) if self.last_success else None,
            renewal_ms=round(self.renewal_ms, 2),
            deadline_in=round(self.deadline() - now, 1) if self.last_success else None,
            fence_node=self.cfg.fence_node,
        )
