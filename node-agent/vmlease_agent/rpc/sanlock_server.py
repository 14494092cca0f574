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

import logging
import os
import socket
import socketserver
from collections.abc import Callable

from vmlease_agent.core.agent import Agent
from vmlease_agent.core.lockspace import (
    LIVE,
)
from vmlease_agent.engine import (
    delta,
    errors,
)
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.convert import ConvertMixin
from vmlease_agent.rpc.sanlock.daemon import DaemonMixin
from vmlease_agent.rpc.sanlock.errors import (
    Disconnected,
    InvalidRequest,
    LockspaceUnknown,
    TooManyListeners,
)
from vmlease_agent.rpc.sanlock.formatting import FormattingMixin
from vmlease_agent.rpc.sanlock.inspection import InspectionMixin, LogRing
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


class SanlockApi(
    InspectionMixin,
    DaemonMixin,
    RindexMixin,
    FormattingMixin,
    ConvertMixin,
    LeasesMixin,
    LockspacesMixin,
    ApiBase,
):
    """The commands, over the agent; per-connection state is the caller's ``Registration``."""

    def __init__(
        self, agent: Agent, on_shutdown: Callable[[bool], None], log_ring: LogRing
    ) -> None:
        super().__init__(agent, on_shutdown)
        self.log_ring = log_ring
        agent.watch_host_events(self._deliver)

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
