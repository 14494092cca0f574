"""sanlock 3.8's client API on ``$SANLOCK_RUN_DIR/sanlock.sock``, served by the same agent.

Unchanged sanlock clients (the ``sanlock client`` CLI, python-sanlock, libvirt's lock driver)
talk to this socket as they would to the sanlock daemon; every request is carried out by the
one :class:`~vmlease_agent.core.agent.Agent` behind the JSON API too, so there is one lease
engine, one set of lockspaces and one holder registry (holders tracked by pid and pidfd).

Connections work as sanlock's (wire format: ``sanlock.wire``):

* transient: one request, one reply; the daemon-thread commands (STATUS, HOST_STATUS,
  GET_LOCKSPACES, GET_HOSTS, SHUTDOWN) close the connection after replying, as sanlock does.
* registered: REGISTER (no reply) ties the connection to the peer's pid (SO_PEERCRED at that
  moment). Later commands on it with ``data2`` = -1 act for that pid, one at a time; others may
  act on it with ``data2`` = pid. When the connection closes, the pid's leases are released,
  as sanlock does: the registered fd is the holder's lifeline (a process that exits closes it;
  the agent's pidfd sees the exit too). An agent restart keeps them: the connection is gone with
  the old agent, but the holder is adopted by pid, and a pid the agent holds leases for is a
  valid target of ``data2`` = pid even without a connection to this agent.

Like sanlock, a request with a bad magic or a newer major version, or any request on a
connection restricted with RESTRICT_ALL, gets no reply. Every command of sanlock 3.8.5 is
served; what differs from sanlock is in the README ("sanlock's client API").
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import socketserver
import threading
from collections import deque
from collections.abc import Callable

from vmlease_agent.core.agent import Agent
from vmlease_agent.core.lockspace import (
    FAILED,
    LIVE,
)
from vmlease_agent.engine import (
    delta,
    errors,
)
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase, _size_flags
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.convert import ConvertMixin
from vmlease_agent.rpc.sanlock.daemon import DaemonMixin
from vmlease_agent.rpc.sanlock.errors import (
    Disconnected,
    InvalidRequest,
    LockspaceGoing,
    LockspaceUnknown,
    NoLockspacePath,
    TooManyListeners,
)
from vmlease_agent.rpc.sanlock.formatting import FormattingMixin
from vmlease_agent.rpc.sanlock.leases import LeasesMixin
from vmlease_agent.rpc.sanlock.lockspaces import LockspacesMixin
from vmlease_agent.rpc.sanlock.rindex import RindexMixin
from vmlease_agent.rpc.server import UnixSocketServer

log = logging.getLogger(__name__)

SOCKET_NAME = "sanlock.sock"
DEFAULT_RUN_DIR = "/run/sanlock"
RUN_DIR_ENV = "SANLOCK_RUN_DIR"
RESTRICT_ALL = 0x1


def default_run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


class LogRing(logging.Handler):
    """The agent's recent log lines in memory, at most ``limit`` bytes, for LOG_DUMP: like
    sanlock's own ring, what happened lately can be read without a log file."""

    def __init__(self, limit: int = w.LOG_DUMP_SIZE - 1) -> None:  # -1: the client's NUL
        super().__init__()
        self.limit = limit
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._ring_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")[: self.limit]
        except Exception:
            self.handleError(record)
            return
        with self._ring_lock:
            self._lines.append(line)
            self._size += len(line)
            while self._size > self.limit:
                self._size -= len(self._lines.popleft())

    def dump(self) -> bytes:
        with self._ring_lock:
            return b"".join(self._lines)


