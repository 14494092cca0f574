"""A deterministic simulation of several hosts running the real lease engine on one shared disk.

Why: the unit tests check the scenarios someone thought of; this model searches for the ones
nobody did. Each host runs the REAL ``delta.DeltaLease`` (renewal as the agent's lockspace loop
does it, feeding a ``HostStatusTable``) and the REAL ``paxos.Acquirer`` with an ``OwnerView``
over that table, on a ``SimStorage``: a ``directio.Storage`` whose worker pool and system calls
are replaced, so every write still goes through directio's real abandoned-write guard.

How: each actor (a host's renewal loop, a host's lease user) is a thread, but only one runs at a
time. Every storage call and every clock sleep hands the baton back to the scheduler, a discrete
event simulation over one global clock driven by a seeded RNG: it decides each I/O's fate when it
is issued (completes after a random latency, fails with EIO after landing some of its sectors,
times out before starting, or times out in the kernel: abandoned, then lands or fails at a random
later time, or never returns) and runs the earliest event next (ties in random order). Hosts may
crash (the agent stops; its holders keep running until the watchdog resets the node at T + 8N + W,
T its last successful renewal; writes in flight may land until that reset) and restart after the
reset with a new generation; a host that cannot renew is fenced the same way at T + 8N.

Model assumptions (as the real system's: sanlock's and ours rest on them; each pinned in
test_fakes.py): a reset node's queued writes never land after the reset, so none of them lands
over what the node writes once restarted (the watchdog reset is what ends every write of the
old boot; our write guard is per process and cannot see them); a single sector lands whole or
not at all; a completed write is visible to every read that completes after it.

The oracle (``Oracle``): a hold starts when acquire returns a token and ends when the host starts
its release, or at T + 8N + W when the host was crashed or fenced. Two holds of one lease never
overlap in time, and one lease version never has two owners.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vmlease_agent.engine import delta, errors, ondisk, paxos, timeouts
from vmlease_agent.engine.clock import Clock
from vmlease_agent.engine.directio import Storage, WriteGuard

SIZES = ondisk.Sizes(4096, ondisk.MiB)
N = 1  # io_timeout
W = 4  # watchdog fire timeout: hosts are declared dead after 8N + W = 12 s
LOCKSPACE = "MODEL"
PATH = "/sim/leases"


class Crashed(BaseException):
    """Raised in an actor of a crashed host at its next yield point: unwinds it (not an error)."""


# ---- the disk ---------------------------------------------------------------------------------


class SimDisk:
    """Bytes with sector-granular writes: a torn write lands a subset of its sectors."""

    def __init__(self, size: int, sector_size: int = SIZES.sector_size) -> None:
        self.data = bytearray(size)
        self.sector_size = sector_size

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes, sectors: set[int] | None = None) -> None:
        """Write ``data``; only the sectors (indexes within the write) in ``sectors`` if given."""
        ss = self.sector_size
        assert offset % ss == 0 and len(data) % ss == 0 and offset + len(data) <= len(self.data)
        for i in range(len(data) // ss):
            if sectors is None or i in sectors:
                self.data[offset + i * ss : offset + (i + 1) * ss] = data[i * ss : (i + 1) * ss]


# ---- the I/O backend ----------------------------------------------------------------------------


@dataclass
class Faults:
    """Per-schedule fault rates (drawn from the seed)."""

    timeout: float = 0.0  # an I/O times out (then: cancelled, or abandoned in the kernel)
    lease_write_timeout: float = 0.0  # a write to a resource lease times out (plus ``timeout``)
    eio: float = 0.0  # an I/O fails; a write lands a random subset of its sectors first
    late_max: float = 30.0  # an abandoned write returns up to this long after its timeout
    never: float = 0.1  # an abandoned write never returns (stays in the kernel)
    crash: float = 0.0  # chance per host per second of simulated time to crash
    latency: float = 0.05  # mean latency of an I/O (5% are slow: up to the timeout)
    pause: float = 2.0  # a lease user waits up to this long between its steps


class _Done:
    def __init__(self, job: SimJob) -> None:
        self.job = job

    def wait(self, timeout: float) -> bool:
        return self.job.sim.io_wait(self.job, timeout)


class SimJob:
    """One I/O submitted by an actor; ``fault`` is decided by the scheduler."""

    def __init__(self, sim: Sim, host: SimHost, fn: Callable, write: int | None) -> None:
        self.sim = sim
        self.host = host
        self.fn = fn
        self.write = write  # the offset of a write, None for a read
        self.incarnation = host.incarnation  # the node's boot that issued it
        self.done = _Done(self)
        self.started = False
        self.finished = False
        self.result = None
        self.error: BaseException | None = None
        self.fault: str | None = None  # None, "eio"
        self.torn: set[int] | None = None  # the sectors a failing write lands

    def execute(self) -> None:
        """The system call returns now (runs the I/O against the disk)."""
        self.started = True
        self.sim.running = self
        try:
            self.result = self.fn()
        except BaseException as e:
            self.error = e
        finally:
            self.sim.running = None
            self.finished = True


class SimPool:
    def __init__(self, sim: Sim, host: SimHost) -> None:
        self.sim = sim
        self.host = host
        self.writing: int | None = None  # offset, set by SimStorage.write around Storage.write

    def submit(self, fn: Callable) -> SimJob:
        return SimJob(self.sim, self.host, fn, write=self.writing)

    def cancel(self, job: SimJob) -> bool:
        return not job.started

    def shutdown(self) -> None:
        pass


class SimStorage(Storage):
    """directio.Storage over the simulated disk: the real read/write/guard code, a fake kernel."""

    def __init__(self, sim: Sim, host: SimHost, guard: WriteGuard) -> None:
        self.path = PATH
        self.guard = guard
        self.key = (0, 1)
        self.is_block = True
        self.fd = 0
        self.sector_size = sim.disk.sector_size
        self._pool = SimPool(sim, host)
        self._lock = threading.Lock()
        self.sim = sim

    def size(self) -> int:
        return len(self.sim.disk.data)

    def write(self, offset: int, data: bytes, timeout: float) -> None:
        self._pool.writing = offset
        try:
            super().write(offset, data, timeout)
        finally:
            self._pool.writing = None

    def close(self) -> None:
        pass

    def _pread(self, offset: int, length: int) -> bytes:
        job = self.sim.running
        if job is not None and job.fault == "eio":
            raise OSError(5, "Input/output error")
        return self.sim.disk.read(offset, length)

    def _pwrite(self, offset: int, data: bytes) -> None:
        job = self.sim.running
        if job is not None and job.fault == "eio":
            self.sim.disk.write(offset, data, job.torn)
            raise OSError(5, "Input/output error")
        self.sim.disk.write(offset, data)


class SimClock(Clock):
    """One host's view of the global clock (its own monotonic offset)."""

    def __init__(self, sim: Sim, offset: float) -> None:
        self.sim = sim
        self.offset = offset

    def now(self) -> float:
        return self.sim.now + self.offset

    def sleep(self, seconds: float, abort: threading.Event | None = None) -> None:
        self.sim.sleep(max(0.0, seconds))


