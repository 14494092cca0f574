"""Creating the automatic lease files (and the lockspace file) on shared storage, race-free.

Every node may be the first to start a domain on a disk, so two nodes may try to create the same
lease file at once. The rule: **initialise only a file you created yourself**. A node that finds
the file already there must never write it: the other node may be initialising it, or may already
hold the lease in it, and initialising it again would erase that lease.

How: the lease area is written, complete, into a temporary file of our own (``O_EXCL``, a name
with our host name and pid), made durable, then published under its final name with ``link()``,
which fails with EEXIST when the name exists — atomic on local file systems and on NFS (the
classic NFS-safe exclusive create). Whoever loses the race drops its copy and uses the winner's.
So a lease file is never visible half-written, and a crash leaves at most a stray
``.NAME.HOST.PID.tmp``, never a lease file that will not work. On a file system without hard
links we fall back to what libvirt's sanlock driver does (``O_EXCL`` on the final name, then
initialise it); a reader that meets such a file before it is initialised sees "not a lease"
and retries within the hook's deadline.

Sizes are sanlock's defaults (``sanlock_align``: 1 MiB for 512-byte sectors), exactly as
libvirt's driver creates them (``sanlock_init(NULL, res, 0, 0)``: 2000 hosts).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable

#: errnos of link() meaning "this file system has no hard links", not "the name exists".
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}

LEASE_FILE_SIZE = 1 << 20  # sanlock_align() of a 512-byte-sector file: 1 MiB
LEASE_FILE_MODE = 0o600  # as libvirt: root's daemon is the only user


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_file(path: str, size: int) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, LEASE_FILE_MODE)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def create_exclusively(final: str, initialise: Callable[[str], None]) -> bool:
    """Create ``final`` initialised by ``initialise(path)`` unless it exists; True if we did."""
    if os.path.exists(final):
        return False
    directory, base = os.path.split(final)
    tmp = os.path.join(directory, f".{base}.{socket.gethostname()}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by an earlier process with our pid that crashed
    _new_file(tmp, LEASE_FILE_SIZE)
    try:
        initialise(tmp)
        try:
            os.link(tmp, final)
            created = True
        except FileExistsError:
            created = False
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            created = _create_in_place(final, initialise)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(directory)
    return created


def _create_in_place(final: str, initialise: Callable[[str], None]) -> bool:
    """libvirt's way, for file systems without hard links: O_EXCL, then initialise."""
    try:
        _new_file(final, LEASE_FILE_SIZE)
    except FileExistsError:
        return False
    initialise(final)
    return True


def ensure_lease_file(lockspace: str, resource: str, path: str, write_timeout: float) -> bool:
    """The automatic lease ``lockspace:resource`` exists at ``path``; True if we created it."""
    from vmlease_agent.engine import ondisk, paxos
    from vmlease_agent.engine.directio import Storage

    def initialise(tmp: str) -> None:
        with Storage(tmp) as st:
            sizes = ondisk.Sizes.default_for(st.sector_size)
            res = paxos.Resource(lockspace, resource, tmp, 0)
            # force: the file is ours and all zeros, nothing to protect (skips a read)
            paxos.init_resource(st, res, sizes, force=True, write_timeout=write_timeout)

    return create_exclusively(path, initialise)


def ensure_lockspace_file(lockspace: str, path: str, io_timeout: int) -> bool:
    """The lockspace file exists at ``path`` (``sanlock direct init -s LS:0:PATH:0``)."""
    from vmlease_agent.engine import delta, ondisk
    from vmlease_agent.engine.directio import Storage

    def initialise(tmp: str) -> None:
        with Storage(tmp) as st:
            sizes = ondisk.Sizes.default_for(st.sector_size)
            loc = delta.Location(lockspace, tmp, 0)
            delta.init_lockspace(st, loc, sizes, io_timeout, force=True)

    return create_exclusively(path, initialise)
