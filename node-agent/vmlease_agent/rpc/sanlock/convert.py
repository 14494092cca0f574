"""A held lease converted (shared, exclusive) and its lock value block: convert, set_lvb,
get_lvb."""

from __future__ import annotations

from vmlease_agent.engine import errors
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.errors import LvbSize


class ConvertMixin(ApiBase):
    """Convert and the lock value block."""

    def cmd_convert(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """A held lease to shared (RES_SHARED in the resource's flags) or exclusive, for the
        connection's pid or the one in ``data2`` (``Agent.convert``)."""
        try:
            res = self._read_resources(conn, h, 1, with_disks=False)[0]
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return

        def convert() -> None:
            target = self._target("convert", h, reg)
            with self._active("convert", target):
                self.agent.convert(
                    target.pid,
                    res.label,
                    shared=bool(res.flags & w.RES_SHARED),
                    wait=not h.cmd_flags & w.CONVERT_OWNER_NOWAIT,
                )

        self._run(conn, h, convert)

    def cmd_set_lvb(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """The resource, then the LVB bytes: as many as ``length`` says are left (sanlock
        takes the size from there); more than 4096 is refused before the lease is looked at."""
        res = w.Resource.unpack(conn.read(w.RESOURCE.size))
        size = h.length - w.HEADER.size - w.RESOURCE.size
        if not 0 <= size <= w.MAX_LVB:
            conn.drain(h, w.RESOURCE.size)
            self._result(conn, h, LvbSize(size=size, limit=w.MAX_LVB))
            return
        data = conn.read(size)
        self._run(conn, h, lambda: self.agent.set_lvb(res.label, data))

    def cmd_get_lvb(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """The reply's ``length`` carries the LVB's size (libsanlock reads ``length - 32``
        bytes): ``data2`` bytes, or one sector when 0 (what libsanlock always sends)."""
        res = w.Resource.unpack(conn.read(w.RESOURCE.size))
        try:
            lvb = self.agent.get_lvb(res.label, h.data2)
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return
        conn.send(h.reply(0, len(lvb)) + lvb)
