"""Joining, leaving and listing lockspaces: add_lockspace, inq_lockspace, rem_lockspace
(which kills the holders of its leases first, as sanlock's), get_lockspaces, get_hosts."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time

from vmlease_agent.core.agent import AgentError
from vmlease_agent.core.lockspace import JOINING, LIVE, LockspaceConfig
from vmlease_agent.core.snapshot import LockspaceSnapshot
from vmlease_agent.engine import delta, errors, timeouts
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase, wire_lockspace
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.errors import (
    InProgress,
    InvalidRequest,
    LockspaceExists,
    LockspaceInUse,
    LockspaceUnknown,
)

log = logging.getLogger(__name__)


class LockspacesMixin(ApiBase):
    """The lockspace commands."""

    def _matching(self, ls: w.Lockspace) -> LockspaceSnapshot | None:
        """The joined lockspace ``ls`` names: name, path and offset, and host_id unless 0."""
        snap = self.agent.snapshot().lockspace(ls.name)
        if snap is None or (snap.path, snap.offset) != (ls.path, ls.offset):
            return None
        if ls.host_id and ls.host_id != snap.host_id:
            return None
        return snap

    def cmd_add_lockspace(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        ls = conn.lockspace()

        def add() -> int:
            if not ls.name or not ls.host_id or not ls.path:
                raise InvalidRequest(cmd="add_lockspace", detail="name, host_id and path needed")
            cur = self.agent.snapshot().lockspace(ls.name)
            if cur is not None and cur.state in (LIVE, JOINING):
                if self._matching(ls) is None:
                    raise InvalidRequest(
                        cmd="add_lockspace",
                        detail=f"lockspace {ls.name} is joined as {cur.host_id}:{cur.path}:"
                        f"{cur.offset}, not {ls.host_id}:{ls.path}:{ls.offset}",
                    )
                if cur.state == JOINING:
                    raise InProgress(lockspace=ls.name, doing="added")
                raise LockspaceExists(lockspace=ls.name, host_id=cur.host_id)
            io = h.data or timeouts.DEFAULT_IO_TIMEOUT
            cfg = LockspaceConfig(ls.name, ls.host_id, ls.path, ls.offset, io)
            try:
                self.agent.add_lockspace(cfg, wait=not h.cmd_flags & w.ADD_ASYNC)
            except AgentError as e:
                if not e.fields.get("cause"):
                    raise
                log.info("sanlock add_lockspace refused (%d): %s", e.fields["cause"], e)
                return int(e.fields["cause"])  # the delta lease's code, as sanlock answers
            return 0

        self._run(conn, h, add)

    def _inq(self, ls: w.Lockspace) -> int:
        snap = self._matching(ls)
        if snap is None or snap.state not in (LIVE, JOINING):
            return -errno.ENOENT
        return 0 if snap.state == LIVE else -errno.EINPROGRESS

    def cmd_inq_lockspace(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        ls = conn.lockspace()
        result = self._inq(ls)
        while result == -errno.EINPROGRESS and h.cmd_flags & w.INQ_WAIT:
            time.sleep(1)
            result = self._inq(ls)
        self._result(conn, h, result)

    def cmd_rem_lockspace(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        ls = conn.lockspace()

        def remove() -> None:
            snap = self._matching(ls)
            if snap is None:
                raise LockspaceUnknown(lockspace=ls.name)
            if snap.state == JOINING:
                raise InProgress(lockspace=ls.name, doing="added")
            if self.agent.rindex_busy(ls.name):
                raise LockspaceInUse(lockspace=ls.name, detail="a resource index command runs")
            users = self._holders(ls.name)
            if users and h.cmd_flags & w.REM_UNUSED:
                raise LockspaceInUse(lockspace=ls.name, detail="leases are held in it")
            if h.cmd_flags & w.REM_ASYNC:
                threading.Thread(target=self._remove, args=(ls.name,), daemon=True).start()
            else:
                self._remove(ls.name)

        self._run(conn, h, remove)

    def _remove(self, name: str) -> None:
        """sanlock's rem_lockspace: no new leases; SIGKILL the holders of its leases; wait
        while an outside user marks it used (SET_CONFIG); then leave it."""
        with self._lock:
            self._removing.add(name)
        try:
            self._kill_holders(lambda lockspace: lockspace == name, f"lockspace {name} is removed")
            self._wait_unused(name)
            self.agent.rem_lockspace(name)
            with self._lock:
                listeners = self._listeners.pop(name, [])
            for sock in listeners:  # sanlock closes them with the lockspace: the client sees EOF
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                self._removing.discard(name)

    def _wait_unused(self, name: str) -> None:
        """While SET_CONFIG says a user outside sanlock still works under ``name`` (e.g. a
        cluster lock manager's locks), its removal waits, polled once a second as sanlock
        does; the holders are gone by then. (USED_BY_ORPHANS waits for orphan leases, which
        the agent never keeps: nothing to wait for.)"""
        said = False
        while self.agent.used_outside(name):
            if self.agent.snapshot().lockspace(name) is None:
                return  # left meanwhile (failed): nothing to remove
            if not said:
                log.info("rem_lockspace %s waits: set_config says it is used", name)
                said = True
            time.sleep(1)

    def cmd_get_lockspaces(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        spaces = [
            wire_lockspace(s)
            for s in self.agent.snapshot().lockspaces
            if s.state in (LIVE, JOINING)
        ]
        payload = b"".join(s.pack() for s in spaces)
        conn.send(h.reply(0, len(payload), len(spaces)) + payload)
        return True

    def cmd_get_hosts(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        ls = conn.lockspace()
        try:
            hosts = self._hosts(ls.name)
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return True
        rows = [r for r in hosts if (r["host_id"] == ls.host_id if ls.host_id else r["timestamp"])]
        payload = b"".join(
            w.host(
                r["host_id"],
                r["generation"],
                r["timestamp"],
                r["io_timeout"],
                delta.STATE_CODES[r["state"]],
            )
            for r in rows
        )
        conn.send(h.reply(0, len(payload), len(rows)) + payload)
        return True
