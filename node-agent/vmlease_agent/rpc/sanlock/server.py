"""sanlock 3.8's client API on ``$SANLOCK_RUN_DIR/sanlock.sock``, served by the same agent: the
socket server (:class:`SanlockApiServer`) and its connections (``_Handler``).

Unchanged sanlock clients (the ``sanlock client`` CLI, python-sanlock, libvirt's lock driver)
talk to this socket as they would to the sanlock daemon; every request is carried out by the
one :class:`~vmlease_agent.core.agent.Agent` behind the JSON API too, so there is one lease
engine, one set of lockspaces and one holder registry (holders tracked by pid and pidfd).

Connections work as sanlock's (wire format: ``wire``; the commands: ``api``):

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
import socketserver
from collections.abc import Callable

from vmlease_agent.core.agent import Agent
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.api import SanlockApi
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.errors import Disconnected
from vmlease_agent.rpc.sanlock.inspection import LogRing
from vmlease_agent.rpc.server import UnixSocketServer

log = logging.getLogger(__name__)

SOCKET_NAME = "sanlock.sock"
DEFAULT_RUN_DIR = "/run/sanlock"
RUN_DIR_ENV = "SANLOCK_RUN_DIR"
RESTRICT_ALL = 0x1


def default_run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


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
