"""Process-lifetime leases: every resource lease belongs to a local process and dies with it.

sanlock ties leases to a registered socket inherited by the process. We watch the process itself
through a pidfd (``pidfd_open``): it becomes readable the moment the process exits, whoever
started it, and it cannot be fooled by pid reuse. Because the lease is tied to the process and not
to a connection to us, the agent can restart while its clients keep running: the new agent opens
new pidfds for the pids it persisted (checking each pid's start time, so a reused pid is never
mistaken for the original holder).

A lease may also be taken before its process exists (libvirt's ``prepare`` runs before QEMU
starts): it is held by a *placeholder* client named by a key (``libvirt:<domain uuid>``) and bound
to the pid later. A placeholder without a pid is never assumed dead: fencing cannot confirm it
stopped, so only the watchdog can end it — safe, never guessed.

A holder may also have a *lifeline* besides its pid: sanlock's registered connection
(``rpc.sanlock``), whose fd a forked child inherits. sanlock keeps the leases until the
last copy of that fd is closed, so a process that registers, acquires, forks a writer and exits
keeps them. So do we: when such a pid exits while its lifeline is open, the holder stays (marked
``exited``) and counts as alive until the lifeline closes (the API then releases its leases).
Nothing can be signalled for it (the pid is gone and may be reused; the fd's other owners are
not known): fencing can only run its kill command or let the watchdog reset the node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vmlease_agent.core.snapshot import LeaseHolder, holder_kind
from vmlease_agent.engine.paxos import Resource, Token

log = logging.getLogger(__name__)


def _stat_after_comm(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat from field 3 (state) on, or None when there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    return data[data.rindex(b")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot): a pid's identity."""
    fields = _stat_after_comm(pid)
    return int(fields[19]) if fields else None


