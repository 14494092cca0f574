"""An adversarial campaign with real agents: "two writers never".

K simulated nodes (real ``vmlease-agent`` daemons, file watchdogs supervised by the harness that
plays the hardware; see ``vmlease_agent.sim.node``) contend for R disk leases, while a seeded RNG
picks what happens next: holders start (one, or two on one node at the same instant), exit, are
SIGKILLed or release; and the nemesis: agents are SIGKILLed (restarted later, with or without
their state.json), SIGTERMed with holders running (a rolling update), restarted with another
watchdog fire timeout W and/or io_timeout N (a rolling update changing the configuration),
frozen (SIGSTOP, SIGCONT later, sometimes past their deadline so the watchdog must fire), and
one node's path to the lockspace stalls in the kernel or fails with EIO for a while (FUSE, when
available).

The oracle checks one invariant: each holder (``campaign_holder.py``) appends CLOCK_BOOTTIME
stamps to its own log only while it holds its lease, so for any two holders of one resource the
intervals [first stamp, last stamp] must not overlap. A watchdog fire is a node reset: every
process of the node dies at that instant (the harness SIGKILLs the node's process groups, which
holders join); a holder of that node started before the fire ends there, and one that wrote
later than the fire is reported as a harness defect (``survived_reset``).

Every fault is also judged on its own (``judge_faults``): holders of a faulted node whose lease
another node took later must have stopped writing, and must not have been seen alive unless they
had stopped and asked for the release, before that node's holder first wrote (when each holder
died is taken from a pidfd, to the millisecond: "fenced before takeover" is then proven, not
only "no overlap seen"). Faults after which nothing can keep the node's watchdog fed (a frozen
agent, a storage failure past the lockspace deadline, an agent killed and not adopted in time)
must end their holders within a bound (``must_end_by``). The agent's watchdog device is sampled
against the W its delta lease on disk advertises (``_check_device``): peers judge the node by
that W, so the device must never run with a larger one (after a W raised across a restart it
keeps the old one until a renewal has written the new one).

Replay: the seed is printed; ``VMLEASE_CAMPAIGN_SEED=S`` repeats the same choices (the timing
of real processes still varies).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vmlease_agent.core.watchdog import read_state
from vmlease_agent.engine import delta, ondisk, timeouts
from vmlease_agent.engine.clock import boottime
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.errors import LeaseError
from vmlease_agent.rpc.client import AgentClient
from vmlease_agent.sim.node import SimNode

from .cluster import LS, N, W

HOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "campaign_holder.py")

#: How late after a fire a holder's stamp may be before we call it a survivor of the reset:
#: the harness takes its clock, then SIGKILLs the groups (microseconds apart).
RESET_SLACK = 0.2

#: Slack on the bound a fault puts on its holders' end (``Fault.must_end_by``): the harness polls
#: the device every 0.1 s and, like every process here, may wait for one of the two CPUs.
FENCE_SLACK = 1.0

#: The watchdog fire timeouts and io_timeouts a configuration change picks from (small W keeps
#: failovers, 8N + W, short). N = 2 doubles a node's deadline; it is picked less often.
#: W = 10 is there because with N = 1 a W up to 6N is covered by the 8N alone (the device fires
#: within W of its last feed, at most 2N after the last renewal): only a W above 6N makes the
#: W in 8N + W load-bearing (an agent whose peers waited 8N only passed every run without it).
W_CHOICES = (3, 4, 6, 10)
IO_CHOICES = (1, 1, 2)
#: The W each node starts with (node-a, node-b, node-c): one of them above 6N from the start.
INITIAL_W = (4, 6, 10)

#: Pace (measured on 2 CPUs): 14 leases for 3 nodes, short holds, up to 8 holders in flight
#: per node, a loop pass every 10-80 ms: about 300-400 acquisitions a minute with faults on.
RESOURCES = 14
MAX_HOLDERS_PER_NODE = 8
PAUSE = (0.01, 0.08)
#: Mean seconds between two fault attempts (one is skipped while two nodes are still busy).
FAULT_EVERY = 2.5


# ---- the oracle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    resource: str
    holder: str  # e.g. "h17(pid 4242)"
    node: str
    first: float
    last: float
    #: when the holder provably could not write any more (its own "stopped" stamp before a
    #: release, its death from its pidfd, its node's reset); None if not known
    ended: float | None = None
    #: the latest moment it was seen running and not stopped by choice (it could still write)
    live_seen: float = 0.0
    #: how it ended: reset, fenced, stopped (released), killed, exited, closed (end of campaign)
    how: str = ""


@dataclass(frozen=True)
class Violation:
    resource: str
    a: Interval
    b: Interval

    @property
    def nodes(self) -> set[str]:
        return {self.a.node, self.b.node}

    def describe(self) -> str:
        a, b = self.a, self.b
        return (
            f"TWO WRITERS on {self.resource}: {a.holder}@{a.node} wrote "
            f"[{a.first:.3f}, {a.last:.3f}] and {b.holder}@{b.node} wrote "
            f"[{b.first:.3f}, {b.last:.3f}] (overlap {max(a.first, b.first):.3f}.."
            f"{min(a.last, b.last):.3f}, {min(a.last, b.last) - max(a.first, b.first):.3f} s)"
        )


@dataclass(frozen=True)
class AliveAtTakeover:
    """Another node's holder wrote while the old one was still running, not stopped by choice
    (it did not happen to write then, but a VM would have: it was not fenced)."""

    resource: str
    old: Interval
    new: Interval
    fault: str

    @property
    def nodes(self) -> set[str]:
        return {self.old.node, self.new.node}

    def describe(self) -> str:
        o, n = self.old, self.new
        return (
            f"NOT FENCED BEFORE TAKEOVER on {self.resource} ({self.fault}): {o.holder}@{o.node} "
            f"was seen running at {o.live_seen:.3f}, after {n.holder}@{n.node} first wrote at "
            f"{n.first:.3f}"
        )


@dataclass(frozen=True)
class LateFence:
    """A holder of a node that nothing could keep fed wrote (or ran) past the fault's bound."""

    old: Interval
    fault: str
    bound: float

    @property
    def nodes(self) -> set[str]:
        return {self.old.node}

    def describe(self) -> str:
        o = self.old
        return (
            f"LATE FENCE ({self.fault}): {o.holder}@{o.node} wrote until {o.last:.3f} and was "
            f"seen running at {o.live_seen:.3f}, past {self.bound:.3f}, when its node must have "
            "been fenced or reset"
        )


