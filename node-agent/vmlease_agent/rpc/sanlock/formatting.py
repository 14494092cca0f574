"""Formatting lease areas, what libvirt does for its automatic disk leases: align,
write_lockspace, write_resource."""

from __future__ import annotations

from vmlease_agent.engine import delta, timeouts
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase
from vmlease_agent.rpc.sanlock.connection import Connection, Registration


class FormattingMixin(ApiBase):
    """The formatting commands."""

    def cmd_align(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """The alignment of a new lease area on a disk: ``data`` = bytes (1 MiB for 512-byte
        sectors and files, 8 MiB for 4K), or a negative error."""
        disk = conn.disk()
        self._run(conn, h, lambda: self.agent.lease_sizes(disk.path).align_size)

    def cmd_write_lockspace(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """Format a lockspace area: ``data2`` = io_timeout (0: the default); ``data`` (max
        hosts) is ignored, as by sanlock."""
        ls = conn.lockspace()
        io = h.data2 or timeouts.DEFAULT_IO_TIMEOUT
        loc = delta.Location(ls.name, ls.path, ls.offset)
        self._run(
            conn, h, lambda: self.agent.write_lockspace(loc, io, self._sizes(ls.flags, ls.path))
        )

    def cmd_write_resource(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """Format a resource lease; sanlock reads ``data`` as num_hosts (the client puts
        max_hosts there: libvirt sends 0)."""
        read = self._read_lease(conn, h)
        if read is None:
            return
        res, lease = read

        def write() -> None:
            sizes = self._sizes(res.flags, lease.path)
            clear = bool(h.cmd_flags & w.WRITE_CLEAR)
            self.agent.write_resource(lease, sizes, num_hosts=h.data, clear=clear)

        self._run(conn, h, write)
