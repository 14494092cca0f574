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

And one check that the shared directory is shared. The formatting node writes a random *storage
id* beside the area, in ``<path>.<lockspace>.vmlease-id`` (one line: 32 lowercase hex digits and
a newline; created with a hard link, so an existing one is never overwritten, and adopted as it
is), and publishes it as ``status.storageId``. Every agent reads that file in its own shared
directory before joining and refuses where it finds another id or none: its "shared" directory
is a local one (a mount missing, a hostPath pointing elsewhere), and leases taken there would
protect nothing while the VM disks themselves are shared. Areas on block devices (``/dev/...``)
have no file beside them: no check there.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass

from vmlease_agent.engine import delta, errors, ondisk
from vmlease_agent.engine.directio import Storage

FORMATTED, FOUND = "formatted", "found"
STORAGE_ID_SUFFIX = ".vmlease-id"


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


def storage_id_path(path: str, lockspace: str) -> str | None:
    """Where the storage id of ``lockspace`` (area in ``path``) lives; None on a block device."""
    if path.startswith("/dev/"):
        return None
    return f"{path}.{lockspace}{STORAGE_ID_SUFFIX}"


def read_storage_id(path: str, lockspace: str) -> str | None:
    """The id this node sees, or None when the file is missing or does not hold one."""
    where = storage_id_path(path, lockspace)
    if where is None:
        return None
    try:
        with open(where) as f:
            text = f.read(64).strip()
    except FileNotFoundError:
        return None
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        return None
    return text


def ensure_storage_id(path: str, lockspace: str) -> str | None:
    """The formatting node's step: the id already beside the area, else a new one, written to
    a temporary file, synced, then linked into place (a link never replaces an existing file:
    two writers cannot both win). None on a block device."""
    where = storage_id_path(path, lockspace)
    if where is None:
        return None
    found = read_storage_id(path, lockspace)
    if found is not None:
        return found
    if os.path.exists(where):
        raise OSError(
            errno.EEXIST, f"{where} exists but holds no storage id: remove it if it is stray"
        )
    new = secrets.token_hex(16)
    tmp = f"{where}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{new}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, where)
    except FileExistsError:
        pass  # someone else's id won: adopt it below
    finally:
        os.unlink(tmp)
    winner = read_storage_id(path, lockspace)
    if winner is None:
        raise OSError(errno.EIO, f"{where}: the storage id just written does not read back")
    return winner