def overlaps(intervals: list[Interval]) -> list[Violation]:
    """Every pair of intervals of one resource that share an instant (closed intervals: two
    distinct writers never write the same CLOCK_BOOTTIME stamp unless both were writing)."""
    found = []
    by_res: dict[str, list[Interval]] = collections.defaultdict(list)
    for iv in intervals:
        by_res[iv.resource].append(iv)
    for res, ivs in sorted(by_res.items()):
        ivs.sort(key=lambda x: (x.first, x.last))
        # sweep: keep the intervals still open at each start (most end before the next begins)
        open_: list[Interval] = []
        for b in ivs:
            open_ = [a for a in open_ if a.last >= b.first]
            found += [Violation(res, a, b) for a in open_]
            open_.append(b)
    return found


@dataclass
class Fault:
    """One fault the nemesis injected, as the verdict sees it."""

    kind: str
    node: str
    start: float  # boottime
    end: float | None = None  # when the node was up and free again (None: never)
    #: labels of the holders of the node that held their lease when it began
    holders: tuple[str, ...] = ()
    #: holders writing when it began must have stopped by then (nothing could feed the device)
    must_end_by: float | None = None
    #: the bound holds for holders that began writing during the fault too (a failing lockspace
    #: refuses new leases from its deadline on, and the fault lasts past the bound)
    bound_all: bool = False
    #: holders started on the node just before it, so that it has someone to fence: (hid, status)
    vms: tuple[Holder, ...] = ()


@dataclass
class FaultVerdict:
    violations: list = field(default_factory=list)
    counts: collections.Counter = field(default_factory=collections.Counter)
    #: seconds between the old holder's end and the takeover's first write (proven ones)
    gaps: list[float] = field(default_factory=list)


def judge_faults(faults: list[Fault], intervals: list[Interval]) -> FaultVerdict:
    """For every fault that left holders on its node: whether another node later took their
    leases, and if so that the takeover began after they had stopped writing, was not seen while
    they could still write, and (proven when their end is known) after they ended; and for
    faults with a bound, that their holders ended by it."""
    v = FaultVerdict()
    c = v.counts
    by_label = {iv.holder: iv for iv in intervals}
    by_res: dict[str, list[Interval]] = collections.defaultdict(list)
    for iv in intervals:
        by_res[iv.resource].append(iv)
    firsts: dict[str, list[float]] = {}
    for res, ivs in by_res.items():
        ivs.sort(key=lambda x: (x.first, x.last))
        firsts[res] = [x.first for x in ivs]
    for f in faults:
        c[f"faults_{f.kind}"] += 1
        end = f.end if f.end is not None else float("inf")
        involved = {by_label[h].holder: by_label[h] for h in f.holders if h in by_label}
        for iv in intervals:
            if iv.node == f.node and f.start <= iv.first <= end:
                involved.setdefault(iv.holder, iv)
        if not involved:
            continue
        c["faults_with_holders"] += 1
        taken = False
        for old in involved.values():
            if f.must_end_by is not None and old.first <= (
                f.must_end_by if f.bound_all else f.start
            ):
                c["deadline_checks"] += 1
                if max(old.last, old.live_seen) > f.must_end_by:
                    v.violations.append(LateFence(old, f.kind, f.must_end_by))
            ivs = by_res[old.resource]
            i = bisect.bisect_right(firsts[old.resource], old.first)
            new = next((x for x in ivs[i:] if x.node != old.node), None)
            if new is None:
                continue
            taken = True
            c["takeovers"] += 1
            c[f"takeovers_from_{old.how or 'unknown'}"] += 1
            if new.first <= old.last:
                c["takeovers_overlapping"] += 1  # reported by ``overlaps``
            elif new.first <= old.live_seen:
                v.violations.append(AliveAtTakeover(old.resource, old, new, f.kind))
            elif old.ended is not None and old.ended < new.first:
                c["takeovers_proven_after_end"] += 1
                v.gaps.append(new.first - old.ended)
            else:
                # after its last write and after it was last seen running, but its end is
                # known only later than the takeover (observed late) or not at all
                c["takeovers_after_last_write_only"] += 1
        if taken:
            c["faults_taken_over"] += 1
            c[f"faults_taken_over_{f.kind}"] += 1
    return v


def read_stamps(path: str) -> list[float]:
    """Complete lines only: a holder SIGKILLed mid-write leaves a partial last line."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    return [float(x) for x in text.split("\n")[:-1] if x.strip()]


# ---- the campaign ----------------------------------------------------------------------------


@dataclass
class Holder:
    hid: str
    node: str
    resource: str
    log: str
    status: str
    proc: subprocess.Popen
    spawned: float  # boottime
    reset_at: float | None = None  # its node's watchdog fired while it lived
    died_at: float | None = None  # from its pidfd (``DeathWatch``)
    seen_alive_at: float = 0.0  # the last time the campaign saw it running
    killed: bool = False  # SIGKILLed by the campaign
    #: a long-lived VM (each node keeps one, and storage faults start more): never killed or
    #: released by the campaign, so faults find holders that outlive their critical window
    vm: bool = False
    _outcome: str = ""

    @property
    def label(self) -> str:
        return f"{self.hid}(pid {self.proc.pid})"

    def _lines(self) -> list[str]:
        try:
            with open(self.status) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def outcome(self) -> str:
        """acquired, refused, or "" (not yet, or never)."""
        if not self._outcome:
            lines = self._lines()
            self._outcome = lines[0].split()[0] if lines and lines[0].split() else ""
        return self._outcome

    def stopped_at(self) -> float | None:
        """When it stopped writing to release its lease (SIGUSR1), by its own clock."""
        for line in self._lines():
            if line.startswith("stopped "):
                return float(line.split()[1])
        return None


class DeathWatch:
    """When each holder process exits, to the millisecond: a thread waits on their pidfds."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.holders: dict[int, Holder] = {}
        self.lock = threading.Lock()
        self.done = False
        self.thread = threading.Thread(target=self._run, name="death-watch", daemon=True)
        self.thread.start()

    def add(self, h: Holder) -> None:
        # the child cannot be reaped before this (only poll() reaps), so its pid is still ours
        fd = os.pidfd_open(h.proc.pid)
        with self.lock:
            self.holders[fd] = h
        self.ep.register(fd, select.EPOLLIN)

    def _run(self) -> None:
        while not self.done:
            events = self.ep.poll(0.5)
            now = boottime()
            for fd, _ in events:
                with self.lock:
                    h = self.holders.pop(fd, None)
                if h is None:
                    continue
                h.died_at = now
                self.ep.unregister(fd)
                os.close(fd)

    def close(self) -> None:
        self.done = True
        self.thread.join(timeout=5)
        with self.lock:
            for fd in self.holders:
                os.close(fd)
            self.holders.clear()
        self.ep.close()


