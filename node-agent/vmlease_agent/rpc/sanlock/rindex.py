"""sanlock's resource index commands (``engine.rindex``): format_rindex, rebuild_rindex,
lookup_rindex, update_rindex, create_resource, delete_resource."""

from __future__ import annotations

from collections.abc import Callable

from vmlease_agent.engine import rindex
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase, outcome
from vmlease_agent.rpc.sanlock.connection import Connection, Registration


class RindexMixin(ApiBase):
    """The resource index commands."""

    @staticmethod
    def _place(ri: w.Rindex) -> rindex.Place:
        return rindex.Place(ri.lockspace, ri.path, ri.offset)

    def cmd_format_rindex(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """Format an index: RES_ALIGN*/SECTOR* in the struct's flags (none: the storage's
        default), ``max_resources`` (0: 4096)."""
        ri = conn.rindex()

        def format_rindex() -> None:
            sizes = self._sizes(ri.flags, ri.path)
            self.agent.rindex_format(self._place(ri), sizes, ri.max_resources)

        self._run(conn, h, format_rindex)

    def cmd_rebuild_rindex(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        ri = conn.rindex()
        joined = not h.cmd_flags & w.RX_NO_LOCKSPACE

        def rebuild() -> None:
            self.agent.rindex_rebuild(self._place(ri), joined)

        self._run(conn, h, rebuild)

    def _rindex_entry(
        self,
        conn: Connection,
        h: w.Header,
        fn: Callable[[rindex.Place, rindex.Entry], rindex.Entry],
    ) -> None:
        """The entry commands: a sanlk_rindex and a sanlk_rentry in (whatever ``length``
        says: LOOKUP's counts a sanlk_resource), a header and a sanlk_rentry out, always."""
        ri = conn.rindex()
        re_in = w.Rentry.unpack(conn.read(w.RENTRY.size))
        result, got = outcome(
            h, lambda: fn(self._place(ri), rindex.Entry(re_in.name, re_in.offset))
        )
        out = w.Rentry() if got is None else w.Rentry(got.name, got.offset)
        conn.send(h.reply(result, w.RENTRY.size) + out.pack())

    def cmd_lookup_rindex(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        joined = not h.cmd_flags & w.RX_NO_LOCKSPACE
        self._rindex_entry(conn, h, lambda p, e: self.agent.rindex_lookup(p, e, joined))

    def cmd_update_rindex(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """Clear (RXUP_REM: the offset's entry) or set (RXUP_ADD: name and offset) an entry;
        neither flag: -EINVAL, after the index header is checked, as by sanlock."""
        joined = not h.cmd_flags & w.RX_NO_LOCKSPACE
        flags = (bool(h.cmd_flags & w.RXUP_REM), bool(h.cmd_flags & w.RXUP_ADD))
        self._rindex_entry(conn, h, lambda p, e: self.agent.rindex_update(p, e, flags, joined))

    def cmd_create_resource(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """A new lease in the index's first free slot; ``data2`` = num_hosts (``data``,
        max_hosts, is not used, as by sanlock). The reply names only the offset, as sanlock's."""
        self._rindex_entry(
            conn,
            h,
            lambda p, e: rindex.Entry("", self.agent.rindex_create(p, e.name, h.data2)),
        )

    def cmd_delete_resource(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        def delete(place: rindex.Place, e: rindex.Entry) -> rindex.Entry:
            self.agent.rindex_delete(place, e)
            return rindex.Entry("", 0)

        self._rindex_entry(conn, h, delete)