def process_can_run(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie runs no code and writes nothing)."""
    fields = _stat_after_comm(pid)
    return fields is not None and fields[0] != b"Z"


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def process_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@dataclass
class HeldLease:
    """One lease held for one process."""

    res: Resource
    token: Token
    shared: bool
    since: float = field(default_factory=time.time)  # wall clock, for people
    #: a pending request to give it up, acted on: (requested lver, force mode) (``requests``)
    request: tuple[int, int] | None = None
    #: the disk an automatic disk lease protects (libvirt's hook says which), for people
    disk_path: str | None = None

    @property
    def label(self) -> str:
        return self.res.label


def pid_key(pid: int) -> str:
    return f"pid:{pid}"


@dataclass
class Client:
    key: str
    pid: int  # 0 for a placeholder not yet bound to a process
    start_time: int
    name: str
    owner: str = ""  # what the process is for people: a VM name, a command
    kill_command: list[str] | None = None
    #: the kill command gets the pid as its last argument (sanlock's killpath only with
    #: SANLK_KILLPATH_PID: libvirt's helper takes exactly its own arguments)
    kill_appends_pid: bool = True
    #: signals the holder asked not to get (``fencing.NO_SIGKILL`` / ``NO_SIGTERM``, sanlock's
    #: restrict bits): the other one is sent instead
    restrict: int = 0
    leases: dict[str, HeldLease] = field(default_factory=dict)
    pidfd: int = -1
    dead: bool = False
    #: is another handle on this holder still open (see the module docstring)? Not saved.
    lifeline: Callable[[], bool] | None = None
    #: the pid exited while the lifeline was open: the holder lives on in processes unknown
    #: (without a lifeline, i.e. adopted by a restarted agent: until released by hand)
    exited: bool = False
    kill_state: dict = field(default_factory=dict)  # fencing progress

    def identity(self) -> LeaseHolder:
        return LeaseHolder(self.key, holder_kind(self.key), self.pid, self.name, self.owner)


class ClientRegistry:
    """Local processes holding leases; calls ``on_exit(client)`` from its watcher thread.

    While ``on_exit`` runs (it releases the leases on disk), the client is in ``exiting``: its
    leases are still someone's until the release is on disk. ``lock`` may be shared with the
    caller, so that one critical section sees both dicts consistently.
    """

    def __init__(
        self, on_exit: Callable[[Client], None], lock: threading.RLock | None = None
    ) -> None:
        self.on_exit = on_exit
        self.clients: dict[str, Client] = {}
        self.exiting: dict[str, Client] = {}
        self.lock = lock or threading.RLock()
        self._poll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poll.register(self._wake_r, select.EPOLLIN)
        self._by_fd: dict[int, str] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._watch, name="client-watch", daemon=True)
        self._thread.start()

    def get(self, pid: int, start_time: int | None = None, owner: str = "") -> Client:
        """The client for ``pid``, registering it (and watching it) on first use."""
        with self.lock:
            c = self.by_pid(pid)
            now_start = process_start_time(pid)
            if c is not None and (now_start is None or now_start != c.start_time):
                # the pid we knew has exited (its pidfd fires shortly) or was reused
                raise ProcessLookupError(pid)
            if c is None:
                c = Client(pid_key(pid), 0, 0, process_name(pid), owner=owner)
                self._watch_pid(c, pid, start_time)
                self.clients[c.key] = c
            elif owner and not c.owner:
                c.owner = owner
            return c

    def _watch_pid(self, c: Client, pid: int, start_time: int | None) -> None:
        now_start = process_start_time(pid)
        if now_start is None or (start_time is not None and start_time != now_start):
            raise ProcessLookupError(pid)
        fd = os.pidfd_open(pid)
        c.pid, c.start_time, c.pidfd = pid, now_start, fd
        c.name = process_name(pid)
        self._by_fd[fd] = c.key
        self._poll.register(fd, select.EPOLLIN)

    def placeholder(self, key: str, owner: str = "") -> Client:
        """A holder known by ``key`` whose process does not exist yet (see module docstring)."""
        with self.lock:
            c = self.clients.get(key)
            if c is None:
                c = self.clients[key] = Client(key, 0, 0, owner or key, owner=owner)
            return c

    def bind(self, key: str, pid: int, start_time: int | None = None) -> Client:
        """Tie a placeholder's leases to the process ``pid`` from now on."""
        with self.lock:
            c = self.clients[key]
            if c.pid == pid and c.pidfd >= 0:
                return c
            if c.pid:
                raise ValueError(f"{key} is already bound to pid {c.pid}")
            self._watch_pid(c, pid, start_time)
            return c

    def by_pid(self, pid: int) -> Client | None:
        with self.lock:
            c = self.clients.get(pid_key(pid))
            if c is None:
                c = next((x for x in self.clients.values() if x.pid == pid), None)
            return c

    def forget(self, key: str) -> None:
        """Stop tracking a client that holds nothing (its pidfd is closed)."""
        with self.lock:
            c = self.clients.pop(key, None)
            if c is not None:
                self._close(c)

    def _close(self, c: Client) -> None:
        if c.pidfd >= 0:
            self._by_fd.pop(c.pidfd, None)
            with contextlib.suppress(OSError, ValueError):
                self._poll.unregister(c.pidfd)
            os.close(c.pidfd)
            c.pidfd = -1

    def alive(self, c: Client) -> bool:
        """Could this holder still write? A placeholder without a process counts as alive, an
        exited pid as long as its lifeline is open."""
        if c.exited:  # adopted after a restart, its lifeline is gone with the old agent
            return c.lifeline is None or c.lifeline()
        if c.pid == 0:
            return not c.dead
        return not c.dead and process_start_time(c.pid) == c.start_time

    def _watch(self) -> None:
        while not self._stop:
            try:
                events = self._poll.poll(1.0)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._wake_r:
                    os.read(self._wake_r, 64)
                    continue
                with self.lock:
                    key = self._by_fd.get(fd)
                    c = self.clients.get(key) if key is not None else None
                    if c is None:
                        continue
                    self._close(c)
                    if c.lifeline is not None and c.lifeline():
                        c.exited = True
                        log.warning(
                            "pid %d exited but its registered connection is still open (a "
                            "forked child has it): its leases stay until that closes",
                            c.pid,
                        )
                        continue
                    del self.clients[c.key]
                    c.dead = True
                    self.exiting[c.key] = c
                try:
                    self.on_exit(c)
                except Exception:  # the watcher must survive any handler bug
                    log.exception("releasing the leases of exited pid %d failed", c.pid)
                finally:
                    with self.lock:
                        self.exiting.pop(c.key, None)

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2)
        with self.lock:
            for c in self.clients.values():
                self._close(c)