@dataclass
class Node:
    sim: SimNode
    host_id: int
    #: the watchdog fire timeout and io_timeout the next agent starts with
    w: int = W
    io: int = N
    #: bounds on what the node's device and deadline may run with now (across a change)
    w_bound: int = W
    io_bound: int = N
    fires_seen: int = 0
    #: what the node is going through: "" (up, free for faults) or the fault's name
    busy: str = ""
    fault: Fault | None = None
    #: timed continuations of the current fault: (boottime due, what, callable)
    pending: list[tuple[float, str, Callable[[], None]]] = field(default_factory=list)
    unhealthy_since: float | None = None
    next_heal_check: float = 0.0
    #: the W the running agent was started with
    running_w: int = W
    #: a reconfiguration whose io_timeout the last start did not take: (wanted, running)
    io_pending: tuple[int, int] | None = None


class Campaign:
    def __init__(
        self,
        work: str,
        seed: int,
        nodes: int = 3,
        resources: int = RESOURCES,
        faults: bool = True,
        stall: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.work = work
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults
        self.say = log
        self.counts: collections.Counter[str] = collections.Counter()
        self.fault_counts: collections.Counter[str] = collections.Counter()
        self.holders: list[Holder] = []
        self.live: list[Holder] = []  # not yet seen exited
        self.undecided: list[Holder] = []  # no outcome yet
        self.acquired = 0  # outcomes seen so far (the stop condition)
        self.races: list[list[Holder]] = []
        self.nodes: list[Node] = []
        self.fault_log: list[Fault] = []
        self.fs = None
        self.fs_mnt = ""
        self.fs_node = ""
        self.anomalies: list[str] = []
        self.started = 0.0
        self.ended = 0.0
        self.cap_hit = False
        self.deaths: DeathWatch | None = None
        self.ls_path = os.path.join(work, "lockspace")
        self._init_disks(resources)
        self.ls_st = Storage(self.ls_path, writable=False)
        self.ls_loc = delta.Location(LS, self.ls_path, 0)
        self.ls_sizes, _ = delta.read_sizes(self.ls_st, self.ls_loc, 5)
        if faults and stall:
            self._mount_stallfs()
        for i in range(1, nodes + 1):
            name = f"node-{chr(ord('a') + i - 1)}"
            if self.fs and i == 1:
                self.fs_node = name
            w = INITIAL_W[(i - 1) % len(INITIAL_W)]
            sim = SimNode(name, work, io_timeout=N, fire_timeout=w)
            node = Node(sim, i, w_bound=w, running_w=w)
            self._configure(node, w, N)
            self.nodes.append(node)

    # -- setup and teardown

    def _init_disks(self, resources: int) -> None:
        vm = os.path.join(os.path.dirname(sys.executable), "vmlease")
        with open(self.ls_path, "wb") as f:
            f.truncate(1 << 20)
        subprocess.run(
            [vm, "direct", "init", "-s", f"{LS}:0:{self.ls_path}:0", "-o", str(N)],
            check=True,
            capture_output=True,
        )
        self.resources = []
        for r in range(resources):
            path = os.path.join(self.work, f"res{r}.lease")
            with open(path, "wb") as f:
                f.truncate(1 << 20)
            spec = f"{LS}:res{r}:{path}:0"
            subprocess.run([vm, "direct", "init", "-r", spec], check=True, capture_output=True)
            self.resources.append(spec)

    def _mount_stallfs(self) -> None:
        from stallfs import StallFs
        from stallfs_fixture import stallfs_skip_reason

        reason = stallfs_skip_reason()
        if reason:
            self.say(f"campaign: no storage stalls or failures ({reason})")
            return
        self.fs_mnt = tempfile.mkdtemp(prefix="vmlease-campaign-fs-")
        self.fs = StallFs(self.fs_mnt, backing=self.ls_path)

    def _configure(self, n: Node, w: int, io: int) -> None:
        """What the node's next agent starts with: ``--watchdog-fire-timeout w`` and
        ``--lockspace LS:HOST_ID:PATH:0:io`` (node 1 reaches the lockspace through the stall fs)."""
        path = self.fs.path if (self.fs and n.sim.name == self.fs_node) else self.ls_path
        n.w, n.io = w, io
        n.sim.fire_timeout = w
        n.sim.io_timeout = io
        n.sim.lockspaces = [f"{LS}:{n.host_id}:{path}:0:{io}"]

    def start(self) -> None:
        self.deaths = DeathWatch()
        for n in self.nodes:
            n.sim.start()
        for n in self.nodes:
            n.sim.wait_joined(LS)
        self.started = boottime()

    def close(self) -> None:
        """Stop everything: holders, the stall (first: a process stuck on it cannot die), nodes."""
        for h in self.live:
            if h.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    h.proc.kill()
        if self.fs:
            with contextlib.suppress(Exception):
                self.fs.resume()
        for n in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                if n.sim.agent and n.sim.agent.poll() is None:
                    n.sim.agent.send_signal(signal.SIGCONT)
            n.sim.stop()
        for h in self.live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.proc.wait(timeout=10)
        time.sleep(0.2)  # the death watch records the last exits
        if self.deaths:
            self.deaths.close()
        if self.fs:
            self.fs.close()
            shutil.rmtree(self.fs_mnt, ignore_errors=True)
            self.fs = None
        self.ls_st.close()

    # -- the loop

    def run(self, seconds: float, acquisitions: int | None = None) -> None:
        """Until ``seconds`` have passed, or ``acquisitions`` (if given) were seen, whichever is
        first; ``cap_hit`` says the time ran out before the count."""
        target = f", stop at {acquisitions} acquisitions" if acquisitions else ""
        self.say(
            f"campaign: seed {self.seed} (replay: VMLEASE_CAMPAIGN_SEED={self.seed}), "
            f"{len(self.nodes)} nodes, {len(self.resources)} resources, "
            f"faults {'on' if self.faults else 'off'}, storage stalls and failures "
            f"{'on ' + self.fs_node if self.fs else 'off'}, at most {seconds:.0f} s{target}"
        )
        t0 = time.monotonic()
        end = t0 + seconds
        next_fault = t0 + self.rng.expovariate(1 / FAULT_EVERY)
        next_progress = t0 + 60
        while True:
            now = time.monotonic()
            if acquisitions and self.acquired >= acquisitions:
                break
            if now >= end:
                self.cap_hit = bool(acquisitions)
                break
            self.observe()
            self.act()
            if self.faults and now >= next_fault:
                self.nemesis()
                next_fault = now + self.rng.expovariate(1 / FAULT_EVERY)
            if now >= next_progress:
                next_progress += 60
                minutes = (now - t0) / 60
                self.say(
                    f"campaign: {minutes:.0f} min: {self.acquired} acquisitions "
                    f"({self.acquired / minutes:.0f}/min), {len(self.fault_log)} faults, "
                    f"{self.counts['watchdog_fires']} fires, {len(self.anomalies)} anomalies"
                )
            time.sleep(self.rng.uniform(*PAUSE))
        # let every fault run its course (restart, resume) before judging
        quiet_end = time.monotonic() + 90
        while time.monotonic() < quiet_end and any(n.busy for n in self.nodes):
            self.observe()
            time.sleep(0.1)
        self.observe()
        self.ended = boottime()

    def alive(self, n: Node) -> bool:
        return n.sim.agent is not None and n.sim.agent.poll() is None

    def observe(self) -> None:
        now = boottime()
        for h in list(self.undecided):
            o = h.outcome()
            if o:
                self.undecided.remove(h)
                self.acquired += o == "acquired"
        for n in self.nodes:
            fired = [e for e in n.sim.watchdog_events() if e["event"] == "fired"]
            for e in fired[n.fires_seen :]:
                self.counts["watchdog_fires"] += 1
                self.counts[f"fires_during_{n.busy or 'nothing'}"] += 1
                for h in self.holders:
                    if (
                        h.node == n.sim.name
                        and h.spawned < e["at"]
                        and h.reset_at is None
                        and (h.died_at is None or h.died_at >= e["at"])  # alive at the fire
                    ):
                        h.reset_at = e["at"]
                        self.counts["holders_reset"] += 1
                        if h.proc.poll() is None:
                            # the harness kills the node's groups; anything left is our defect
                            time.sleep(0.05)
                        if h.proc.poll() is None:
                            self.anomalies.append(
                                f"{h.hid}@{n.sim.name} still ran after the fire at {e['at']:.3f}"
                            )
                            h.proc.kill()
            n.fires_seen = len(fired)
            # continuations of the current fault
            for item in sorted(n.pending, key=lambda x: x[0]):
                if item[0] <= now:
                    n.pending.remove(item)
                    item[2]()
            if not n.pending and n.busy:
                n.busy = ""
                if n.fault is not None:
                    n.fault.end = boottime()
                    n.fault = None
            # a node whose agent died (a reset) reboots: a new agent after a moment
            if not n.busy and not self.alive(n):
                self._schedule_restart(n, "reboot", self.rng.uniform(0.5, 4.0))
            elif not n.busy and now >= n.next_heal_check:
                n.next_heal_check = now + 0.5
                self._heal(n, now)
            self._check_device(n)
        for h in list(self.live):
            t = boottime()
            if h.proc.poll() is None:
                h.seen_alive_at = t
            else:
                self.live.remove(h)

    def _check_device(self, n: Node) -> None:
        """The watchdog device against the delta lease on disk: peers judge the node by the W and
        N of its record. Device first, then the record: a renewal that wrote a larger W lands on
        disk before the agent may use it, never after.

        A device state written by the running agent must not have a W above the record's (the
        agent runs the device with the smallest W its records advertise: after a W raised across
        a restart, the old one until a renewal has written the new one). A countdown an earlier
        agent left (SIGTERM with leases held) may still run with that agent's W for a moment
        after the new agent renewed with a smaller one (it renews before it re-arms): counted,
        and judged by what matters, that it fires before peers may take over (record timestamp
        + 8N + W: the agent's records are CLOCK_BOOTTIME seconds, like ours)."""
        if n.sim.harness is None or n.sim.harness.poll() is not None:
            return  # fired (or not started): the next harness starts with a fresh device
        try:
            dev = read_state(n.sim.watchdog_file)
        except (OSError, ValueError):
            return
        if not dev.armed:
            return
        try:
            rec = delta.read_host(self.ls_st, self.ls_loc, self.ls_sizes, n.host_id, 5)
        except LeaseError:
            return
        if not rec.timestamp:
            return
        advertised = ondisk.watchdog_fire_timeout_of(rec, timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT)
        self.counts["device_checks"] += 1
        ours = n.sim.agent is not None and dev.pid == n.sim.agent.pid
        takeover = rec.timestamp + timeouts.host_dead_seconds(rec.io_timeout or n.io, advertised)
        if dev.fire_timeout > advertised and ours:
            self.counts["device_above_record"] += 1
            self.anomalies.append(
                f"{n.sim.name}: the agent (pid {dev.pid}) runs its watchdog with W = "
                f"{dev.fire_timeout} s (fed at {dev.fed_at:.3f}) but its delta lease on disk "
                f"advertises {advertised} s (generation {rec.owner_generation}, timestamp "
                f"{rec.timestamp})"
            )
        elif dev.fire_timeout > advertised:
            self.counts["device_old_countdown_above_record_w"] += 1
            if dev.fed_at + dev.fire_timeout > takeover:
                self.anomalies.append(
                    f"{n.sim.name}: the countdown an earlier agent (pid {dev.pid}) left fires at "
                    f"{dev.fed_at + dev.fire_timeout:.3f} (W = {dev.fire_timeout} s), after "
                    f"peers may take over ({takeover}: the record advertises W = {advertised} "
                    f"s, timestamp {rec.timestamp})"
                )
        elif advertised < n.running_w == n.w and dev.fire_timeout == advertised and ours:
            # this agent was started with a larger W than its record still advertises
            self.counts["device_held_to_record_w"] += 1

    def _heal(self, n: Node, now: float) -> None:
        """An agent that lost its lockspace (a failed renewal: it leaves it, holders or not) and
        is not waiting out anything is restarted (SIGTERM, then a new agent: it joins again), as
        an operator or the pod's probe would."""
        try:
            st = AgentClient(n.sim.run_dir, timeout=2).call("status")
        except LeaseError:
            return
        ok = any(ls["name"] == LS and ls["state"] in ("live", "joining") for ls in st["lockspaces"])
        if ok or st.get("leases") or st["watchdog"].get("new_leases_wait"):
            n.unhealthy_since = None
            return
        if n.unhealthy_since is None:
            n.unhealthy_since = now
        elif now - n.unhealthy_since > 2.0:
            n.unhealthy_since = None
            self.counts["heal_restarts"] += 1
            self._sigterm_restart(n, "heal", 0.2)

    # -- holder actions

    def act(self) -> None:
        actions: list[tuple[float, Callable[[], None]]] = [
            (10, self.start_holder),
            (1.5, self.race_local),
            (1.5, self.kill_holder),
            (1.5, self.release_holder),
        ]
        total = sum(w for w, _ in actions)
        x = self.rng.uniform(0, total)
        for w, fn in actions:
            x -= w
            if x <= 0:
                fn()
                return

    def _up(self) -> list[Node]:
        return [n for n in self.nodes if self.alive(n) and not n.busy]

    def _live_holders(self, acquired: bool = True) -> list[Holder]:
        return [
            h
            for h in self.live
            if h.proc.poll() is None and (not acquired or h.outcome() == "acquired")
        ]

    def _spawn(
        self, n: Node, resource: str, at: float, lifetime: float | None = None
    ) -> Holder | None:
        hid = f"h{len(self.holders)}"
        log = os.path.join(self.work, f"{hid}.log")
        status = os.path.join(self.work, f"{hid}.status")
        x = self.rng.random()
        lifetime = lifetime or (
            self.rng.uniform(0.1, 1.0)
            if x < 0.8
            else self.rng.uniform(1.0, 5.0)
            if x < 0.97
            else self.rng.uniform(5.0, 15.0)
        )
        argv = [
            sys.executable,
            HOLDER,
            n.sim.run_dir,
            resource,
            log,
            status,
            repr(at),
            repr(lifetime),
            str(self.rng.randrange(1 << 30)),
        ]
        spawned = boottime()
        try:
            with open(os.path.join(self.work, f"{hid}.err"), "w") as err:
                proc = subprocess.Popen(
                    argv,
                    process_group=n.sim.pgid,  # the node's: a reset kills it
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        except OSError as e:  # the node's group vanished (reset) just now
            self.counts["spawn_failed"] += 1
            self.say(f"campaign: cannot start a holder on {n.sim.name}: {e}")
            return None
        h = Holder(hid, n.sim.name, resource, log, status, proc, spawned)
        assert self.deaths is not None
        self.deaths.add(h)
        self.holders.append(h)
        self.live.append(h)
        self.undecided.append(h)
        self.counts["holders_started"] += 1
        return h

    def _spawnable(self) -> list[Node]:
        per_node = collections.Counter(h.node for h in self.live)
        return [
            n
            for n in self.nodes
            if self.alive(n) and n.busy != "freeze" and per_node[n.sim.name] < MAX_HOLDERS_PER_NODE
        ]

    def start_holder(self) -> None:
        up = self._spawnable()
        if not up:
            return
        n = self.rng.choice(up)
        if any(h.vm for h in self.live if h.node == n.sim.name):
            self._spawn(n, self.rng.choice(self.resources), 0.0)
        else:
            self._spawn_vms(n, 1, 20.0, 60.0)

    def _spawn_vms(self, n: Node, count: int, shortest: float, longest: float) -> list[Holder]:
        """``count`` long-lived holders on leases that nobody holds or asks for (as we know)."""
        busy = {h.resource for h in self.live}
        free = [r for r in self.resources if r not in busy] or self.resources
        vms = []
        for r in self.rng.sample(free, min(len(free), count)):
            h = self._spawn(n, r, 0.0, self.rng.uniform(shortest, longest))
            if h is not None:
                h.vm = True
                vms.append(h)
        return vms

    def race_local(self) -> None:
        """Two holders on one node asking for the same lease at the same instant."""
        up = self._spawnable()
        if not up:
            return
        n = self.rng.choice(up)
        res = self.rng.choice(self.resources)
        at = boottime() + 0.6  # both are running (python started) by then
        pair = [self._spawn(n, res, at), self._spawn(n, res, at)]
        if all(pair):
            self.counts["races"] += 1
            self.races.append(pair)  # type: ignore[arg-type]

    def kill_holder(self) -> None:
        live = [h for h in self._live_holders() if not h.vm]
        if live:
            h = self.rng.choice(live)
            h.killed = True
            h.proc.kill()
            self.counts["holder_sigkill"] += 1

    def release_holder(self) -> None:
        live = [h for h in self._live_holders() if not h.vm]
        if live:
            with contextlib.suppress(ProcessLookupError):
                self.rng.choice(live).proc.send_signal(signal.SIGUSR1)
                self.counts["holder_release"] += 1

    # -- the nemesis

    def nemesis(self) -> None:
        faults: list[tuple[float, Callable[[], None]]] = [
            (0.5, self.agent_sigkill),
            (0.3, self.agent_sigkill_state_lost),
            (0.5, self.agent_sigterm),
            (0.5, self.agent_freeze),
            (0.4, self.agent_reconfigure),
        ]
        if self.fs:
            faults += [(0.3, self.storage_stall), (0.5, self.storage_fail)]
        total = sum(w for w, _ in faults)
        x = self.rng.uniform(0, total)
        for w, fn in faults:
            x -= w
            if x <= 0:
                fn()
                return

    def _fault_node(self) -> Node | None:
        up = self._up()
        if not up or sum(1 for n in self.nodes if n.busy) >= 2:
            return None
        return self.rng.choice(up)

    def _begin(self, n: Node, kind: str, must_end_by: float | None = None) -> Fault:
        """Record a fault on ``n`` (counted, with the holders that hold a lease there now)."""
        held = tuple(h.label for h in self._live_holders() if h.node == n.sim.name)
        f = Fault(kind, n.sim.name, boottime(), holders=held, must_end_by=must_end_by)
        self.fault_log.append(f)
        self.fault_counts[kind] += 1
        self.fault_counts[f"{kind}_with_holders"] += bool(held)
        n.fault = f
        return f

    def _schedule_restart(
        self,
        n: Node,
        why: str,
        delay: float,
        lose_state: bool = False,
        revert: Callable[[], None] | None = None,
    ) -> None:
        n.busy = n.busy or why

        def restart() -> None:
            if n.sim.harness is not None and n.sim.harness.poll() is not None:
                self._reboot(n)
            elif lose_state:
                self._lose_state(n)
            self._prune_groups(n)
            try:
                n.sim.start()
                self.counts["agent_starts"] += 1
            except Exception as e:  # retried: the campaign goes on
                self.counts["agent_start_failed"] += 1
                if revert is not None:  # a configuration the agent refuses: the old one again
                    self.counts["reconfigure_refused"] += 1
                    self.say(f"campaign: {n.sim.name} refused its new configuration ({e})")
                    revert()
                else:
                    self.say(f"campaign: {n.sim.name} did not start ({e}); retrying")
                n.pending.append((boottime() + 1.0, "restart", restart))
                return
            self._started(n)

        n.pending.append((boottime() + delay, "restart", restart))

    def _started(self, n: Node) -> None:
        """What the new agent runs with: W from its flags, the io_timeout of its lockspace (a
        lockspace resumed from the saved state keeps the one it was joined with)."""
        try:
            st = AgentClient(n.sim.run_dir, timeout=5).call("status")
        except LeaseError:
            return
        n.running_w = n.w
        if st["watchdog"]["fire_timeout"] != n.w:
            self.anomalies.append(
                f"{n.sim.name}: started with --watchdog-fire-timeout {n.w}, runs "
                f"{st['watchdog']['fire_timeout']}"
            )
        running = next((ls["io_timeout"] for ls in st["lockspaces"] if ls["name"] == LS), None)
        if running is None:
            return
        n.io_bound = running  # what its deadline is now (8 io_bound)
        if running != n.io:
            self.counts["io_timeout_kept_from_state"] += 1
            n.io_pending = (n.io, running)
        elif n.io_pending is not None:
            self.counts["io_timeout_applied_at_join"] += 1
            n.io_pending = None

    def _lose_state(self, n: Node) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(n.sim.run_dir, "state.json"))

    def _reboot(self, n: Node) -> None:
        """The watchdog fired: the node comes back with its watchdog stopped (the device file
        removed: the next harness creates it disarmed), and usually without its run directory
        (a tmpfs: state.json is gone; kept sometimes, as if the reboot did not clear it)."""
        self.counts["reboots"] += 1
        os.unlink(n.sim.watchdog_file)
        if self.rng.random() < 0.7:
            self.counts["reboots_state_lost"] += 1
            self._lose_state(n)

    def _prune_groups(self, n: Node) -> None:
        """Forget process groups of this node that no longer exist: their ids may be reused by
        other nodes' processes, which this node's next harness must never kill."""
        alive = []
        for pgid in n.sim.pgids:
            try:
                os.killpg(pgid, 0)
                alive.append(pgid)
            except ProcessLookupError:
                pass
        n.sim.pgids[:] = alive

    def _reset_bound(self, n: Node) -> float:
        """Nothing feeds the device from now on: the node's holders end within W."""
        return boottime() + n.w_bound + FENCE_SLACK

    def agent_sigkill(self, lose_state: bool = False) -> None:
        n = self._fault_node()
        if n is None:
            return
        kind = "agent_sigkill_state_lost" if lose_state else "agent_sigkill"
        # back before the device fires (adopt), or long after it (fence or reset)
        delay = self.rng.choice([self.rng.uniform(0.2, 3.0), self.rng.uniform(3.0, 14.0)])
        # not adopted (state lost, or back after W): nothing feeds the device any more
        unfed = lose_state or delay > n.w_bound + 0.5
        self._begin(n, kind, self._reset_bound(n) if unfed else None)
        n.sim.agent.send_signal(signal.SIGKILL)
        n.sim.agent.wait()
        self._schedule_restart(n, kind, delay, lose_state)

    def agent_sigkill_state_lost(self) -> None:
        self.agent_sigkill(lose_state=True)

    def _sigterm_restart(
        self, n: Node, kind: str, delay: float, revert: Callable[[], None] | None = None
    ) -> None:
        n.busy = kind
        n.sim.agent.send_signal(signal.SIGTERM)
        asked = boottime()

        def wait_exit() -> None:
            if n.sim.agent.poll() is None:
                if boottime() - asked > 20:
                    self.anomalies.append(f"{n.sim.name}: agent ignored SIGTERM for 20 s")
                    n.sim.agent.kill()
                n.pending.append((boottime() + 0.1, "wait-exit", wait_exit))
                return
            self._schedule_restart(n, kind, delay, revert=revert)

        n.pending.append((boottime() + 0.1, "wait-exit", wait_exit))

    def agent_sigterm(self) -> None:
        n = self._fault_node()
        if n is None:
            return
        self._begin(n, "agent_sigterm")
        # a new agent must re-arm within W (3-10 s), and starting takes about a second
        self._sigterm_restart(n, "agent_sigterm", self.rng.uniform(0.05, 1.0))

    def agent_reconfigure(self) -> None:
        """A rolling update that changes the configuration (state kept): another W, and/or
        another io_timeout in the --lockspace spec. Peers judge the node by the W and N in its
        delta lease, so a raised W may only be used once a renewal has written it (checked by
        ``_check_device``); a lockspace resumed from the saved state keeps its io_timeout (the
        new one is taken at the next join: counted by ``_started``)."""
        n = self._fault_node()
        if n is None:
            return
        x = self.rng.random()
        w = self.rng.choice([v for v in W_CHOICES if v != n.w]) if x < 0.85 else n.w
        io = self.rng.choice([v for v in IO_CHOICES if v != n.io]) if x >= 0.6 else n.io
        old_w, old_io = n.w, n.io
        kind = "agent_reconfigure_" + "_".join(
            p for p, changed in (("w", w != old_w), ("io", io != old_io)) if changed
        )
        self._begin(n, kind)
        self.say(
            f"campaign: {n.sim.name} restarts with W {old_w} -> {w}, io_timeout {old_io} -> {io}"
        )
        self._configure(n, w, io)
        n.w_bound = max(old_w, w)
        n.io_bound = max(n.io_bound, io)

        def revert() -> None:
            self._configure(n, old_w, old_io)

        self._sigterm_restart(n, kind, self.rng.uniform(0.05, 1.0), revert)

    def agent_freeze(self) -> None:
        n = self._fault_node()
        if n is None:
            return
        # shorter than W (harmless), or past the deadline (the watchdog must fire if it holds)
        long = self.rng.random() < 0.6
        seconds = (
            self.rng.uniform(n.w_bound + 2, 8 * n.io_bound + n.w_bound + 2)
            if long
            else self.rng.uniform(0.5, 2.0)
        )
        kind = "agent_freeze_long" if long else "agent_freeze_short"
        self._begin(n, kind, self._reset_bound(n) if long else None)
        n.busy = "freeze"
        agent = n.sim.agent
        agent.send_signal(signal.SIGSTOP)

        def thaw() -> None:
            if agent.poll() is None:
                agent.send_signal(signal.SIGCONT)

        n.pending.append((boottime() + seconds, "thaw", thaw))

    def _storage_fault(self, kind: str, start: Callable[[], None]) -> None:
        """The stall fs node's path to the lockspace stalls or fails for a while: shorter than
        its deadline (renewals catch up), or longer (fence or reset by deadline + W).

        Holds are short, so first a VM or two are started there that outlive any deadline, and
        the fault begins a second later, once they hold their leases: the agent then has
        someone to fence (acquisitions during the fault mostly fail, on the lockspace reads)."""
        n = next(x for x in self.nodes if x.sim.name == self.fs_node)
        if n.busy or not self.alive(n) or sum(1 for x in self.nodes if x.busy) >= 2:
            return
        try:  # joined, and taking new leases (not waiting out an earlier incarnation)
            st = AgentClient(n.sim.run_dir, timeout=2).call("status")
        except LeaseError:
            return
        if st["watchdog"]["new_leases_wait"] or not any(
            ls["name"] == LS and ls["state"] == "live" for ls in st["lockspaces"]
        ):
            return
        n.busy = kind
        vms = self._spawn_vms(n, self.rng.choice([0, 1, 2]), 20.0, 40.0)
        dead = 8 * n.io_bound + n.w_bound
        seconds = self.rng.uniform(1.0, dead + 4)

        def begin() -> None:
            # the last renewal was before now: past its deadline + W nothing of the node writes
            long = seconds > dead + FENCE_SLACK
            f = self._begin(n, kind, boottime() + dead + FENCE_SLACK if long else None)
            f.bound_all = True
            f.vms = tuple(vms)
            start()
            n.pending.append((boottime() + seconds, "resume", self.fs.resume))

        n.pending.append((boottime() + 1.0, "begin", begin))

    def storage_stall(self) -> None:
        self._storage_fault("storage_stall", self.fs.stall)

    def storage_fail(self) -> None:
        """I/O errors (EIO), not a hang: renewals fail at once and are retried every 0.5 s."""
        self._storage_fault("storage_fail", self.fs.fail)

    # -- the verdict

    def _fenced_pids(self) -> set[tuple[str, int]]:
        out = set()
        for n in self.nodes:
            try:
                with open(n.sim.log_file) as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            out |= {(n.sim.name, int(p)) for p in re.findall(r"fencing pid (\d+) ", text)}
        return out

    def intervals(self) -> list[Interval]:
        fenced = self._fenced_pids()
        out = []
        for h in self.holders:
            stamps = read_stamps(h.log)
            if not stamps:
                continue
            first, last = stamps[0], stamps[-1]
            if h.reset_at is not None:
                if last > h.reset_at + RESET_SLACK:
                    self.counts["survived_reset"] += 1
                    self.anomalies.append(
                        f"{h.hid}@{h.node} wrote until {last:.3f}, after its node's reset at "
                        f"{h.reset_at:.3f}: the harness did not kill it"
                    )
                last = min(last, h.reset_at) if first <= h.reset_at else last
            stopped = h.stopped_at()
            ends = [t for t in (stopped, h.died_at, h.reset_at) if t is not None]
            live_seen = h.seen_alive_at if stopped is None else min(h.seen_alive_at, stopped)
            if h.reset_at is not None and (stopped is None or h.reset_at < stopped):
                how = "reset"
            elif stopped is not None:
                how = "stopped"
            elif (h.node, h.proc.pid) in fenced:
                how = "fenced"
            elif h.killed:
                how = "killed"
            elif h.died_at is not None and h.died_at >= self.ended:
                how = "closed"
            else:
                how = "exited"
            out.append(
                Interval(
                    h.resource,
                    h.label,
                    h.node,
                    first,
                    last,
                    min(ends) if ends else None,
                    live_seen,
                    how,
                )
            )
        return out

    def tally(self) -> None:
        for h in self.holders:
            o = h.outcome()
            self.counts[
                {"acquired": "acquisitions", "refused": "refusals"}.get(o, "no_answer")
            ] += 1
        for pair in self.races:
            got = sum(1 for h in pair if h.outcome() == "acquired")
            self.counts[f"races_won_by_{got}"] += 1
        for n in self.nodes:
            try:
                with open(n.sim.log_file) as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            self.counts["fencing"] += len(re.findall(r"event fencing ", text))
            self.counts["fence_actions"] += len(re.findall(r"event fence ", text))
            self.counts["state_not_adopted"] += len(re.findall(r"event state_not_adopted", text))
            self.counts["adopted"] += len(re.findall(r"event adopted ", text))

    def summary(self, violations: list, fv: FaultVerdict) -> str:
        seconds = max(self.ended - self.started, 1e-9)
        c = self.counts
        fc = fv.counts
        kinds = sorted(k for k in self.fault_counts if not k.endswith("_with_holders"))
        faults = (
            ", ".join(
                f"{k}={self.fault_counts[k]} ({self.fault_counts[k + '_with_holders']} "
                f"with holders, {fc['faults_taken_over_' + k]} taken over)"
                for k in kinds
            )
            or "none"
        )
        ends = ", ".join(
            f"{k.removeprefix('takeovers_from_')}={v}"
            for k, v in sorted(fc.items())
            if k.startswith("takeovers_from_")
        )
        gap = f"{min(fv.gaps):.3f}" if fv.gaps else "-"
        cap = " CAP HIT before the acquisitions target" if self.cap_hit else ""
        return (
            f"campaign summary: seed={self.seed} duration={seconds:.0f}s{cap} "
            f"acquisitions={c['acquisitions']} ({c['acquisitions'] / seconds * 60:.1f}/min) "
            f"faults={len(self.fault_log)} [{faults}] "
            f"watchdog_fires={c['watchdog_fires']} (holders reset {c['holders_reset']}) "
            f"takeovers_after_faults: faults_with_holders={fc['faults_with_holders']} "
            f"faults_taken_over={fc['faults_taken_over']} takeovers={fc['takeovers']} "
            f"(old holder ended by: {ends or '-'}; proven after its end "
            f"{fc['takeovers_proven_after_end']}, min gap {gap}s; after its last write only "
            f"{fc['takeovers_after_last_write_only']}) "
            f"deadline_checks={fc['deadline_checks']} "
            f"violations={len(violations)} anomalies={len(self.anomalies)} | "
            f"holders={c['holders_started']} refusals={c['refusals']} "
            f"no_answer={c['no_answer']} races={c['races']} (won by 0/1/2: "
            f"{c['races_won_by_0']}/{c['races_won_by_1']}/{c['races_won_by_2']}) "
            f"holder_sigkill={c['holder_sigkill']} holder_release={c['holder_release']} "
            f"fencing={c['fencing']} fence_actions={c['fence_actions']} adopted={c['adopted']} "
            f"state_not_adopted={c['state_not_adopted']} agent_starts={c['agent_starts']} "
            f"reboots={c['reboots']} (state lost {c['reboots_state_lost']}) "
            f"heal_restarts={c['heal_restarts']} reconfigure_refused={c['reconfigure_refused']} "
            f"io_timeout_kept_from_state={c['io_timeout_kept_from_state']} "
            f"io_timeout_applied_at_join={c['io_timeout_applied_at_join']} "
            f"device_checks={c['device_checks']} "
            f"device_held_to_record_w={c['device_held_to_record_w']} "
            f"device_old_countdown_above_record_w={c['device_old_countdown_above_record_w']}"
        )

    def report(self, violations: list, lines: int = 40) -> str:
        """What a failure shows: seed, each violation, and the nodes' recent events."""
        out = [f"seed {self.seed} (replay: VMLEASE_CAMPAIGN_SEED={self.seed})"]
        nodes: set[str] = set()
        for v in violations[:10]:
            out.append(v.describe())
            nodes |= v.nodes
        out += [f"anomaly: {a}" for a in self.anomalies[:20]]
        for n in self.nodes:
            if n.sim.name not in nodes:
                continue
            out.append(f"--- {n.sim.name} watchdog: {n.sim.watchdog_events()}")
            try:
                with open(n.sim.log_file) as f:
                    events = [x.rstrip() for x in f if "event " in x or "FIRED" in x]
            except FileNotFoundError:
                events = []
            out.append(f"--- {n.sim.name} agent events (last {lines}):")
            out += events[-lines:]
        return "\n".join(out)

    def write_fault_log(self, ivs: list[Interval]) -> None:
        """``faults.log`` in the work directory: each fault, and how its node's holders ended;
        ``intervals.tsv``: every holder that wrote (what the oracle judged)."""
        with open(os.path.join(self.work, "intervals.tsv"), "w") as f:
            f.write("resource\tholder\tnode\tfirst\tlast\tended\tlive_seen\thow\n")
            for iv in sorted(ivs, key=lambda x: (x.resource, x.first)):
                ended = f"{iv.ended:.3f}" if iv.ended is not None else "-"
                f.write(
                    f"{iv.resource.split(':')[1]}\t{iv.holder}\t{iv.node}\t{iv.first:.3f}\t"
                    f"{iv.last:.3f}\t{ended}\t{iv.live_seen:.3f}\t{iv.how}\n"
                )
        by_label = {iv.holder: iv for iv in ivs}
        with open(os.path.join(self.work, "faults.log"), "w") as f:
            for x in self.fault_log:
                end = f"{x.end:.3f}" if x.end is not None else "never"
                bound = f" must_end_by={x.must_end_by:.3f}" if x.must_end_by else ""
                f.write(f"{x.start:.3f}..{end} {x.kind} {x.node}{bound}\n")
                for label in x.holders:
                    iv = by_label.get(label)
                    if iv is None:
                        f.write(f"    {label}: no stamps\n")
                        continue
                    ended = f"{iv.ended:.3f}" if iv.ended is not None else "?"
                    f.write(
                        f"    {label} {iv.resource.split(':')[1]} wrote "
                        f"[{iv.first:.3f}, {iv.last:.3f}] ended {ended} ({iv.how})\n"
                    )
                for h in x.vms:
                    f.write(f"    VM {h.label} spawned {h.spawned:.3f}: {' | '.join(h._lines())}\n")

    def verdict(self) -> tuple[list, str]:
        self.tally()
        ivs = self.intervals()
        self.write_fault_log(ivs)
        fv = judge_faults(self.fault_log, ivs)
        violations = [*overlaps(ivs), *fv.violations]
        return violations, self.summary(violations, fv)


def campaign_seed() -> int:
    env = os.environ.get("VMLEASE_CAMPAIGN_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 31)