# ---- hosts and actors -------------------------------------------------------------------------


class Actor:
    """A thread that runs only while the scheduler has handed it the baton."""

    def __init__(self, sim: Sim, host: SimHost, name: str, body: Callable[[], None]) -> None:
        self.sim = sim
        self.host = host
        self.name = name
        self.body = body
        self.go = threading.Semaphore(0)
        self.dead = False
        self.finished = False
        self.pending: SimJob | None = None  # the I/O it waits for
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        self.go.acquire()
        try:
            if not self.dead:
                self.body()
        except Crashed:
            pass
        except BaseException as e:  # an engine bug surfaced as an unexpected exception
            self.sim.failures.append(f"{self.name}: {type(e).__name__}: {e}")
        finally:
            self.finished = True
            self.sim.baton.release()

    def pause(self) -> None:
        """Give the baton back and wait for it (called by this actor's own thread)."""
        self.sim.baton.release()
        self.go.acquire()
        if self.dead:
            raise Crashed()

    def kill(self) -> None:
        """Unwind the thread (it raises Crashed where it paused) and wait until it has ended."""
        self.dead = True
        if not self.finished:
            self.go.release()
            self.sim.baton.acquire()
        self.thread.join()

    def resume(self) -> None:
        """Run this actor until it pauses (called by the scheduler)."""
        self.sim.current = self
        self.go.release()
        self.sim.baton.acquire()
        self.sim.current = None


