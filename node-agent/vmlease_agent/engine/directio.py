"""Sector-aligned, time-bounded direct I/O on lease storage (regular files, NFS, block devices).

Why O_DIRECT: several hosts share the storage; a page cache would serve us our own stale copy of a
sector another host has rewritten. Why O_SYNC: a write must be on stable storage before the
protocol step that follows it (a ballot phase, a renewal) is considered done.

Why a thread per I/O: a read from a dead NFS server or a suspended device can block in the kernel
for minutes and cannot be cancelled. The caller must get an answer within ``io_timeout`` (the
lockspace's N) so the renewal loop can count the failure and fencing can start on time. Each I/O
runs in a worker of a per-storage pool; the caller waits at most ``timeout`` seconds. A timed-out
I/O that has not started yet is cancelled; one already in the kernel is abandoned (exactly what
sanlock does with its AIO): its worker finishes whenever the kernel returns, its buffer is never
reused, and later I/O goes to other workers, so one stalled request never delays the next.
"""

from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import mmap
import os
import stat
import struct
import threading

from . import errors

BLKSSZGET = 0x1268  # logical sector size of a block device
BLKGETSIZE64 = 0x80081272


def _aligned_buffer(length: int) -> mmap.mmap:
    """Anonymous mmap: page-aligned, as O_DIRECT requires for buffers."""
    return mmap.mmap(-1, max(length, mmap.PAGESIZE))


class Storage:
    """One open lease storage path. Offsets are absolute byte offsets in the file or device."""

    #: Workers per storage: enough that a few abandoned (stalled) I/Os leave room for new ones.
    MAX_WORKERS = 16

    def __init__(self, path: str, *, writable: bool = True) -> None:
        self.path = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise errors.StorageUnusable(
                path=path,
                detail="no such file or device; create the lease file first "
                "(e.g. `truncate -s 1M PATH`) or check the path",
            ) from None
        self.is_block = stat.S_ISBLK(st.st_mode)
        if not (self.is_block or stat.S_ISREG(st.st_mode)):
            raise errors.StorageUnusable(path=path, detail="not a regular file or block device")
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_DIRECT | os.O_SYNC | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise errors.StorageUnusable(
                    path=path,
                    detail="this file system does not support O_DIRECT (tmpfs?); keep leases "
                    "on a local disk file system, NFS or a block device",
                ) from None
            raise errors.StorageUnusable(path=path, detail=os.strerror(e.errno)) from None
        self.sector_size = self._discover_sector_size()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.MAX_WORKERS, thread_name_prefix=f"io:{os.path.basename(path)}"
        )
        self._lock = threading.Lock()

    def _discover_sector_size(self) -> int:
        """Regular files are 512-byte storage (as sanlock treats them); devices report theirs."""
        if not self.is_block:
            return 512
        buf = fcntl.ioctl(self.fd, BLKSSZGET, b"\0\0\0\0")
        return struct.unpack("I", buf)[0]

    def size(self) -> int:
        if self.is_block:
            buf = fcntl.ioctl(self.fd, BLKGETSIZE64, b"\0" * 8)
            return struct.unpack("Q", buf)[0]
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                self._pool.shutdown(wait=False, cancel_futures=True)
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- I/O --------------------------------------------------------------------------------

    def _check_alignment(self, offset: int, length: int, op: str) -> None:
        if offset % 512 or length % 512 or length <= 0:
            raise errors.InvalidArgument(
                what=f"{op} at {self.path}:{offset} of {length} bytes",
                detail="direct I/O needs offsets and lengths in whole 512-byte sectors",
            )

    def _run(self, fn, op: str, offset: int, length: int, timeout: float):
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # succeeds only if it never started; a started one is abandoned
            raise errors.IoTimeout(
                op=op, length=length, path=self.path, offset=offset, timeout=timeout
            ) from None
        except OSError as e:
            raise errors.IoFailed(
                op=op, length=length, path=self.path, offset=offset, detail=os.strerror(e.errno)
            ) from None

    def read(self, offset: int, length: int, timeout: float) -> bytes:
        """Read ``length`` bytes at ``offset``; short reads (end of storage) return fewer bytes."""
        self._check_alignment(offset, length, "read")
        fd = self.fd

        def do() -> bytes:
            buf = _aligned_buffer(length)  # per I/O: an abandoned read keeps its own buffer
            n = os.preadv(fd, [buf], offset)
            return buf[:n] if n < length else buf[:length]

        return self._run(do, "read", offset, length, timeout)

    def write(self, offset: int, data: bytes, timeout: float) -> None:
        """Write whole sectors at ``offset``; the file grows if needed (never a block device)."""
        length = len(data)
        self._check_alignment(offset, length, "write")
        fd = self.fd

        def do() -> None:
            buf = _aligned_buffer(length)
            buf[:length] = data
            view = memoryview(buf)[:length]
            try:
                done = 0
                while done < length:
                    n = os.pwritev(fd, [view[done:]], offset + done)
                    if n <= 0:
                        raise OSError(errno.EIO, "short write")
                    done += n
            finally:
                view.release()

        self._run(do, "write", offset, length, timeout)
