"""One client of the sanlock API: the process a registered connection stands for
(:class:`Registration`), and exact reads and writes on its socket (:class:`Connection`)."""

from __future__ import annotations

import contextlib
import select
import socket
from dataclasses import dataclass

from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.errors import Disconnected


@dataclass
class Registration:
    """A process known to this API: registered by a connection, or adopted (``conn`` None)."""

    pid: int
    owner: str
    conn: socket.socket | None = None
    restricted: int = 0
    active: bool = False  # one command at a time per client, as sanlock (cmd_active)


def _from_root(path: str) -> str:
    """A relative lease path is relative to ``/``, where sanlock's daemon runs (``daemon(3)``
    changes to it), not to wherever the agent was started: ``add_lockspace -s
    LS:1:var/lib/libvirt/sanlock/LS:0``, typed as the seed's walkthrough types it, names
    ``/var/lib/libvirt/sanlock/LS`` for both."""
    return path if not path or path.startswith("/") else "/" + path


class Connection:
    """Exact reads and writes on one client socket (clients send header and payload apart)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError as e:
                raise Disconnected(str(e)) from None
            if not chunk:
                raise Disconnected("end of stream")
            buf += chunk
        return bytes(buf)

    def lockspace(self) -> w.Lockspace:
        ls = w.Lockspace.unpack(self.read(w.LOCKSPACE.size))
        ls.path = _from_root(ls.path)
        return ls

    def disk(self) -> w.Disk:
        disk = w.Disk.unpack(self.read(w.DISK.size))
        disk.path = _from_root(disk.path)
        return disk

    def rindex(self) -> w.Rindex:
        ri = w.Rindex.unpack(self.read(w.RINDEX.size))
        ri.path = _from_root(ri.path)
        return ri

    def drain(self, h: w.Header, already: int = 0) -> None:
        """Skip what is left of a request's payload, as ``length`` announces it."""
        left = h.length - w.HEADER.size - already
        if 0 < left <= 1 << 20:
            self.read(left)

    def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)


def _peer_open(sock: socket.socket) -> bool:
    """No process holds the other end any more once it hangs up: the kernel reports that
    (POLLHUP, POLLRDHUP) as soon as the last copy of the peer's fd is closed, before a pidfd
    of the exiting process fires, whether or not unread requests are pending."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLRDHUP)
    except (ValueError, OSError):
        return False  # closed on our side: the connection is gone
    gone = select.POLLHUP | select.POLLRDHUP | select.POLLERR | select.POLLNVAL
    return not any(events & gone for _fd, events in poller.poll(0))