@dataclass
class SimHost:
    host_id: int
    offset: float  # its monotonic clock's offset from global time
    incarnation: int = 0
    generation: int = 0
    last_renewal: float | None = None  # T, global time of our last successful renewal
    crashed_until: float | None = None  # reset time while down
    actors: list[Actor] = field(default_factory=list)
    tokens: dict[str, paxos.Token] = field(default_factory=dict)
    storage: SimStorage | None = None

    @property
    def down(self) -> bool:
        return self.crashed_until is not None


@dataclass
class Hold:
    host_id: int
    generation: int
    lver: int
    start: float
    end: float = float("inf")


class Oracle:
    """No two overlapping holds of one lease; one owner per lease version."""

    def __init__(self) -> None:
        self.holds: dict[str, list[Hold]] = {}
        self.owners: dict[tuple[str, int], tuple[int, int]] = {}
        self.violations: list[str] = []

    def acquired(self, res: str, host: SimHost, lver: int, now: float) -> Hold:
        for h in self.holds.get(res, []):
            if h.host_id != host.host_id and h.start <= now < h.end:
                self.violations.append(
                    f"t={now:.3f}: {res} acquired by host {host.host_id} gen {host.generation} "
                    f"lver {lver} while host {h.host_id} gen {h.generation} holds lver {h.lver} "
                    f"(since t={h.start:.3f}, until t={h.end:.3f})"
                )
        owner = self.owners.setdefault((res, lver), (host.host_id, host.generation))
        if owner != (host.host_id, host.generation):
            self.violations.append(
                f"t={now:.3f}: {res} lver {lver} has two owners: host {owner[0]} gen {owner[1]} "
                f"and host {host.host_id} gen {host.generation}"
            )
        hold = Hold(host.host_id, host.generation, lver, now)
        self.holds.setdefault(res, []).append(hold)
        return hold

    @staticmethod
    def ended(hold: Hold, at: float) -> None:
        hold.end = min(hold.end, at)


# ---- the scheduler ------------------------------------------------------------------------------


