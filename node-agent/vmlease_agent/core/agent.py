"""The node agent's core: lockspaces, process-lifetime leases, fencing, watchdog, saved state.

Everything the local API can ask for is a method here; the socket server (``api``) only parses
and checks credentials. A main-loop thread (``tick``, 5 times a second) checks deadlines, drives
fencing and feeds the watchdog only while every lockspace holding our delta lease is healthy.

The watchdog protects holders, not the node: it is armed before the first write of the first
acquisition (an acquisition in flight counts as a holder from then on, so a lockspace failing
mid-ballot is fenced, not left), fed only while every lockspace is healthy, run with the smallest
W any of our delta leases advertises on disk, and disarmed (magic close) as soon as nothing is
held. So stopping, uninstalling or crash-looping an agent that protects nothing resets nobody.

Node fencing (a lockspace joined with ``fence_node``, a Kubernetes Lockspace's ``nodeFencing``):
the watchdog then protects the node's whole presence in the lockspace, so that "Dead on disk"
proves the node was reset and the operator may mark it out of service. It is armed before the
first write of the join (``before_claim``) and stays armed, fed only while healthy, for as long
as a delta lease of ours may be on disk in such a lockspace: held, failed, or left without a
release that succeeded (``_retired`` keeps those watched). Once such a lease is past its
deadline without a renewal, the node is *condemned*: the device is never fed again by this
process, whatever else happens, and the node is reset at most W after the last keepalive, before
any peer can read the host as Dead (8N + W after the last renewal). Leaving it cleanly (timestamp
0 written) is the only way out without a reset: peers then read the host Free, never Dead.

Restart without harm: the state needed to carry on (lockspaces with our last delta-lease record,
every lease with its holder's pid and start time) is saved in the run directory after each change.
A new agent started with the same run directory adopts it: the delta leases are resumed, not
re-acquired (same host_id, same generation), so the leases on disk stay valid and no holder is
disturbed, as long as it is back before the deadline T + 8N (and before the watchdog fires).
A new agent that cannot adopt (state lost, another node name or run directory) fails closed: its
delta leases' machine identity makes it wait out the earlier agent's deadline + W before it
re-joins, and it does not open the watchdog (a keepalive of the old countdown) until then.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from vmlease_agent.core import fencing, requests, state
from vmlease_agent.core.holders import (
    Client,
    ClientRegistry,
    HeldLease,
    pid_key,
    process_can_run,
    process_start_time,
)
from vmlease_agent.core.lockspace import (
    FAILED,
    JOINING,
    LIVE,
    STOPPED,
    CannotFenceNode,
    JoinedLockspace,
    LockspaceConfig,
    Renewal,
)
from vmlease_agent.core.snapshot import (
    AgentEvent,
    AgentSnapshot,
    HolderSnapshot,
    LeaseSnapshot,
    WatchdogSnapshot,
)
from vmlease_agent.core.watchdog import NullWatchdog, Watchdog, WatchdogError
from vmlease_agent.engine import delta, errors, ondisk, paxos, rindex, timeouts
from vmlease_agent.engine.clock import REAL_CLOCK, Aborted, Clock
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.paxos import Resource

log = logging.getLogger(__name__)

#: The main loop's period (``tick``): how late, at most, a lockspace's deadline is noticed, its
#: fencing escalated and the device fed or shortened. Well below the one second of FEED_MARGIN
#: (kept between our last keepalive and the deadline) and the one second the shortening of the
#: device subtracts for the tick between two calls, with room for a pass slowed by load; five
#: passes a second cost little (bench/agent_footprint.py: 0.45 % of a core with 1,000 leases).
TICK_SECONDS = 0.2

T = TypeVar("T")

#: How a running resource index command shows among a lockspace's users (``_users``).
RINDEX_USER = "a resource index command"
#: How a user outside the agent shows there (sanlock's SET_CONFIG USED: ``set_used_outside``).
OUTSIDE_USER = "a user outside the agent (set_config used)"

#: How a request names a lease holder: a process id, or a placeholder key (``libvirt:<uuid>``)
#: until it is bound. (The holder itself, as readers see it, is ``snapshot.LeaseHolder``.)
HolderRef = int | str


class AgentError(errors.LeaseError):
    """Errors of the agent itself (not of the on-disk protocol)."""


class NotJoined(AgentError):
    code = -errno.ENOSPC  # what sanlock returns for a lockspace not joined
    template = (
        "lockspace {lockspace} is not joined on this node{state}: add it with "
        "`vmlease client add_lockspace -s {lockspace}:HOST_ID:PATH:OFFSET`"
    )

    @classmethod
    def of(cls, name: str, ls: JoinedLockspace | None) -> NotJoined:
        """Lockspace ``name``, with the state it is in if this node has it at all."""
        return cls(lockspace=name, state=f" (it is {ls.state})" if ls else "")


class NoLockspace(AgentError):
    code = -errno.ENOENT  # sanlock's answer to an rindex command in a lockspace it lacks
    template = (
        "lockspace {lockspace} is not joined on this node: the resource index is changed "
        "under its rindex lease, held by our host_id there; add the lockspace first"
    )


class RindexBusy(AgentError):
    code = -errno.EBUSY
    template = (
        "another resource index command is running in lockspace {lockspace} on this node "
        "(one at a time, as with sanlock): try again"
    )


class NoSuchProcess(AgentError):
    code = -errno.ESRCH
    template = "process {pid} does not exist (or exited): leases belong to a running process"


class AlreadyHeld(AgentError):
    code = -errno.EEXIST
    template = "disk lease {lease} is already held on this node by pid {pid} ({name})"


class NotHeld(AgentError):
    code = -errno.ENOENT
    template = "pid {pid} holds no lease {lease} on this node"


class NotHeldHere(AgentError):
    code = -errno.ENOENT
    template = "disk lease {lease} is not held on this node"


class AlreadyInMode(AgentError):
    code = -errno.EALREADY
    template = "pid {pid} already holds disk lease {lease} {mode}"


class SharedLocally(AgentError):
    code = -errno.EAGAIN
    template = (
        "disk lease {lease} is held shared on this node by pid(s) {pids} too; it can become "
        "exclusive once they release it"
    )


class Exists(AgentError):
    code = -errno.EEXIST
    template = "lockspace {lockspace} is already joined (host_id {host_id})"


class Busy(AgentError):
    code = -errno.EBUSY
    template = "{detail}"


class ExitedHolderUnadoptable(AgentError):
    code = -errno.EBUSY
    template = (
        "holder {holder} (pid {pid}, exited) left leases in lockspace(s) {lockspaces}, which "
        "this agent could not resume, while processes that shared its sanlock connection may "
        "still write: the agent will not join them afresh; stop those processes and remove "
        "the agent's state file, or reboot the node"
    )


class HolderSurvivedKill(AgentError):
    code = -errno.EBUSY
    template = (
        "holder {holder} (pid {pid}) still runs {seconds:.0f} s after SIGKILL (stuck in "
        "uninterruptible I/O?); its leases are in lockspace(s) {lockspaces}, which this agent "
        "could not resume, so it will not join them afresh while it may write: fix the storage "
        "path (the watchdog resets the node if it counts) or reboot the node"
    )


class Stopping(AgentError):
    code = -errno.ESHUTDOWN
    template = "the agent is stopping: no new leases (ask the next agent)"


@dataclass
class AgentConfig:
    run_dir: str
    node_name: str
    watchdog_fire_timeout: int = timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT
    kill_grace: int | None = None  # default: timeouts.kill_grace_seconds(W)
    #: this machine's /etc/machine-id ("" if unknown: then no restart can prove a reboot)
    machine_id: str = ""

    @property
    def grace(self) -> int:
        if self.kill_grace is not None:
            return self.kill_grace
        return timeouts.kill_grace_seconds(self.watchdog_fire_timeout)


class Agent:
    def __init__(self, cfg: AgentConfig, watchdog: Watchdog, clock: Clock = REAL_CLOCK) -> None:
        self.cfg = cfg
        self.watchdog = watchdog
        self.clock = clock
        self._lock = threading.RLock()
        self._lockspaces: dict[str, JoinedLockspace] = {}
        self._storages: dict[str, Storage] = {}
        self._registry = ClientRegistry(self._on_client_exit, self._lock)
        self._fencer = fencing.FencingDriver(self._registry, self._lock, cfg.grace, self.event)
        self._events: list[AgentEvent] = []  # recent events, for status and people
        #: How an acquisition or a release is carried out on disk (``paxos.Acquirer``); a
        #: seam for tests that pause a ballot half-way, nothing else replaces it.
        self.acquirer_factory: Callable[..., paxos.Acquirer] = paxos.Acquirer
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self._last_feed = 0.0
        self._last_tick = 0.0  # monotonic time of the last main-loop pass (health endpoint)
        #: leases with an acquisition or a release on disk in flight on this node: label -> who.
        #: One at a time per lease: our own host_id's ballot finds a lease we hold "already
        #: ours", and a release that read the leader before a local ballot committed would free
        #: the new version on disk (see ``_reserve``).
        self._busy: dict[str, str] = {}
        self._busy_done = threading.Condition(self._lock)
        # The device: every decision to arm, feed, shorten, disarm or let go is taken under
        # ``_device`` (then ``lock`` if needed), so an acquisition never writes unprotected.
        self._device = threading.Lock()
        self._armed = False
        self._released = False  # let go of at stop: never touched again by this agent
        self._stopping = False
        #: acquisitions in flight: (client, lockspace name); they count as holders
        self._inflight: list[tuple[Client, str]] = []
        self.identity = ondisk.Identity.of(cfg.machine_id, state.boot_id())
        #: an unadoptable state file of this boot: the watchdog stays closed until then
        self._previous_until = 0.0
        #: node fencing: lockspaces no longer joined whose delta lease may still be on disk
        self._retired: list[JoinedLockspace] = []
        #: node fencing: why this node is being reset ("" while it is not); never cleared
        self._condemned = ""
        #: lockspaces whose leases' request records are being examined (one thread each)
        self._examining: set[str] = set()
        #: lockspaces that something outside the agent works under (``set_used_outside``)
        self._used_outside: set[str] = set()
        #: lockspaces with a resource index command running (one at a time, as sanlock)
        self._rindex_ops: set[str] = set()
        #: who is told of host events for us (``watch_host_events``)
        self._event_watchers: list[Callable[[str, delta.ReceivedEvent], None]] = []

    # ---- events and state -----------------------------------------------------------------

    def event(self, kind: str, **fields) -> None:
        e = AgentEvent(kind, self.clock.now(), time.time(), MappingProxyType(fields))
        log.info("event %s %s", kind, fields)
        with self._lock:
            self._events.append(e)
            del self._events[:-200]

    def save(self) -> None:
        with self._lock:
            state.save(
                self.cfg.run_dir, self.cfg.node_name, self._lockspaces, self._registry.clients
            )

    def _on_lockspace_change(self, ls: JoinedLockspace) -> None:
        if ls.state == LIVE and ls.lease and ls.lease.record:
            self.save()

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Adopt the saved state (restart without harm), arm the watchdog, run the main loop."""
        saved = state.load(self.cfg.run_dir, self.cfg.node_name)
        if saved.problem:
            log.error("%s", saved.problem)
            self.event("state_not_adopted", detail=saved.problem)
            self._previous_until = saved.previous_until
        if not self.cfg.machine_id:
            log.warning(
                "no machine id (/etc/machine-id): after a lost state or a reboot this agent can "
                "never prove its earlier incarnation gone, so it always waits out 8N + W to re-join"
            )
        for item in saved.lockspaces:
            self._add(item.cfg, resume=item.record)
        for item in saved.lockspaces:
            ls = self._lockspaces[item.cfg.name]
            if not ls.wait_joined(timeout=item.cfg.io_timeout * 4):
                log.error("lockspace %s could not be resumed: %s", ls.name, ls.error)
        # A holder is adopted only with its lockspace resumed (same delta lease, same generation):
        # its leases name that generation, and a lockspace joined afresh later has a new one,
        # which frees every lease of the old to the other hosts while the holder still writes.
        resumed = {name for name, ls in self._lockspaces.items() if ls.state == LIVE}
        orphaned: list[HeldLease] = []
        for c in saved.clients:
            orphaned += self._adopt_client(c, resumed)
        # Released only once every holder is adopted: our host's SHARED mark on a lease is one
        # for all its local sharers, and one that exited must not clear it under another that
        # runs, whichever the saved state lists first (``_shared_elsewhere``).
        for held in orphaned:
            self._release_on_disk(held, None)
        if saved.lockspaces or saved.clients:
            self.save()  # an empty start keeps whatever file is there until something changes
        self.tick()  # arm and feed now if every resumed lockspace is healthy: no lease waits
        self._loop = threading.Thread(target=self._run, name="main-loop", daemon=True)
        self._loop.start()

    def _adopt_client(self, saved: state.SavedClient, resumed: set[str]) -> list[HeldLease]:
        """Adopt one saved holder; returns the leases of a holder that exited while the agent
        was down, for the caller to release."""
        lost = sorted({h.res.lockspace for h in saved.leases} - resumed)
        if saved.exited:
            self._adopt_exited(saved, lost)
            return []
        if lost and saved.pid:
            self._kill_unadoptable(saved, lost)
            return []
        try:
            if saved.key == pid_key(saved.pid):
                client = self._registry.get(saved.pid, saved.start_time, saved.owner)
            else:
                client = self._registry.placeholder(saved.key, saved.owner)
                if saved.pid:
                    self._registry.bind(saved.key, saved.pid, saved.start_time)
        except (ProcessLookupError, OSError):
            log.warning("pid %d exited while the agent was down: releasing its leases", saved.pid)
            return list(saved.leases)
        client.kill_command = saved.kill_command
        client.kill_appends_pid = saved.kill_appends_pid
        client.restrict = saved.restrict
        if lost:  # an unbound placeholder: no process runs, nothing of its leases is ours now
            log.error("holder %s not adopted: lockspace(s) %s not resumed", saved.key, lost)
            return []
        for held in saved.leases:
            client.leases[held.label] = held
        self.event("adopted", holder=client.key, leases=sorted(client.leases))
        return []

    def _adopt_exited(self, saved: state.SavedClient, lost: list[str]) -> None:
        """A holder whose pid had exited while its lifeline (a sanlock connection a forked
        child shares) was open: that connection closed with the old agent, but the processes
        holding it may still run and write, and no pid names them. Its leases stay held by a
        placeholder that is never presumed dead (free them with ``vmlease client release
        --key KEY`` once those processes are known to be gone); a lockspace of theirs not
        resumed stops the agent, as a holder that survives SIGKILL does."""
        if lost:
            raise ExitedHolderUnadoptable(
                holder=saved.key, pid=saved.pid, lockspaces=", ".join(lost)
            )
        key = f"exited:{saved.pid}" if saved.pid else saved.key  # adopted before: no pid
        client = self._registry.placeholder(key, saved.owner or key)
        client.exited = True
        client.kill_command = saved.kill_command
        client.kill_appends_pid = saved.kill_appends_pid
        for held in saved.leases:
            client.leases[held.label] = held
        log.error(
            "holder %s had exited with its sanlock connection held by other processes: its "
            "leases %s stay held by %s until released by hand",
            saved.key,
            sorted(client.leases),
            key,
        )
        self.event("adopted", holder=key, leases=sorted(client.leases), reason="pid had exited")

    def stop(self, clean: bool) -> None:
        """Stop the agent.

        ``clean``: release everything and disarm the watchdog (refused while leases are held).
        Otherwise (SIGTERM, an upgrade) keep every lease and the delta leases on disk and the
        saved state. The device is decided about first, before anything waits on storage:
        nothing held, it is disarmed (the node is not reset); leases held, it is let go of while
        every lockspace is healthy and keeps counting (the restart window: a new agent must
        adopt them within W); a lockspace failing, we stay and fence until it is healthy again
        or the watchdog resets the node (``_let_go_of_device``).
        """
        if clean:
            self.check_clean_stop()
        with self._device:
            self._stopping = True
        if not clean:
            self._let_go_of_device()
        self._stop.set()
        if self._loop:
            self._loop.join(timeout=2)
        if not clean:
            self.save()  # while the lockspaces are still live: the next agent resumes them
        for ls in list(self._lockspaces.values()):
            ls.stop(release=clean, wait=clean)
        if clean:
            # After the releases: a node-fencing lockspace whose release failed still shows
            # us on disk, and will read Dead; the node must then be reset (the device keeps
            # counting), never left running.
            with self._device:
                left = self._fenced_on_disk()
                if self._armed and (left or self._condemned):
                    self.watchdog.abandon()
                    self._armed = False
                    log.error(
                        "CLEAN STOP WITH NODE FENCING LEFT ON DISK (%s): the watchdog keeps "
                        "counting and resets this node",
                        self._condemned or ", ".join(ls.name for ls in left),
                    )
                else:
                    self._disarm("clean stop")
                self._released = True
            state.clear(self.cfg.run_dir)
        self._registry.close()

    def _kill_unadoptable(self, saved: state.SavedClient, lost: list[str]) -> None:
        """SIGKILL a holder whose lockspace was not resumed, and wait until it can write no more
        (gone or a zombie), before anything joins that lockspace afresh: its leases will be
        free to the other hosts from the moment a new generation of our delta lease is on disk.
        The pid is checked against the saved start time, so a reused pid is never killed."""
        if process_start_time(saved.pid) != saved.start_time:
            return  # exited while we were down (or the pid was reused: not ours to kill)
        log.error(
            "holder %s (pid %d) holds leases in lockspace(s) %s that this agent could not "
            "resume: killing it before the lockspace is joined again",
            saved.key,
            saved.pid,
            lost,
        )
        self.event("holder_killed", holder=saved.key, reason=f"lockspace(s) {lost} not resumed")
        with contextlib.suppress(ProcessLookupError):
            os.kill(saved.pid, signal.SIGKILL)
        # A SIGKILLed process ends at once unless stuck in uninterruptible I/O. Wait W + 1 s: by
        # then a device the previous agent let go of with this W has reset the node. The bound
        # only decides when to say so: the agent never goes on while the holder can still run.
        seconds = self.cfg.watchdog_fire_timeout + 1
        deadline = time.monotonic() + seconds
        while process_can_run(saved.pid):
            if time.monotonic() > deadline:
                raise HolderSurvivedKill(
                    holder=saved.key, pid=saved.pid, seconds=seconds, lockspaces=", ".join(lost)
                )
            time.sleep(0.01)

    def halt(self) -> None:
        """End this agent's threads as a killed process would: nothing released, nothing saved,
        nothing decided about the device (tests simulate a crash with it)."""
        self._stop.set()
        if self._loop:
            self._loop.join(timeout=2)
        for ls in list(self._lockspaces.values()):
            ls.stop(release=False, wait=False)
        self._registry.close()

    def _let_go_of_device(self) -> None:
        """SIGTERM: decide about the device now, never after waiting on storage.

        Closing a Linux watchdog without the magic character counts as one last keepalive, and
        so does exiting (the kernel closes the fd): after a deadline that would push the reset
        past the moment other hosts take our leases. So with leases held we let go only while
        every lockspace is healthy (feeding would still be allowed), and otherwise stay, the
        main loop fencing, until that is true again or the node is reset.
        """
        warned = False
        while True:
            with self._device:
                now = self.clock.now()
                if not self._armed or not self._protecting():
                    self._disarm("stopping with nothing held")
                    self._released = True
                    return
                if self._healthy(now):
                    self.watchdog.abandon()
                    self._armed, self._released = False, True
                    log.warning(
                        "STOPPING WITH LEASES HELD (%s): the watchdog keeps counting; this node "
                        "is reset in %d s unless a new agent adopts them (same run directory, "
                        "node name and boot)",
                        ", ".join(self._holder_keys()),
                        self.device_timeout(),
                    )
                    return
                if self._condemned and now > self._last_feed + self.device_timeout() + 1:
                    # The device should have reset the node a second ago. It did not (a
                    # broken device, or a fake one): staying helps nobody, and the other
                    # hosts read us Dead on the disk's evidence, not on this process.
                    self.watchdog.abandon()
                    self._armed, self._released = False, True
                    log.error(
                        "the watchdog did not reset this node %d s after its last keepalive "
                        "(condemned: %s): check the device",
                        self.device_timeout(),
                        self._condemned,
                    )
                    return
            if not warned:
                log.warning("stop requested while a lockspace is failing: fencing first")
                warned = True
            time.sleep(TICK_SECONDS)

    def check_clean_stop(self) -> None:
        """A clean stop releases everything: refuse while processes hold leases."""
        held = self._holder_keys()
        if held:
            raise Busy(
                detail=f"{', '.join(held)} hold leases: release them (or stop them) first, "
                "or stop the agent with SIGTERM to keep them across a restart"
            )

    # ---- the watchdog device ----------------------------------------------------------------

    def _holder_keys(self) -> list[str]:
        with self._lock:
            keys = {c.key for c in self._registry.clients.values() if c.leases}
            keys |= {c.key for c in self._registry.exiting.values() if c.leases}
            keys |= {c.key for c, _ in self._inflight}
        return sorted(keys)

    def _holding(self) -> bool:
        """Could anything of ours write under a lease: a holder, or an acquisition in flight?"""
        return bool(self._holder_keys())

    def _tracked(self) -> list[JoinedLockspace]:
        """Every lockspace the device answers for: joined ones and retired node-fencing ones."""
        return [*list(self._lockspaces.values()), *list(self._retired)]

    def _fenced_on_disk(self) -> list[JoinedLockspace]:
        return [ls for ls in self._tracked() if ls.cfg.fence_node and ls.delta_on_disk]

    def _protecting(self) -> bool:
        """Must the device stay armed: a holder, or node fencing (a join under way, a delta
        lease on disk, or the node condemned)?"""
        if self._holding() or self._condemned:
            return True
        return any(
            ls.cfg.fence_node and (ls.delta_on_disk or ls.state == JOINING)
            for ls in self._tracked()
        )

    def _healthy(self, now: float) -> bool:
        """May the device be fed now?"""
        return not self._condemned and all(ls.healthy(now) for ls in self._tracked())

    def _retire(self, ls: JoinedLockspace) -> None:
        """Under ``_lock``, before ``ls`` leaves ``_lockspaces``: a node-fencing lockspace stays
        watched until its delta lease is off disk (``_check_fencing``); an outside user's mark
        goes with it (sanlock's go with its lockspace struct)."""
        self._used_outside.discard(ls.cfg.name)
        if ls.cfg.fence_node:
            self._retired.append(ls)

    def fence_self(self, why: str) -> None:
        """Node fencing on request (a NodeHealthCheck remediation with selfFence): condemn the
        node as a failed fence lockspace would. The caller checked that a real device is armed
        for a fence lockspace, so the reset, and then the storage's proof of it, follow."""
        self._condemn(why)

    def _condemn(self, why: str) -> None:
        """Node fencing: never feed the device again; the node is reset at most W after the
        last keepalive."""
        if self._condemned:
            return
        self._condemned = why
        log.error(
            "NODE FENCING: %s; this node is reset by its watchdog within %d s (no keepalive "
            "from now on)",
            why,
            self.device_timeout(),
        )
        self.event("node_condemned", reason=why, reset_within=self.device_timeout())

    def _check_fencing(self, now: float) -> None:
        """Main loop: condemn the node if a node-fencing delta lease of ours is past its
        deadline without a renewal, and stop watching retired ones that are off disk (released)
        or superseded (the same host_id joined again and renewing)."""
        for ls in self._tracked():
            if not (ls.cfg.fence_node and ls.delta_on_disk):
                continue
            if ls.state == FAILED or (ls.state != LIVE and not ls.healthy(now)):
                self._condemn(
                    f"lockspace {ls.name}: host_id {ls.cfg.host_id} {ls.error or 'not renewed'}"
                )
        with self._lock:
            keep = []
            for ls in self._retired:
                now_joined = self._lockspaces.get(ls.name)
                superseded = (
                    now_joined is not None
                    and now_joined.cfg.host_id == ls.cfg.host_id
                    and now_joined.state == LIVE
                )
                if ls.delta_on_disk and not superseded:
                    keep.append(ls)
            self._retired = keep

    def _arm_for_join(self, ls: JoinedLockspace) -> None:
        """``before_claim`` of a node-fencing lockspace: the device is armed before our host_id
        is written, or nothing is written."""
        with self._device:
            now = self.clock.now()
            if self._stopping:
                raise CannotFenceNode(lockspace=ls.name, why="the agent is stopping")
            if self._condemned:
                raise CannotFenceNode(
                    lockspace=ls.name, why=f"the node is condemned: {self._condemned}"
                )
            reason = self._quarantined(now)
            if reason and not self._armed:
                raise CannotFenceNode(lockspace=ls.name, why=reason)
            if not all(x.healthy(now) for x in self._tracked() if x is not ls):
                raise CannotFenceNode(lockspace=ls.name, why="another lockspace is failing")
            try:
                self._arm_and_feed(now)
            except WatchdogError as e:
                raise CannotFenceNode(lockspace=ls.name, why=str(e)) from None

    def device_timeout(self) -> int:
        """The W the device may run with: the configured one, but never more than any of our
        delta leases on disk advertises. After a restart with a larger W, peers still judge us
        by the old record's W until our first renewal has written the new one."""
        w = self.watchdog.fire_timeout
        for ls in list(self._lockspaces.values()):
            advertised = ls.advertised_fire_timeout
            if advertised is not None:
                w = min(w, advertised)
        return w

    def _quarantined(self, now: float) -> str:
        """A lockspace whose join waits out an earlier holder of our host_id (maybe an earlier
        agent of this boot whose holders still run): opening the device would feed its
        countdown, so it stays closed until then. Returns the reason, or ""."""
        if self._previous_until > now:
            return (
                f"the saved state of an earlier agent of this boot could not be adopted; its "
                f"holders may run until {self._previous_until - now:.0f}s from now"
            )
        for ls in list(self._lockspaces.values()):
            if ls.previous_until > now:
                return (
                    f"lockspace {ls.name}: host_id {ls.cfg.host_id} was held until recently, "
                    f"perhaps by an earlier agent of this node; waiting "
                    f"{ls.previous_until - now:.0f}s more before the watchdog may be opened"
                )
        return ""

    def _arm_and_feed(self, now: float) -> None:
        """Under ``_device``, with every lockspace healthy and something to protect."""
        if not self._armed:
            self.watchdog.arm()
            self._armed = True
            self.event("watchdog_armed", fire_timeout=self.device_timeout())
        self.watchdog.keepalive(self.device_timeout())
        self._last_feed = now

    def _disarm(self, why: str) -> None:
        """Under ``_device``: nothing is held, so nothing needs the node reset."""
        if self._armed:
            self.watchdog.disarm()
            self._armed = False
            self.event("watchdog_disarmed", reason=why)

    def _begin_acquisition(self, client: Client, ls: JoinedLockspace) -> None:
        """Before the first write of an acquisition: count it as a holder, and make sure the
        device is armed (refused when it cannot be: the node could not be fenced)."""
        with self._device:
            if self._stopping:
                raise Stopping()
            now = self.clock.now()
            if self._condemned:
                raise Busy(detail=f"no new leases: this node is being reset ({self._condemned})")
            sick = [x.name for x in list(self._lockspaces.values()) if not x.healthy(now)]
            if sick:
                raise Busy(
                    detail=f"lockspace {', '.join(sick)} is failing (its holders are being "
                    "fenced): no new leases on this node until it is healthy again"
                )
            reason = self._quarantined(now)
            if reason:
                raise Busy(detail=f"no new leases yet: {reason}")
            try:
                self._arm_and_feed(now)
            except WatchdogError as e:
                raise AgentError(
                    detail=f"the watchdog cannot be armed, so this node could not be fenced: {e}"
                ) from None
            with self._lock:
                self._inflight.append((client, ls.name))

    def _end_acquisition(self, client: Client, ls: JoinedLockspace) -> None:
        with self._lock:
            self._inflight.remove((client, ls.name))

    # ---- lockspaces -------------------------------------------------------------------------

    def _add(self, cfg: LockspaceConfig, resume=None) -> JoinedLockspace:
        ls = JoinedLockspace(
            cfg,
            self.cfg.node_name,
            self.cfg.watchdog_fire_timeout,
            self.clock,
            on_change=self._on_lockspace_change,
            identity=self.identity,
            before_claim=self._arm_for_join if cfg.fence_node else None,
            on_host_event=self._on_host_event,
        )
        with self._lock:
            old = self._lockspaces.get(cfg.name)
            if old is not None:
                self._retire(old)
            self._lockspaces[cfg.name] = ls
        ls.start(resume)
        return ls

    def add_lockspace(self, cfg: LockspaceConfig, wait: bool = True) -> dict:
        with self._lock:
            cur = self._lockspaces.get(cfg.name)
            if cur is not None and cur.state != STOPPED:
                raise Exists(lockspace=cfg.name, host_id=cur.cfg.host_id)
        ls = self._add(cfg)
        self._fencer.rejoining(cfg.name)
        self.event("joining", lockspace=cfg.name, host_id=cfg.host_id)
        if wait and not ls.wait_joined():
            with self._lock:
                self._retire(ls)
                self._lockspaces.pop(cfg.name, None)
            raise AgentError(
                detail=f"joining lockspace {cfg.name} failed: {ls.error}", cause=ls.error_code
            )
        if ls.state == LIVE:
            self.event("joined", lockspace=cfg.name, host_id=cfg.host_id, generation=ls.generation)
        return ls.snapshot().to_wire()

    def _users(self, name: str) -> list[str]:
        """Under ``_lock``: who could write under a lease of lockspace ``name``: holders
        (exiting ones too, and those whose release is still being written: ``_let_go``),
        acquisitions in flight, which may still win their ballot, and a
        resource index command, which writes under the index's lease with our host_id, and a
        user outside the agent that relies on our host_id lease (``set_used_outside``)."""
        keys = {
            c.key
            for c in [*self._registry.clients.values(), *self._registry.exiting.values()]
            if any(h.res.lockspace == name for h in c.leases.values())
        }
        keys |= {c.key for c, ls_name in self._inflight if ls_name == name}
        if name in self._rindex_ops:
            keys.add(RINDEX_USER)
        if name in self._used_outside:
            keys.add(OUTSIDE_USER)
        return sorted(keys)

    def set_used_outside(self, name: str, used: bool) -> None:
        """sanlock's SET_CONFIG USED and UNUSED: something outside the agent (a cluster lock
        manager's locks) works under joined lockspace ``name`` and relies on our host_id lease,
        so neither a removal nor a stop may release it meanwhile (``_users``). Forgotten when
        the lockspace is left, and at a restart (it is not saved)."""
        with self._lock:
            if not used:
                self._used_outside.discard(name)
            elif name in self._lockspaces:
                self._used_outside.add(name)
            else:
                raise NotJoined.of(name, None)

    def used_outside(self, name: str) -> bool:
        with self._lock:
            return name in self._used_outside

    def rem_lockspace(self, name: str) -> None:
        with self._lock:
            ls = self._lockspaces.get(name)
            if ls is None:
                raise NotJoined.of(name, None)
            users = self._users(name)
            if users:
                raise Busy(
                    detail=f"lockspace {name} is in use by {', '.join(users)}: release their "
                    "leases first (an index command ends by itself; an outside user clears its "
                    f"mark with `sanlock client set_config -s {name} -u 0`)"
                )
            self._retire(ls)
            self._lockspaces.pop(name)
        ls.stop(release=True)
        self.event("left", lockspace=name)
        self.save()

    def leave_idle(self) -> dict[str, int]:
        """The first step of a stop that keeps leases (SIGTERM): no new leases from now on, and
        every lockspace nothing of ours holds leases in is left, its host_id released on disk
        as ``rem_lockspace`` does. Peers then see the host Free at once instead of Failing and,
        8N + W later, Dead (which reads as a node reset to the operator and to people) when the
        agent is uninstalled or its node drained; a restarted agent joins it again as a free
        host_id (2N, no wait for an earlier holder). Lockspaces with holders stay joined, for
        the next agent to adopt. Returns the lockspaces left: name -> host_id."""
        with self._device:
            self._stopping = True  # before the users are counted: no acquisition begins after
        left: dict[str, JoinedLockspace] = {}
        with self._lock:
            for name, ls in list(self._lockspaces.items()):
                if ls.state == LIVE and not self._users(name):
                    self._retire(ls)
                    left[name] = self._lockspaces.pop(name)
        for name, ls in left.items():
            ls.stop(release=True)
            self.event("left", lockspace=name, reason="agent stopping; no leases held in it")
        if left:
            self.save()
        return {name: ls.cfg.host_id for name, ls in left.items()}

    def joined_lockspace(self, name: str) -> JoinedLockspace | None:
        """The lockspace object itself, for the core and for tests that inject faults into it;
        readers take ``snapshot()``."""
        with self._lock:
            return self._lockspaces.get(name)

    def _joined(self, name: str) -> JoinedLockspace:
        ls = self._lockspaces.get(name)
        if ls is None or ls.state != LIVE:
            raise NotJoined.of(name, ls)
        return ls

    # ---- resource leases --------------------------------------------------------------------

    def _storage(self, path: str) -> Storage:
        with self._lock:
            st = self._storages.get(path)
            if st is None:
                st = self._storages[path] = Storage(path)
            return st

    def _acquirer(self, ls: JoinedLockspace, res: Resource) -> paxos.Acquirer:
        return self.acquirer_factory(
            self._storage(res.path),
            res,
            ls.cfg.host_id,
            ls.generation,
            ls.cfg.io_timeout,
            ls.owner_view(),
            self.clock,
            abort=ls.lost,  # a wait under a lockspace we lost must not end in a new lease
        )

    def _client(self, holder: HolderRef, owner: str = "", create: bool = False) -> Client:
        """The client a request names: a pid, or a placeholder key such as ``libvirt:<uuid>``."""
        if isinstance(holder, str):
            if create:
                return self._registry.placeholder(holder, owner)
            c = self._registry.clients.get(holder)
            if c is None:
                raise NotHeld(pid=holder, lease="(any)")
            return c
        try:
            c = self._registry.get(holder, owner=owner) if create else self._registry.by_pid(holder)
        except (ProcessLookupError, OSError):
            raise NoSuchProcess(pid=holder) from None
        if c is None:
            if process_start_time(holder) is None:
                raise NoSuchProcess(pid=holder)
            raise NotHeld(pid=holder, lease="(any)")
        return c

    def acquire(
        self,
        holder: HolderRef,
        resources: list[tuple[Resource, bool]],
        owner: str = "",
        wait: bool = True,
        disks: Mapping[str, str] | None = None,
        lvers: Mapping[str, int] | None = None,
        lvb: bool = False,
    ) -> list[dict]:
        """Acquire every resource for ``holder``, all or nothing (taken ones released on error).
        ``disks``: lease label -> the disk an automatic disk lease protects (shown, not used).
        ``lvers``: label -> the lease version the lease must be at on disk (sanlock's
        SANLK_RES_LVER; otherwise -240 and nothing is written). ``lvb``: read each lease's lock
        value block (sanlock's SANLK_ACQUIRE_LVB; a second local shared holder shares the
        first one's copy, as with sanlock)."""
        client = self._client(holder, owner, create=True)
        taken: list[HeldLease] = []
        try:
            for res, shared in resources:
                lver = (lvers or {}).get(res.label)
                try:
                    taken.append(self._acquire_one(client, res, shared, wait, lver, lvb))
                except errors.LeaseError as e:
                    # libvirt shows only sanlock's code (-243): the reason, with the holder
                    # the refusal names, is kept here for `vmlease client events` and the log
                    self.event(
                        "refused",
                        lease=res.label,
                        holder=client.key,
                        owner=client.owner,
                        code=e.code,
                        reason=str(e),
                    )
                    raise
                taken[-1].disk_path = (disks or {}).get(res.label)
        except BaseException:
            for held in reversed(taken):
                with self._lock:
                    self._reserve(held.label, "being released (its acquisition failed)", wait=True)
                self._let_go(client, held)
            self._forget_if_idle(client)
            raise
        self.save()
        for held in taken:
            self.event(
                "acquired",
                lease=held.label,
                holder=client.key,
                owner=client.owner,
                lver=held.token.lver,
                shared=held.shared,
            )
        return [self._lease_snapshot(client, h).to_wire() for h in taken]

    def _acquire_one(
        self,
        client: Client,
        res: Resource,
        shared: bool,
        wait: bool,
        lver: int | None = None,
        lvb: bool = False,
    ) -> HeldLease:
        ls = self._joined(res.lockspace)
        with self._lock:
            self._reserve(res.label, f"being acquired by {client.pid or client.key}", wait)
            try:
                for other in [*self._registry.clients.values(), *self._registry.exiting.values()]:
                    held = other.leases.get(res.label)
                    if held is not None and not (shared and held.shared and not other.dead):
                        raise AlreadyHeld(
                            lease=res.label,
                            pid=other.pid or other.key,
                            name=other.owner or other.name,
                        )
                    if held is not None:  # shared: one on-disk SH mark per host
                        h = HeldLease(res, held.token, True)
                        client.leases[res.label] = h
                        self._unreserve(res.label)
                        return h
            except BaseException:
                self._unreserve(res.label)
                raise
        try:
            self._begin_acquisition(client, ls)
        except BaseException:
            self._unreserve(res.label)
            raise
        try:
            try:
                token = self._acquirer(ls, res).acquire(
                    shared=shared, nowait=not wait, acquire_lver=lver, lvb=lvb
                )
            except Aborted:
                raise NotJoined.of(ls.name, ls) from None
            h = HeldLease(res, token, shared)
            with self._lock:
                if self._lockspaces.get(ls.name) is not ls or not ls.healthy() or client.dead:
                    # The lockspace failed (or the holder died) during the ballot: the lease
                    # may be ours on disk, but our host_id lease is no longer valid, so it is
                    # neither used nor released (no I/O); others take it after 8N + W.
                    log.warning("lease %s won after its lockspace failed: dropped", res.label)
                    raise NotJoined.of(ls.name, ls)
                client.leases[res.label] = h
            return h
        finally:
            self._end_acquisition(client, ls)
            self._unreserve(res.label)

    def _reserve(self, label: str, why: str, wait: bool) -> None:
        """Under ``lock``: make this the one acquisition or release of ``label`` on this node.

        Another one in flight: an acquisition (another local holder) is refused at once, as
        sanlock refuses a lease this host holds; a release is waited for when ``wait`` (it is a
        few I/Os, each bounded by the io_timeout, so the wait is bounded too)."""
        while label in self._busy:
            other = self._busy[label]
            if not wait or not other.startswith("being released"):
                raise Busy(detail=f"disk lease {label} is {other} on this node")
            self._busy_done.wait()
        self._busy[label] = why

    def _unreserve(self, label: str) -> None:
        with self._lock:
            self._busy.pop(label, None)
            self._busy_done.notify_all()

    def _let_go(self, client: Client, held: HeldLease) -> None:
        """Release ``client``'s lease ``held`` (reserved by the caller) on disk, then forget it.

        It stays among ``client``'s leases until then, so it counts among its lockspace's users
        (``_users``): neither a removal nor a stop may release our host_id under the release's
        writes. A peer would take the lease at once from an owner whose host_id is free, and our
        leader write, read and checked before its ballot and landing after it, would free the
        peer's lease for a third host."""
        try:
            self._release_on_disk(held, client)
        finally:
            with self._lock:
                client.leases.pop(held.label, None)
                self._unreserve(held.label)

    def _release_on_disk(self, held: HeldLease, client: Client | None) -> None:
        ls = self._lockspaces.get(held.res.lockspace)
        if ls is None or ls.state != LIVE:
            # our host_id lease is not valid: writing now could clobber a new owner's lease
            log.warning(
                "lease %s dropped without disk I/O (lockspace %s)",
                held.label,
                ls.state if ls else "left",
            )
            return
        if held.shared and self._shared_elsewhere(held, client):
            return
        try:
            self._acquirer(ls, held.res).release(held.token)
        except errors.LeaseError as e:
            log.error("release of %s failed: %s", held.label, e)

    def _shared_elsewhere(self, held: HeldLease, client: Client | None) -> bool:
        """Does a live local holder other than ``client`` still hold this (shared) lease?"""
        with self._lock:
            return any(
                held.label in c.leases for c in self._registry.clients.values() if c is not client
            )

    def release(self, holder: HolderRef, labels: list[str] | None) -> list[str]:
        """Release the named leases of ``holder`` (all of them if ``labels`` is None)."""
        with self._lock:
            client = self._client(holder)
            pid = client.pid or client.key
            names = list(client.leases) if labels is None else labels
            reserved: list[str] = []
            try:
                for n in names:  # first, so no local acquisition sees the lease gone too early
                    self._reserve(n, f"being released by pid {pid}", wait=True)
                    reserved.append(n)
                missing = [n for n in names if n not in client.leases]
                if missing:
                    raise NotHeld(pid=pid, lease=", ".join(missing))
            except BaseException:
                for n in reserved:
                    self._unreserve(n)
                raise
            gone = [client.leases[n] for n in names]
        for held in gone:
            self._let_go(client, held)
            self.event("released", lease=held.label, holder=client.key)
        self._forget_if_idle(client)
        self.save()
        return [h.label for h in gone]

    def _forget_if_idle(self, client: Client) -> None:
        with self._lock:
            if not client.leases and not client.kill_command and not client.restrict:
                self._registry.forget(client.key)

    def _on_client_exit(self, client: Client) -> None:
        """The holder exited: release its leases at once (on disk if our lockspace is valid).

        Until the release is on disk the leases still show in ``status``: nobody should be told
        a lease is free before it is.
        """
        reserved: list[str] = []
        try:
            with self._lock:
                for label in list(client.leases):
                    self._reserve(label, f"being released (pid {client.pid} exited)", wait=True)
                    reserved.append(label)
            for held in list(client.leases.values()):
                self._release_on_disk(held, client)
                self.event("released", lease=held.label, holder=client.key, reason="holder exited")
        finally:
            with self._lock:
                client.leases.clear()
                for label in reserved:
                    self._unreserve(label)
        self.save()

    def set_lifeline(self, pid: int, check: Callable[[], bool]) -> None:
        """Keep ``pid``'s leases past its exit while ``check()`` says so (sanlock's registered
        connection, which forked children may hold: ``core.holders``)."""
        self._client(pid, create=True).lifeline = check

    # ---- convert and the lock value block (sanlock's CONVERT, SET_LVB, GET_LVB) -------------

    def convert(self, holder: HolderRef, label: str, shared: bool, wait: bool = True) -> None:
        """Turn ``holder``'s lease ``label`` shared (``shared``) or exclusive, as sanlock's
        convert: the lease stays held throughout (``paxos.Acquirer.to_shared/to_exclusive``).
        Exclusive is refused while another local process holds it shared too (sanlock lets
        that pass: its disk check sees one SHARED mark per host, and the other process would
        share a lease someone holds exclusively)."""
        with self._lock:
            client = self._client(holder)
            pid = client.pid or client.key
            held = client.leases.get(label)
            if held is None:
                raise NotHeld(pid=pid, lease=label)
            if held.shared == shared:
                raise AlreadyInMode(pid=pid, lease=label, mode="shared" if shared else "exclusive")
            sharers = [c.pid or c.key for c in self._sharers(label) if c is not client]
            if sharers:
                raise SharedLocally(lease=label, pids=", ".join(map(str, sharers)))
            self._reserve(label, f"being converted by pid {pid}", wait=False)
        try:
            if shared:
                self._to_shared(held)
            else:
                self._to_exclusive(client, held, wait)
        finally:
            self._unreserve(label)
        self.save()
        self.event("converted", lease=label, holder=client.key, shared=shared)

    def _sharers(self, label: str) -> list[Client]:
        """Local processes holding ``label`` (exiting ones too: theirs is not released yet)."""
        every = [*self._registry.clients.values(), *self._registry.exiting.values()]
        return [c for c in every if label in c.leases]

    def _to_shared(self, held: HeldLease) -> None:
        ls = self._joined(held.res.lockspace)  # a lockspace not live: our writes could clobber
        try:
            self._acquirer(ls, held.res).to_shared(held.token)
        except errors.LvbNotWritten as e:
            log.error("%s", e)  # converted all the same, as sanlock
        held.shared = True

    def _to_exclusive(self, client: Client, held: HeldLease, wait: bool) -> None:
        """A ballot, so it counts as an acquisition (``_begin_acquisition``). The lease won is
        recorded even if the lockspace failed meanwhile: the holder is fenced then, and a
        release without I/O leaves it to others after 8N + W, as for any held lease."""
        ls = self._joined(held.res.lockspace)
        self._begin_acquisition(client, ls)
        try:
            try:
                token = self._acquirer(ls, held.res).to_exclusive(held.token, nowait=not wait)
            except Aborted:
                raise NotJoined.of(ls.name, ls) from None
            with self._lock:
                held.token, held.shared = token, False
                if self._lockspaces.get(ls.name) is not ls or not ls.healthy():
                    raise NotJoined.of(ls.name, ls)
        finally:
            self._end_acquisition(client, ls)

    def _held_here(self, label: str) -> HeldLease:
        with self._lock:
            for c in self._sharers(label):
                return c.leases[label]
        raise NotHeldHere(lease=label)

    def set_lvb(self, label: str, data: bytes) -> None:
        """Change the in-memory LVB of a lease held on this node, by whoever (sanlock's
        set_lvb names no pid); written by its exclusive holder at release or convert, and
        saved with the lease so that an agent restart in between loses none of it."""
        held = self._held_here(label)
        with self._lock:
            held.token.set_lvb(data)
        self.save()

    def get_lvb(self, label: str, size: int = 0) -> bytes:
        """The in-memory LVB of a lease held on this node (``size`` 0: one sector)."""
        held = self._held_here(label)
        with self._lock:
            return held.token.get_lvb(size)

    def set_kill_command(
        self, holder: HolderRef, command: list[str], append_pid: bool = True
    ) -> None:
        """Run ``command`` (plus the holder's pid, if ``append_pid``) instead of SIGTERM when
        fencing this holder."""
        client = self._client(holder, create=True)
        client.kill_command = command or None
        client.kill_appends_pid = append_pid
        self.save()

    def set_restrictions(self, holder: HolderRef, restrict: int) -> None:
        """The signals ``holder`` must not get (``fencing.NO_SIGKILL``, ``NO_SIGTERM``):
        fencing, requests and removals send the other one instead, as sanlock does for a
        client that called ``sanlock_restrict``."""
        client = self._client(holder, create=True)
        client.restrict = restrict & (fencing.NO_SIGKILL | fencing.NO_SIGTERM)
        self.save()

    def kill_holder(self, key: str, sig: signal.Signals) -> signal.Signals | None:
        """Send ``sig`` to holder ``key``'s process, or what its restrictions make of it (both
        swaps, as sanlock's kill_pids); the signal sent, or None when there is no process to
        signal: a placeholder not bound yet, a holder being released, or an exited pid whose
        lifeline lives on (the pid may be reused: ``core.holders``)."""
        with self._lock:
            client = self._registry.clients.get(key)
            if client is None or client.pid == 0 or client.exited:
                return None
            sig = fencing.restricted_signal(sig, client.restrict)
            fencing.send(client, sig)
            return sig

    def bind(self, key: str, pid: int) -> None:
        """Tie the leases a placeholder ``key`` holds to process ``pid`` (libvirt ``started``)."""
        try:
            self._registry.bind(key, pid)
        except KeyError:
            raise NotHeld(pid=key, lease="(any)") from None
        except (ProcessLookupError, OSError):
            raise NoSuchProcess(pid=pid) from None
        except ValueError as e:
            raise Busy(detail=str(e)) from None
        self.event("bound", holder=key, pid=pid)
        self.save()

    def _lease_snapshot(self, client: Client, h: HeldLease) -> LeaseSnapshot:
        return LeaseSnapshot(
            lease=h.label,
            lockspace=h.res.lockspace,
            resource=h.res.name,
            path=h.res.path,
            offset=h.res.offset,
            lver=h.token.lver,
            shared=h.shared,
            host_id=h.token.host_id,
            generation=h.token.generation,
            holder=client.identity(),
            since=h.since,
            request=h.request,
            disk_path=h.disk_path,
        )

    # ---- requests (``core.requests``) --------------------------------------------------------

    def request(self, res: Resource, force_mode: int, lver: int | None = None) -> dict:
        """Ask the holder of ``res`` to give it up (sanlock ``request``): write the request
        record, then notify its owner through our renewals' bitmap, or examine at once if the
        owner is this node. ``lver`` None: the next version. Force mode 0 with no lver clears."""
        requests.check_mode(force_mode)
        ls = self._joined(res.lockspace)
        leader = paxos.write_request(
            self._storage(res.path), res, lver or 0, force_mode, ls.cfg.io_timeout
        )
        wanted = lver or (leader.lver + 1 if force_mode else 0)
        owner = leader.owner_id if leader.timestamp else 0
        if force_mode and owner == ls.cfg.host_id:
            self._start_examine(ls)
        elif force_mode and owner:
            ls.notify(owner)
        self.event("request", lease=res.label, owner_id=owner, lver=wanted,
                   force_mode=requests.MODES[force_mode])  # fmt: skip
        return {
            "lease": res.label,
            "owner_id": owner,
            "current_lver": leader.lver,
            "requested_lver": wanted,
            "force_mode": force_mode,
        }

    def _start_examine(self, ls: JoinedLockspace) -> None:
        """Examine ``ls``'s leases in a thread of its own (reads may stall: never in the main
        loop); one at a time per lockspace, the flag kept for the next tick if one runs."""
        with self._lock:
            if ls.name in self._examining:
                ls.request_examine()
                return
            self._examining.add(ls.name)
        threading.Thread(target=self._examine, args=(ls,), daemon=True,
                         name=f"examine-{ls.name}").start()  # fmt: skip

    def _examine(self, ls: JoinedLockspace) -> None:
        """Read the request record of every lease held in ``ls``; stop the holder of each one
        with a pending request (``requests.action``), once per request."""
        try:
            with self._lock:
                held = [
                    (c, h)
                    for c in self._registry.clients.values()
                    for h in c.leases.values()
                    if h.res.lockspace == ls.name
                ]
            for client, h in held:
                try:
                    record = paxos.read_request(
                        self._storage(h.res.path), h.res, h.token.sizes, ls.cfg.io_timeout
                    )
                except errors.LeaseError as e:
                    log.warning("lease %s: its request record cannot be read: %s", h.label, e)
                    continue
                if not requests.pending(record, h.token.lver):
                    h.request = None
                    continue
                asked = (record.lver, record.force_mode)
                if h.request == asked:
                    continue  # this request was acted on already
                h.request = asked
                act = requests.action(record.force_mode, bool(client.kill_command))
                self.event("requested", lease=h.label, holder=client.key, lver=record.lver,
                           force_mode=requests.MODES.get(record.force_mode, str(record.force_mode)),
                           action=act.kind)  # fmt: skip
                fencing.apply(act, client, self.clock.now(), {})
        finally:
            with self._lock:
                self._examining.discard(ls.name)

    def examine(self, name: str) -> bool:
        """Read the request records of our leases in lockspace ``name`` now, as if a peer had
        set our bit (sanlock's ``examine``: for a requester that cannot notify us, e.g. one on
        this node or one not in the lockspace); False if it is not joined: nothing to read."""
        with self._lock:
            ls = self._lockspaces.get(name)
        if ls is None or ls.state != LIVE:
            return False
        self._start_examine(ls)
        return True

    def inquire(self, holder: HolderRef) -> list[dict]:
        with self._lock:
            try:
                client = self._client(holder)
            except NotHeld:
                return []
            return [self._lease_snapshot(client, h).to_wire() for h in client.leases.values()]

    # ---- formatting lease areas (sanlock's align, write_lockspace, write_resource) -----------

    def lease_sizes(self, path: str) -> ondisk.Sizes:
        """The size class sanlock gives a new lease area on ``path``: its sector size, and
        1 MiB (512) or 8 MiB (4K) alignment."""
        return ondisk.Sizes.default_for(self._storage(path).sector_size)

    def write_lockspace(
        self, loc: delta.Location, io_timeout: int, sizes: ondisk.Sizes | None = None
    ) -> None:
        """Format a lockspace area (libvirt does it for its automatic lease directory); never
        over live leases or foreign data (``delta.init_lockspace``)."""
        st = self._storage(loc.path)
        sizes = sizes or ondisk.Sizes.default_for(st.sector_size)
        delta.init_lockspace(st, loc, sizes, io_timeout)

    def write_resource(
        self,
        res: Resource,
        sizes: ondisk.Sizes | None = None,
        num_hosts: int = 0,
        clear: bool = False,
    ) -> None:
        """Format a resource lease (libvirt does it for each automatic disk lease); never over
        a held lease or foreign data (``paxos.init_resource``)."""
        st = self._storage(res.path)
        sizes = sizes or ondisk.Sizes.default_for(st.sector_size)
        paxos.init_resource(st, res, sizes, num_hosts=num_hosts, clear=clear)

    # ---- resource index (sanlock's rindex commands; ``engine.rindex``) ------------------------

    def rindex_format(
        self, place: rindex.Place, sizes: ondisk.Sizes | None, max_resources: int
    ) -> rindex.Header:
        """Format a resource index (no lockspace needed, as with sanlock); never over live
        leases or foreign data."""
        st = self._storage(place.path)
        sizes = sizes or ondisk.Sizes.default_for(st.sector_size)
        return rindex.format_index(st, place, sizes, max_resources, timeouts.DEFAULT_IO_TIMEOUT)

    @contextlib.contextmanager
    def _rindex_op(self, name: str, joined: bool = True):
        """One index command at a time per lockspace (-EBUSY, as sanlock); yields the joined
        lockspace, or None when ``joined`` is False (sanlock's SANLK_RX_NO_LOCKSPACE)."""
        if not joined:
            yield None
            return
        with self._lock:
            ls = self._lockspaces.get(name)
            if ls is None:
                raise NoLockspace(lockspace=name)
            ls = self._joined(name)
            if name in self._rindex_ops:
                raise RindexBusy(lockspace=name)
            self._rindex_ops.add(name)
        try:
            yield ls
        finally:
            with self._lock:
                self._rindex_ops.discard(name)

    def rindex_busy(self, name: str) -> bool:
        """A resource index command is running in lockspace ``name`` (sanlock refuses to
        remove such a lockspace: its rindex lease is held by our host_id)."""
        with self._lock:
            return name in self._rindex_ops

    @staticmethod
    def _probe(ls: JoinedLockspace | None) -> int:
        """How much of the index header to read: the lockspace's sector (sanlock's rule)."""
        return ls.sizes.sector_size if ls is not None and ls.sizes else rindex.PROBE_SECTOR

    def _under_index_lease(
        self, op: Callable[..., T], ls: JoinedLockspace | None, place: rindex.Place, *args: Any
    ) -> T:
        """``op`` (rindex.create, delete, update or rebuild) on the index at ``place`` with
        ``args``, given what each takes from the node: the storage, how to acquire the
        index's lease under our host_id in ``ls``, how much header to read, the io timeout.
        Refused without the lockspace (sanlock writes the index unserialised then)."""
        if ls is None:
            raise errors.RindexUnserialised(
                **place.where(), op=op.__name__, lockspace=place.lockspace
            )
        return op(
            self._storage(place.path), place, *args,
            lambda res: self._acquirer(ls, res), self._probe(ls), ls.cfg.io_timeout,
        )  # fmt: skip

    def rindex_lookup(self, place: rindex.Place, entry: rindex.Entry, joined: bool) -> rindex.Entry:
        """What the index records (``rindex.lookup``); nothing is written."""
        with self._rindex_op(place.lockspace, joined) as ls:
            io = ls.cfg.io_timeout if ls else timeouts.DEFAULT_IO_TIMEOUT
            st = self._storage(place.path)
            return rindex.lookup(st, place, self._probe(ls), entry.name, entry.offset, io)

    def rindex_create(self, place: rindex.Place, name: str, num_hosts: int) -> int:
        """A new resource lease in the first free slot of the index; returns its offset."""
        with self._rindex_op(place.lockspace) as ls:
            offset = self._under_index_lease(rindex.create, ls, place, name, num_hosts)
        self.event("rindex_create", lockspace=place.lockspace, lease=name, offset=offset)
        return offset

    def rindex_delete(self, place: rindex.Place, entry: rindex.Entry) -> None:
        """Remove a resource lease from the index and clear it (refused while it is held)."""
        with self._rindex_op(place.lockspace) as ls:
            self._under_index_lease(rindex.delete, ls, place, entry)
        self.event("rindex_delete", lockspace=place.lockspace, lease=entry.name)

    def rindex_update(
        self, place: rindex.Place, entry: rindex.Entry, flags: tuple[bool, bool], joined: bool
    ) -> rindex.Entry:
        """Clear or set one entry (``flags``: ``rindex.update``), under the index's lease
        (refused without the lockspace: sanlock writes it without)."""
        with self._rindex_op(place.lockspace, joined) as ls:
            return self._under_index_lease(rindex.update, ls, place, entry, flags)

    def rindex_rebuild(self, place: rindex.Place, joined: bool) -> list[rindex.Entry]:
        """Recreate the index from the leases in its slots, under its lease (refused without
        the lockspace)."""
        with self._rindex_op(place.lockspace, joined) as ls:
            return self._under_index_lease(rindex.rebuild, ls, place)

    def read_lockspace(self, loc: delta.Location, host_id: int) -> ondisk.Leader:
        """Host ``host_id``'s record of the lockspace at ``loc`` (its name, io_timeout and
        size class), joined or not: clients learn a lockspace's name from its storage."""
        return delta.read_lockspace(
            self._storage(loc.path), loc, host_id, timeouts.DEFAULT_IO_TIMEOUT
        )

    def read_owners(self, res: Resource) -> tuple[ondisk.Leader, list[paxos.Owner]]:
        """Who owns ``res`` on disk, as any host reads it (sanlock ``read_resource_owners``):
        its exclusive owner and shared holders, live or not; nothing is written."""
        return paxos.read_owners(self._storage(res.path), res, timeouts.DEFAULT_IO_TIMEOUT)

    # ---- status -----------------------------------------------------------------------------

    def snapshot(self) -> AgentSnapshot:
        """Everything a reader may know, as frozen values taken in one critical section."""
        with self._lock:
            now = self.clock.now()
            loop = self._loop
            return AgentSnapshot(
                node=self.cfg.node_name,
                taken_at=now,
                loop_running=loop is not None and loop.is_alive(),
                last_tick=self._last_tick,
                watchdog=WatchdogSnapshot(
                    fire_timeout=self.cfg.watchdog_fire_timeout,
                    device_timeout=self.device_timeout(),
                    armed=self._armed,
                    last_feed_ago=round(now - self._last_feed, 1) if self._armed else None,
                    on_sigterm=self._on_sigterm(),
                    new_leases_wait=self._quarantined(now),
                    condemned=self._condemned,
                    enforced=not isinstance(self.watchdog, NullWatchdog),
                ),
                lockspaces=tuple(ls.snapshot() for ls in self._lockspaces.values()),
                holders=tuple(
                    self._holder_snapshot(c, exiting)
                    for exiting, clients in (
                        (False, self._registry.clients),
                        (True, self._registry.exiting),
                    )
                    for c in clients.values()
                ),
                events=tuple(self._events),
                fenced=self._fencer.records(),
            )

    def _holder_snapshot(self, c: Client, exiting: bool) -> HolderSnapshot:
        return HolderSnapshot(
            holder=c.identity(),
            kill_command=tuple(c.kill_command) if c.kill_command is not None else None,
            exiting=exiting,
            leases=tuple(self._lease_snapshot(c, h) for h in c.leases.values()),
        )

    def holder(self, key: str) -> HolderSnapshot | None:
        """A registered holder (not one whose process has exited) by key, as it is now."""
        with self._lock:
            c = self._registry.clients.get(key)
            return self._holder_snapshot(c, exiting=False) if c is not None else None

    def status(self) -> dict:
        """The socket API's ``status``: the snapshot in its wire form."""
        return self.snapshot().to_wire()

    def recent_events(self) -> list[dict]:
        """The socket API's ``events``: the last 200, oldest first, in their wire form."""
        with self._lock:
            events = list(self._events)
        return [e.to_wire() for e in events]

    def _on_sigterm(self) -> str:
        """What stopping the agent now (SIGTERM, a rolling update) would do to this node."""
        held = self._holder_keys()
        if self._condemned:
            return f"nothing: the node is being reset ({self._condemned})"
        if not held and self._protecting():
            return (
                "leave the idle node-fencing lockspaces (host_id released, the node is not "
                "reset); any still on disk keep the watchdog counting"
            )
        if not held:
            return "disarm the watchdog: nothing is held, the node is not reset"
        return (
            f"keep the watchdog counting: {len(held)} holder(s) keep their leases, and the "
            f"node is reset {self.device_timeout()} s later unless a new agent adopts them"
        )

    def host_status(self, name: str) -> list[dict]:
        ls = self._lockspaces.get(name)
        if ls is None:
            raise NotJoined.of(name, None)
        return ls.hosts()

    # ---- host events (sanlock's set_event / reg_event) ---------------------------------------

    def set_event(self, name: str, he: delta.HostEvent, flags: int) -> None:
        """Send host event ``he`` through our renewals in lockspace ``name`` (``flags``: the
        ``lockspace.SETEV_*`` bits, sanlock's)."""
        self._joined(name).set_event(he, flags)
        self.event("host_event_set", lockspace=name, host_id=he.host_id, event=he.event,
                   data=he.data, flags=flags)  # fmt: skip

    def watch_host_events(self, watcher: Callable[[str, delta.ReceivedEvent], None]) -> None:
        """Have ``watcher(lockspace, received)`` called with each host event for us read in a
        renewal (from the renewal thread: it must not block)."""
        with self._lock:
            self._event_watchers.append(watcher)

    def _on_host_event(self, ls: JoinedLockspace, received: delta.ReceivedEvent) -> None:
        log.info("lockspace %s: host event %s", ls.name, received)
        with self._lock:
            watchers = list(self._event_watchers)
        for watcher in watchers:
            watcher(ls.name, received)

    def renewal_history(self, name: str) -> list[Renewal]:
        """Our delta lease's recent renewals in a lockspace joined (or failed, not yet left),
        oldest first: to tell slow storage from a dead host after the fact."""
        ls = self._lockspaces.get(name)
        if ls is None or ls.state not in (LIVE, FAILED):
            raise NotJoined.of(name, ls)
        return ls.renewal_history()

    # ---- the main loop ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception:
                log.exception("main loop")

    def tick(self) -> None:
        now = self.clock.now()
        self._last_tick = now
        for ls in list(self._lockspaces.values()):
            if ls.check_deadline(now):
                self._fence(ls, now)
            elif ls.take_examine():
                self._start_examine(ls)
        self._check_fencing(now)
        healthy = self._healthy(now)
        with self._device:
            if self._released:
                return
            if not self._protecting():
                self._disarm("nothing is held")
                return
            if not healthy:
                if self._armed:
                    # Keep the reset where it is (last feed + W) even if we die now: closing the
                    # device counts as a keepalive, so let it run with only the time left, minus
                    # a second for the tick between two calls (README, "Limits of the proof").
                    left = int(self._last_feed + self.device_timeout() - now) - 1
                    if left >= 1:
                        self.watchdog.shorten(left)
                return
            # Opening a device an earlier agent left counting is itself a keepalive: only after
            # the health check above, and never while an earlier incarnation is waited out.
            if self._armed or not self._quarantined(now):
                self._arm_and_feed(now)

    def _fence(self, ls: JoinedLockspace, now: float) -> None:
        """A failed lockspace: who of ours could still write under it is fenced
        (``fencing.FencingDriver``); once nobody could, the lockspace is left."""
        with self._lock:
            holders = [
                c
                for c in self._registry.clients.values()
                if any(h.res.lockspace == ls.name for h in c.leases.values())
            ]
            # an acquisition in flight may still win its ballot: its holder is fenced too
            # (a dead one cannot use what it wins: the acquisition drops it)
            holders += [
                c
                for c, name in self._inflight
                if name == ls.name and c not in holders and self._registry.alive(c)
            ]
        if ls.cfg.fence_node:
            self._condemn(f"lockspace {ls.name} failed: {ls.error}")
        if not holders:
            # nobody of ours can write under this lockspace any more: leave it, keep the node
            self._fencer.finished(ls.name)
            with self._lock:
                if self._lockspaces.get(ls.name) is ls:
                    self._retire(ls)
                    self._lockspaces.pop(ls.name)
            ls.stop(release=False, wait=False)  # the main loop never waits on storage
            self.event("lockspace_lost", lockspace=ls.name, error=ls.error)
            self.save()
            return
        self._fencer.escalate(ls, holders, now)