class SanlockApi(
    DaemonMixin, RindexMixin, FormattingMixin, ConvertMixin, LeasesMixin, LockspacesMixin, ApiBase
):
    """The commands, over the agent; per-connection state is the caller's ``Registration``."""

    def __init__(
        self, agent: Agent, on_shutdown: Callable[[bool], None], log_ring: LogRing
    ) -> None:
        super().__init__(agent, on_shutdown)
        self.log_ring = log_ring
        agent.watch_host_events(self._deliver)

    # ---- lockspace reading, examination, configuration; the daemon's log and history --------

    def cmd_read_lockspace(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """A lockspace's name, size class and io_timeout (``data2``) from a host's record on
        disk (``host_id`` 0: host 1's), joined or not; the struct follows even after an error,
        as with sanlock."""
        ls = conn.lockspace()
        host_id = ls.host_id or 1
        try:
            if not ls.path:
                raise NoLockspacePath(cmd="read_lockspace", lockspace=ls.name)
            leader = self.agent.read_lockspace(delta.Location(ls.name, ls.path, ls.offset), host_id)
        except errors.LeaseError as e:
            log.info("sanlock read_lockspace refused (%d): %s", e.code, e)
            conn.send(h.reply(e.code, w.LOCKSPACE.size) + ls.pack())
            return True
        found = w.Lockspace(
            leader.space_name, host_id, ls.path, ls.offset, _size_flags(leader.sizes)
        )
        conn.send(h.reply(0, w.LOCKSPACE.size, leader.io_timeout) + found.pack())
        return True

    def cmd_examine_lockspace(
        self, conn: Connection, h: w.Header, reg: Registration | None
    ) -> None:
        self._examine(conn, h, conn.lockspace().name)

    def cmd_examine_resource(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """Only the 128-byte struct comes (no disks): its lockspace is what is examined."""
        self._examine(conn, h, w.Resource.unpack(conn.read(w.RESOURCE.size)).lockspace)

    def _examine(self, conn: Connection, h: w.Header, name: str) -> None:
        """Read our leases' request records in lockspace ``name`` now, all of them (sanlock
        reads the one resource named; reading more only finds the same requests sooner).
        Always 0, as sanlock answers, joined or not."""
        examined = self.agent.examine(name)
        log.info("sanlock examine %s: %s", name, "started" if examined else "not joined")
        self._result(conn, h, 0)

    def cmd_set_config(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """``data``: CONFIG_USED marks a joined lockspace used by something outside sanlock, so
        that rem_lockspace, once its holders are killed, waits until CONFIG_UNUSED; the orphan
        pair is accepted (the agent keeps no orphan leases). Refused on a lockspace failed or
        being removed (-ENOSPC), not joined (-ENOENT), or with another ``data`` (-EINVAL)."""
        ls = conn.lockspace()
        uses = (w.CONFIG_USED, w.CONFIG_USED_BY_ORPHANS)

        def set_config() -> None:
            snap = self.agent.snapshot().lockspace(ls.name)
            if snap is None or snap.state not in (LIVE, FAILED):
                raise LockspaceUnknown(lockspace=ls.name)
            if h.data not in (*uses, w.CONFIG_UNUSED, w.CONFIG_UNUSED_BY_ORPHANS):
                raise InvalidRequest(
                    cmd="set_config",
                    detail=f"config {h.data} is none of 1 (used), 2 (unused), 4 (used by "
                    "orphans), 8 (unused by orphans)",
                )
            if h.data in uses:
                if snap.state == FAILED:
                    raise LockspaceGoing(lockspace=ls.name, going="failed")
                self._not_removing(ls.name)
            with self._lock:
                flags = self._config.get(ls.name, 0)
                if h.data in uses:
                    self._config[ls.name] = flags | h.data
                else:  # UNUSED (2) clears USED (1), UNUSED_BY_ORPHANS (8) clears 4
                    self._config[ls.name] = flags & ~(h.data >> 1)

        self._run(conn, h, set_config)

    def cmd_log_dump(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """The agent's recent log: ``data`` = its size, ``length`` still 32, the text, close."""
        text = self.log_ring.dump()
        conn.send(h.reply(len(text)) + text)
        return True

    # ---- host events -----------------------------------------------------------------------

    def _event_lockspace(self, cmd: str, name: str) -> None:
        """The event commands act on a lockspace joined: -EINVAL without a name, -ENOENT."""
        if not name:
            raise InvalidRequest(cmd=cmd, detail="no lockspace name given")
        snap = self.agent.snapshot().lockspace(name)
        if snap is None or snap.state != LIVE:
            raise LockspaceUnknown(lockspace=name)

    def cmd_reg_event(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """This connection receives the host events for us in a lockspace (``event_cb``
        records) until the client ends it: it writes 4 bytes and closes (python end_event)."""
        ls = conn.lockspace()
        conn.read(w.HOST_EVENT.size)  # unused, as by sanlock
        try:
            self._event_lockspace("reg_event", ls.name)
            with self._lock:
                listeners = self._listeners.setdefault(ls.name, [])
                if len(listeners) >= w.MAX_EVENT_FDS:
                    raise TooManyListeners(lockspace=ls.name, limit=w.MAX_EVENT_FDS)
                listeners.append(conn.sock)
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return True
        self._result(conn, h, 0)
        try:
            while conn.sock.recv(64):
                pass  # the client's end marker: its close follows
        except OSError:
            pass
        finally:
            self._forget_listener(ls.name, conn.sock)
        return True

    def _forget_listener(self, name: str, sock: socket.socket) -> None:
        with self._lock:
            listeners = self._listeners.get(name, [])
            if sock in listeners:
                listeners.remove(sock)

    def _deliver(self, name: str, received: delta.ReceivedEvent) -> None:
        """Push a host event to the lockspace's listeners, never blocking the renewal thread
        (a listener that cannot take it is dropped, as sanlock drops it)."""
        he = received.event
        record = w.event_callback(
            (he.host_id, he.generation, he.event, he.data),
            received.from_host_id,
            received.from_generation,
        )
        with self._lock:
            listeners = list(self._listeners.get(name, []))
        for sock in listeners:
            try:
                sock.send(record, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except OSError as e:
                log.warning("lockspace %s: event listener dropped: %s", name, e)
                self._forget_listener(name, sock)

    def cmd_end_event(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """The client has ended its listener (written its marker and closed it, which the
        listener's own connection sees): only the lockspace is checked, as by sanlock."""
        ls = conn.lockspace()
        self._run(conn, h, lambda: self._event_lockspace("end_event", ls.name))

    def cmd_set_event(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """Send a host event (``cmd_flags``: sanlock's SETEV_* bits) through our renewals."""
        ls = conn.lockspace()
        he = delta.HostEvent(*w.HOST_EVENT.unpack(conn.read(w.HOST_EVENT.size)))

        def set_event() -> None:
            if not ls.name or not 1 <= he.host_id <= w.MAX_HOSTS:
                raise InvalidRequest(
                    cmd="set_event",
                    detail=f"lockspace {ls.name!r}, host_id {he.host_id}: a name and a "
                    f"host_id 1..{w.MAX_HOSTS} are needed",
                )
            self._event_lockspace("set_event", ls.name)
            self.agent.set_event(ls.name, he, h.cmd_flags)

        self._run(conn, h, set_event)

    def cmd_renewal(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """Our delta lease's renewal history in a lockspace (``data2`` = its io_timeout), one
        record per renewal, oldest first, until close; -ENOSPC if it is not joined."""
        name = conn.lockspace().name
        snap = self.agent.snapshot().lockspace(name)
        try:
            if snap is None:
                raise LockspaceUnknown(lockspace=name)
            history = self.agent.renewal_history(name)
        except errors.LeaseError as e:
            log.info("sanlock renewal refused: %s", e)
            conn.send(h.reply(-errno.ENOSPC))  # what sanlock answers for a lockspace unknown
            return True
        if not history:
            conn.send(h.reply(0))
            return True
        out = [h.reply(0, 0, snap.io_timeout)]
        for r in history:
            text = (
                f"timestamp={r.timestamp} read_ms={r.read_ms} write_ms={r.write_ms} "
                f"next_timeouts={r.next_timeouts} next_errors={r.next_errors}"
            )
            out.append(w.state_record(w.STATE_RENEWAL, "", text, 0, r.timestamp))
        conn.send(b"".join(out))
        return True


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        api: SanlockApi = self.server.api  # type: ignore[attr-defined]
        conn = Connection(self.request)
        reg: Registration | None = None
        try:
            while True:
                h = w.Header.unpack(conn.read(w.HEADER.size))
                if reg is not None and reg.restricted & RESTRICT_ALL:
                    conn.drain(h)  # sanlock ignores a restricted connection: no reply
                    continue
                if not h.acceptable or h.cmd not in w.Cmd.__members__.values():
                    log.warning("sanlock request ignored (magic %#x, cmd %d)", h.magic, h.cmd)
                    conn.drain(h)
                    continue
                if h.cmd == w.Cmd.REGISTER:
                    if reg is None:
                        reg = api.register(self.request)
                    continue
                if api.handle(conn, h, reg):
                    return
        except Disconnected:
            pass
        finally:
            if reg is not None:
                api.unregister(reg)


class SanlockApiServer(UnixSocketServer):
    """``sanlock.sock`` in ``run_dir`` (created if missing), served over ``agent``."""

    def __init__(
        self,
        run_dir: str,
        agent: Agent,
        on_shutdown: Callable[[bool], None],
        group: str | None = None,
        log_ring: LogRing | None = None,
    ) -> None:
        """``log_ring``: what LOG_DUMP answers (the caller attaches it to the agent's logging;
        none: an empty log)."""
        os.makedirs(run_dir, mode=0o775, exist_ok=True)
        super().__init__(os.path.join(run_dir, SOCKET_NAME), _Handler, group)
        self.api = SanlockApi(agent, on_shutdown, log_ring or LogRing())
