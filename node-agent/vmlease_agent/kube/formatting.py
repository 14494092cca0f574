"""Formatting a Lockspace's area when the operator names this node (``status.formatRequest``).

The safety rests on three layers, outermost first:

1. only the one node named in ``status.formatRequest`` formats, and no agent joins before
   ``status.formatted`` is true (``kube_logic.decide``), so in the normal course nobody's delta
   lease is in the area;
2. an area that already holds this lockspace (same name, same geometry) is *adopted*, not
   written: that covers a format whose ``status.formatted`` write was lost (API server away,
   agent restarted) and a Lockspace re-created over an existing area;
3. the engine's ``init_lockspace`` refuses to write over live delta leases, resource leases or
   foreign data (a wrong path or offset into a VM image) whatever the API says.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from vmlease_agent.engine import delta, errors, ondisk
from vmlease_agent.engine.directio import Storage

FORMATTED, FOUND = "formatted", "found"


class FormatMismatch(errors.LeaseError):
    code = -errno.EINVAL
    template = (
        "lockspace {lockspace} at {path}:{offset} already exists on disk with {found}, but the "
        "Lockspace asks for {wanted}: the area cannot be reformatted under live hosts; fix "
        "spec.sectorSize/alignSize, or give the Lockspace a new path"
    )


@dataclass(frozen=True)
class Geometry:
    name: str
    path: str
    offset: int
    sector_size: int
    align_bytes: int
    io_timeout: int

    @property
    def location(self) -> delta.Location:
        return delta.Location(self.name, self.path, self.offset)

    @property
    def sizes(self) -> ondisk.Sizes:
        return ondisk.Sizes(self.sector_size, self.align_bytes)


def ensure_file(path: str, size: int) -> None:
    """A lease file must exist before the engine opens it: create it (and its directory) and
    extend it to ``size``; never shrink. Block devices are left alone."""
    if path.startswith("/dev/"):
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def format_or_adopt(g: Geometry) -> str:
    """Format the area, or find it already formatted; returns FORMATTED or FOUND."""
    ensure_file(g.path, g.offset + g.align_bytes)
    with Storage(g.path) as st:
        try:
            sizes, first = delta.read_sizes(st, g.location, g.io_timeout)
        except errors.LeaseError:
            sizes, first = None, None
        if first is not None and sizes is not None and first.space_name == g.name:
            if (sizes.sector_size, sizes.align_size) != (g.sector_size, g.align_bytes):
                raise FormatMismatch(
                    lockspace=g.name,
                    path=g.path,
                    offset=g.offset,
                    found=f"{sizes.sector_size}-byte sectors, {sizes.align_size} bytes",
                    wanted=f"{g.sector_size}-byte sectors, {g.align_bytes} bytes",
                )
            return FOUND
        delta.init_lockspace(st, g.location, g.sizes, g.io_timeout)
    return FORMATTED