class Sim:
    def __init__(
        self,
        seed: int,
        *,
        hosts: int = 3,
        resources: int = 2,
        horizon: float = 40.0,
        faults: Faults | None = None,
        guard_cls: type[WriteGuard] = WriteGuard,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.horizon = horizon
        self.faults = faults or self.draw_faults()
        self.guard_cls = guard_cls
        self.now = 0.0
        self.events: list[tuple[float, float, str, object]] = []
        self.baton = threading.Semaphore(0)
        self.current: Actor | None = None
        self.running: SimJob | None = None
        self.failures: list[str] = []
        self.oracle = Oracle()
        self.stats = {
            "acquired": 0,
            "refused": 0,
            "timeouts": 0,
            "late": 0,
            "eio": 0,
            "crash": 0,
            "lost": 0,
            "dropped": 0,
        }
        self.resources = [
            paxos.Resource(LOCKSPACE, f"R{i}", PATH, (i + 1) * SIZES.align_size)
            for i in range(resources)
        ]
        self.loc = delta.Location(LOCKSPACE, PATH, 0)
        self.disk = SimDisk((resources + 1) * SIZES.align_size)
        image, commit = delta.lockspace_image(LOCKSPACE, SIZES, N)
        self.disk.write(0, image)
        self.disk.write(0, commit)
        for res in self.resources:
            self.disk.write(res.offset, paxos.resource_image(res, SIZES, num_hosts=hosts))
        self.hosts = [SimHost(h, float(self.rng.randrange(0, 1000))) for h in range(1, hosts + 1)]
        self.hold_of: dict[tuple[int, str], Hold] = {}

    def draw_faults(self) -> Faults:
        r = self.rng
        return Faults(
            timeout=r.choice([0.0, 0.02, 0.05, 0.15]),
            eio=r.choice([0.0, 0.02, 0.05]),
            late_max=r.choice([2.0, 10.0, 30.0]),
            never=r.choice([0.0, 0.1]),
            crash=r.choice([0.0, 0.0, 0.005, 0.02]),
            latency=r.choice([0.01, 0.05, 0.2]),
            pause=r.choice([0.2, 2.0]),
        )

    # -- events --

    def at(self, t: float, kind: str, payload: object) -> None:
        heapq.heappush(self.events, (t, self.rng.random(), kind, payload))

    def io_wait(self, job: SimJob, timeout: float) -> bool:
        """An actor waits for ``job`` at most ``timeout``: decide its fate, pause until it."""
        actor = self.current
        assert actor is not None and self.running is None
        f, r = self.faults, self.rng
        start = self.now
        if actor.host.crashed_until is not None:
            raise Crashed()
        u = r.random()
        lease_write = job.write is not None and job.write >= SIZES.align_size
        timeout_rate = f.timeout + (f.lease_write_timeout if lease_write else 0.0)
        if u < timeout_rate:
            self.stats["timeouts"] += 1
            if r.random() < 0.5:  # reached the kernel: abandoned, returns later (or never)
                job.started = True
                if r.random() >= f.never:
                    self.at(start + timeout + r.uniform(0, f.late_max), "late", job)
            self.at(start + timeout, "resume", (actor, False))
        else:
            if u < timeout_rate + f.eio:
                self.stats["eio"] += 1
                job.fault = "eio"  # a failing write lands a random subset of its sectors
                job.torn = {i for i in range(64) if r.random() < 0.5}
            slow = r.random() < 0.05
            latency = r.uniform(0, timeout) if slow else r.expovariate(1 / f.latency)
            self.at(start + min(latency, 0.9 * timeout), "complete", (actor, job))
        actor.pending = job
        actor.pause()
        actor.pending = None
        return job.finished

    def sleep(self, seconds: float) -> None:
        actor = self.current
        assert actor is not None
        self.at(self.now + seconds, "resume", (actor, None))
        actor.pause()

    def run(self) -> Sim:
        for host in self.hosts:
            self.start_host(host)
        try:
            while self.events and not self.oracle.violations and not self.failures:
                t, _, kind, payload = heapq.heappop(self.events)
                if t > self.horizon:
                    break
                self.now = max(self.now, t)
                self.dispatch(kind, payload)
        finally:
            self.stop_all()
        return self

    def dispatch(self, kind: str, payload) -> None:
        if kind == "complete":
            actor, job = payload
            if actor.dead:
                return
            job.execute()
            actor.resume()
        elif kind == "resume":
            actor, _ = payload
            if not actor.dead:
                actor.resume()
        elif kind == "late":
            job = payload
            host = job.host
            if job.incarnation != host.incarnation or (
                host.crashed_until is not None and self.now >= host.crashed_until
            ):
                # the node was reset: its queued writes are gone. A restart comes only after
                # the reset, so a write of an earlier incarnation is gone too (crashed_until is
                # cleared at the restart: checking it alone let a write abandoned before a
                # crash land over the next incarnation's ballots, seed 8343)
                self.stats["dropped"] += 1
                return
            self.stats["late"] += 1
            job.execute()
        elif kind == "deadline":
            host, incarnation, t = payload
            if host.incarnation == incarnation and host.last_renewal == t and not host.down:
                self.crash(host)  # no renewal for 8N: fenced, watchdog resets it at T + 8N + W
        elif kind == "crash":
            host, incarnation = payload
            if host.incarnation == incarnation and not host.down:
                self.crash(host)
        elif kind == "restart":
            self.start_host(payload)

    # -- hosts --

    def start_host(self, host: SimHost) -> None:
        host.incarnation += 1
        host.crashed_until = None
        host.last_renewal = None
        host.tokens = {}
        guard = self.guard_cls(SimClock(self, host.offset))
        host.storage = SimStorage(self, host, guard)
        host.actors = []
        table = delta.HostStatusTable(self.loc, SIZES, N)
        joined = threading.Event()
        host.actors.append(
            Actor(self, host, f"renew-{host.host_id}", lambda: self.renewer(host, table, joined))
        )
        host.actors.append(
            Actor(self, host, f"user-{host.host_id}", lambda: self.user(host, table, joined))
        )
        for actor in host.actors:
            self.at(self.now, "resume", (actor, None))
        if self.faults.crash:
            self.at(
                self.now + self.rng.expovariate(self.faults.crash),
                "crash",
                (host, host.incarnation),
            )

    def crash(self, host: SimHost) -> None:
        """The agent stops; holders run on until the watchdog resets the node at T + 8N + W."""
        self.stats["crash"] += 1
        t = host.last_renewal
        reset = self.now if t is None else max(self.now, t + timeouts.host_dead_seconds(N, W))
        host.crashed_until = reset
        for name in host.tokens:
            self.oracle.ended(self.hold_of.pop((host.host_id, name)), reset)
        host.tokens = {}
        for actor in host.actors:
            job = actor.pending
            if job is not None and not job.started and self.rng.random() < 0.5:
                job.started = True  # in flight: may still land before the reset
                self.at(self.rng.uniform(self.now, reset), "late", job)
            actor.kill()
        host.actors = []
        self.at(reset + self.rng.uniform(0, 3), "restart", host)

    def clock(self, host: SimHost) -> SimClock:
        return SimClock(self, host.offset)

    def renewer(self, host: SimHost, table: delta.HostStatusTable, joined: threading.Event):
        """The lockspace's join and renewal loop (``core.lockspace``), on the real engine."""
        clock = self.clock(host)
        lease = delta.DeltaLease(
            host.storage, self.loc, SIZES, host.host_id, f"node{host.host_id}", N,
            fire_timeout=W, clock=clock,
        )  # fmt: skip
        while True:
            try:
                lease.acquire()
                break
            except errors.LeaseError:
                clock.sleep(1.0)
        host.generation = lease.generation
        self.renewed(host, lease.record.timestamp)
        joined.set()
        while True:
            last = lease.record.timestamp
            due = last + timeouts.id_renewal_seconds(N)
            if clock.now() < due:
                clock.sleep(due - clock.now())
                continue
            try:
                record, area = lease.renew()
            except (errors.RenewOwner, errors.RenewDiff):
                # the lockspace fails (a write of ours landed after all, or another writer):
                # the agent fences, as when renewals fail for 8N
                self.stats["lost"] += 1
                self.at(self.now, "crash", (host, host.incarnation))
                return
            except errors.LeaseError:
                clock.sleep(0.5)
                continue
            table.update(area, clock.now(), host.host_id)
            self.renewed(host, record.timestamp)

    def renewed(self, host: SimHost, timestamp: int) -> None:
        t = timestamp - host.offset  # the record's time, in global time
        host.last_renewal = t
        self.at(t + timeouts.id_renewal_fail_seconds(N), "deadline", (host, host.incarnation, t))

    def user(self, host: SimHost, table: delta.HostStatusTable, joined: threading.Event) -> None:
        """A lease user: acquires and releases random resources, as the agent's holders do."""
        clock = self.clock(host)
        while not joined.is_set():
            clock.sleep(0.5)
        st = host.storage
        view = paxos.OwnerView(st, self.loc, SIZES, N, table)
        while True:
            res = self.rng.choice(self.resources)
            clock.sleep(self.rng.uniform(0, self.faults.pause))
            acq = paxos.Acquirer(
                st, res, host.host_id, host.generation, N, view, clock=clock, rand=self.rng.random
            )
            token = host.tokens.get(res.name)
            if token is not None:
                self.oracle.ended(self.hold_of.pop((host.host_id, res.name)), self.now)
                del host.tokens[res.name]
                with contextlib.suppress(errors.LeaseError):
                    acq.release(token)
                continue
            try:
                token = acq.acquire(nowait=self.rng.random() < 0.5)
            except errors.LeaseError:
                self.stats["refused"] += 1
                continue
            self.stats["acquired"] += 1
            host.tokens[res.name] = token
            self.hold_of[(host.host_id, res.name)] = self.oracle.acquired(
                res.name, host, token.lver, self.now
            )

    def stop_all(self) -> None:
        for host in self.hosts:
            for actor in host.actors:
                actor.kill()
            host.actors = []
