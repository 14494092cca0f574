"""Host events: reg_event (a connection that receives the events for us in a lockspace),
end_event, set_event; and their delivery from the agent's renewals."""

from __future__ import annotations

import logging
import socket

from vmlease_agent.core.lockspace import LIVE
from vmlease_agent.engine import delta, errors
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.errors import InvalidRequest, LockspaceUnknown, TooManyListeners

log = logging.getLogger(__name__)


class EventsMixin(ApiBase):
    """The host event commands and the delivery of events to listeners."""

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
