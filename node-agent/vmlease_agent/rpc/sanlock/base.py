"""What every command group of the sanlock API stands on: :class:`ApiBase`, the state they
share (the agent, the clients registered, sanlock's own state of each lockspace), dispatch and
replies, and the helpers of several groups."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from vmlease_agent.core import fencing
from vmlease_agent.core.agent import Agent
from vmlease_agent.core.lockspace import JOINING, LIVE
from vmlease_agent.core.snapshot import HolderSnapshot, LockspaceSnapshot
from vmlease_agent.engine import SANLK_ERROR, errors, ondisk
from vmlease_agent.engine.paxos import Resource
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.connection import Connection, Registration, _peer_open
from vmlease_agent.rpc.sanlock.errors import (
    BadDiskCount,
    ClientBusy,
    ConnectionNotRegistered,
    HostsNotReady,
    LockspaceGoing,
    LockspaceInUse,
    LockspaceUnknown,
    NotRegistered,
    TooManyResources,
)
from vmlease_agent.rpc.server import peer_credentials

log = logging.getLogger(__name__)


T = TypeVar("T")

#: How long a rem_lockspace or a forced shutdown waits for the holders it killed to be gone and
#: their leases released, before it answers -EBUSY with the lockspace still joined (safe: nothing
#: is released under a live holder, and the client may try again). A SIGKILLed process ends at
#: once unless stuck in uninterruptible I/O; the release after its exit is at most four I/Os (LVB,
#: dblock, leader read, leader write), each abandoned at the io_timeout: 40 s at the default
#: N = 10. 60 s covers that with room for the exit. sanlock's own removal waits without a bound,
#: and its client hangs with it.
KILL_WAIT_SECONDS = 60.0


def _size_flags(sizes: ondisk.Sizes) -> int:
    """The SECTOR and ALIGN bits of a lease's size class (the same in sanlk_resource.flags and
    sanlk_lockspace.flags)."""
    sector = w.RES_SECTOR512 if sizes.sector_size == 512 else w.RES_SECTOR4K
    return sector | ondisk.SIZE_CLASSES[(sizes.sector_size, sizes.align_size)][1]


def wire_lockspace(s: LockspaceSnapshot) -> w.Lockspace:
    """A joined or joining lockspace as sanlock lists it (ADD set while it is being added)."""
    return w.Lockspace(s.name, s.host_id, s.path, s.offset, w.LSF_ADD if s.state == JOINING else 0)


def paxos_resource(res: w.Resource) -> Resource:
    """The lease a one-disk sanlk_resource names."""
    disk = res.disks[0]
    return Resource(res.lockspace, res.name, disk.path, disk.offset)


def _refused(h: w.Header, e: errors.LeaseError) -> int:
    log.info("sanlock %s refused (%d): %s", h.name, e.code, e)
    return e.code


def outcome(h: w.Header, fn: Callable[[], T]) -> tuple[int, T | None]:
    """(0, what ``fn`` returned), or (the code of what it raised, None)."""
    try:
        return 0, fn()
    except errors.LeaseError as e:
        return _refused(h, e), None
    except Exception:  # a bug must not take the daemon down, nor leave the client waiting
        log.exception("sanlock %s failed", h.name)
        return SANLK_ERROR, None


class ApiBase:
    """The shared state and helpers; per-connection state is the caller's ``Registration``. The
    command groups are mixins over it, composed by ``api.SanlockApi``."""

    agent: Agent
    #: what SHUTDOWN calls, in a thread of its own, to stop the agent
    on_shutdown: Callable[[bool], None]
    _lock: threading.Lock
    _registered: list[Registration]
    #: lockspaces a rem_lockspace is removing: no new leases, as sanlock's space_dead
    _removing: set[str]
    #: REG_EVENT connections per lockspace: host events for us are pushed on them
    _listeners: dict[str, list[socket.socket]]

    def __init__(self, agent: Agent, on_shutdown: Callable[[bool], None]) -> None:
        self.agent = agent
        self.on_shutdown = on_shutdown
        self._lock = threading.Lock()
        self._registered = []
        self._removing = set()
        self._listeners = {}

    # ---- registrations -----------------------------------------------------------------------

    def register(self, sock: socket.socket) -> Registration:
        pid, _uid, _gid = peer_credentials(sock)
        reg = Registration(pid, str(pid), sock)
        with self._lock:
            self._registered.append(reg)
        log.info("sanlock client pid %d registered", pid)
        return reg

    def unregister(self, reg: Registration) -> None:
        """The registered connection closed: the pid's leases go, as with sanlock (unless
        another connection of the same pid is still registered)."""
        with self._lock:
            self._registered.remove(reg)
            if any(r.pid == reg.pid for r in self._registered):
                return
        try:
            released = self.agent.release(reg.pid, None)
        except errors.LeaseError:
            return  # nothing held, or the process exited (its pidfd released them)
        log.info("sanlock client pid %d closed its connection: released %s", reg.pid, released)

    def _connected(self, pid: int) -> bool:
        """Is a registered connection of ``pid`` still open at the other end? sanlock keeps a
        client's leases until then, even after the pid exited: a forked child that inherited
        the fd holds them (the agent's holder lifeline, ``core.holders``)."""
        with self._lock:
            conns = [r.conn for r in self._registered if r.pid == pid and r.conn is not None]
        return any(_peer_open(c) for c in conns)

    def registrations(self) -> list[Registration]:
        with self._lock:
            return list(self._registered)

    def _target(self, cmd: str, h: w.Header, reg: Registration | None) -> Registration:
        """Who a registered command acts for: the connection itself, or the pid in data2."""
        if h.data2 == w.SELF:
            if reg is None:
                raise ConnectionNotRegistered(cmd=cmd)
            return reg
        pid = h.data2
        with self._lock:
            found = next((r for r in self._registered if r.pid == pid), None)
        if found is not None:
            return found
        if any(x.holder.pid == pid for x in self.agent.snapshot().holders):
            return Registration(pid, "")  # adopted by the agent after a restart
        raise NotRegistered(cmd=cmd, pid=pid)

    @contextlib.contextmanager
    def _active(self, cmd: str, target: Registration):
        with self._lock:
            if target.active:
                raise ClientBusy(cmd=cmd, pid=target.pid)
            target.active = True
        try:
            yield
        finally:
            target.active = False

    # ---- dispatch ----------------------------------------------------------------------------

    def handle(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """Carry out one request whose header was read; True when the connection must close."""
        handler = getattr(self, f"cmd_{w.Cmd(h.cmd).name.lower()}")  # all but REGISTER
        return bool(handler(conn, h, reg))

    def _result(self, conn: Connection, h: w.Header, outcome: int | errors.LeaseError) -> None:
        if isinstance(outcome, errors.LeaseError):
            outcome = _refused(h, outcome)
        conn.send(h.reply(outcome))

    def _run(self, conn: Connection, h: w.Header, fn: Callable[[], int | None]) -> None:
        """Reply with ``fn``'s result: 0 (or what it returns), or the code of what it raised."""
        code, value = outcome(h, fn)
        conn.send(h.reply(code or value or 0))

    def _read_lease(self, conn: Connection, h: w.Header) -> tuple[w.Resource, Resource] | None:
        """One resource with its disk (REQUEST, WRITE_RESOURCE): as sent, and as the lease
        it names; None once a bad request was answered."""
        try:
            res = self._read_resources(conn, h, 1, with_disks=True)[0]
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return None
        return res, paxos_resource(res)

    # ---- what several command groups use -----------------------------------------------------

    def _holders(self, name: str | None = None) -> list[HolderSnapshot]:
        """Holders with leases (in lockspace ``name``, or in any)."""
        return [
            x
            for x in self.agent.snapshot().holders
            if any(name is None or lease.lockspace == name for lease in x.leases)
        ]

    def _kill_holders(self, in_lockspace: Callable[[str], bool], why: str) -> None:
        """SIGKILL (or what the client's restrictions make of it, as sanlock's kill_pids) every
        process holding a lease ``in_lockspace``, and wait until the agent has released their
        leases."""

        def holders() -> list[HolderSnapshot]:
            return [
                x for x in self._holders() if any(in_lockspace(le.lockspace) for le in x.leases)
            ]

        for x in holders():
            if not x.holder.pid:
                raise LockspaceInUse(
                    lockspace=", ".join(sorted({le.lockspace for le in x.leases})),
                    detail=f"held by {x.holder.key}, which is no process yet: release it first",
                )
            sig = self.agent.kill_holder(x.key, signal.SIGKILL)
            if sig is None:  # being released, or its pid exited: waited for below
                log.warning("%s: holder %s has no process to signal", why, x.key)
            else:
                log.warning("%s: killing holder pid %d with %s", why, x.holder.pid, sig.name)
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while holders():
            if time.monotonic() > deadline:
                raise LockspaceInUse(
                    lockspace=why, detail=f"holders still run {KILL_WAIT_SECONDS:.0f} s after kill"
                )
            time.sleep(0.1)

    def _hosts(self, name: str) -> list[dict]:
        snap = self.agent.snapshot().lockspace(name)
        if snap is None or snap.state not in (LIVE, JOINING):
            raise LockspaceUnknown(lockspace=name)
        if snap.state != LIVE:
            raise HostsNotReady(lockspace=name)
        return self.agent.host_status(name)

    def _read_resources(
        self, conn: Connection, h: w.Header, count: int, with_disks: bool
    ) -> list[w.Resource]:
        if count > w.MAX_RESOURCES:
            conn.drain(h)
            raise TooManyResources(cmd=h.name, count=count, limit=w.MAX_RESOURCES)
        read = 0
        out = []
        for _ in range(count):
            res = w.Resource.unpack(conn.read(w.RESOURCE.size))
            read += w.RESOURCE.size
            if with_disks:
                if not 1 <= res.num_disks <= w.MAX_DISKS:
                    conn.drain(h, read)
                    raise BadDiskCount(
                        cmd=h.name,
                        lease=res.label,
                        count=res.num_disks,
                        limit=w.MAX_DISKS,
                    )
                for _ in range(res.num_disks):
                    res.disks.append(conn.disk())
                    read += w.DISK.size
            out.append(res)
        return out

    def _sizes(self, flags: int, path: str) -> ondisk.Sizes | None:
        """The size class the ALIGN/SECTOR bits of a struct's flags ask for (None: none, the
        storage's default); the sector size from the storage when only the align is given."""
        sector = 512 if flags & w.RES_SECTOR512 else 4096 if flags & w.RES_SECTOR4K else 0
        if not sector and not flags & ondisk.LFL_ALIGN_MASK:
            return None
        sector = sector or self.agent.lease_sizes(path).sector_size
        return ondisk.Sizes.from_leader(sector, flags & ondisk.LFL_ALIGN_MASK)

    @staticmethod
    def _restrictions(flags: int) -> int:
        """The agent's signal restrictions a client's RESTRICT flags ask for."""
        return (fencing.NO_SIGKILL if flags & w.RESTRICT_SIGKILL else 0) | (
            fencing.NO_SIGTERM if flags & w.RESTRICT_SIGTERM else 0
        )

    def _not_removing(self, name: str) -> None:
        with self._lock:
            if name in self._removing:
                raise LockspaceGoing(lockspace=name, going="being removed")
