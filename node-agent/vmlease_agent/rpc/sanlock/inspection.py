"""Lockspaces read, examined and configured; the daemon's log and history: read_lockspace,
examine_lockspace, examine_resource, set_config, log_dump (from :class:`LogRing`), renewal."""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque

from vmlease_agent.core.lockspace import FAILED, LIVE
from vmlease_agent.engine import delta, errors
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase, _size_flags
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.errors import (
    InvalidRequest,
    LockspaceGoing,
    LockspaceUnknown,
    NoLockspacePath,
)

log = logging.getLogger(__name__)


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


class InspectionMixin(ApiBase):
    """Reading, examination, configuration; the log and the renewal history."""

    #: the agent's recent log lines, what LOG_DUMP answers
    log_ring: LogRing

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
        that rem_lockspace, once its holders are killed, waits until CONFIG_UNUSED, and the
        agent's own removal and stop keep it (``Agent.set_used_outside``); the orphan pair is
        accepted and changes nothing (the agent keeps no orphan leases). Refused on a lockspace
        failed or being removed (-ENOSPC), not joined (-ENOENT), or with another ``data``
        (-EINVAL)."""
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
            if h.data in (w.CONFIG_USED, w.CONFIG_UNUSED):
                self.agent.set_used_outside(ls.name, h.data == w.CONFIG_USED)

        self._run(conn, h, set_config)

    def cmd_log_dump(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """The agent's recent log: ``data`` = its size, ``length`` still 32, the text, close."""
        text = self.log_ring.dump()
        conn.send(h.reply(len(text)) + text)
        return True

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
