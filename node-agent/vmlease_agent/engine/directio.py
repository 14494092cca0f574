"""Sector-aligned, time-bounded direct I/O on lease storage (regular files, NFS, block devices).

Why O_DIRECT: several hosts share the storage; a page cache would serve us our own stale copy of a
sector another host has rewritten. Why O_SYNC: a write must be on stable storage before the
protocol step that follows it (a ballot phase, a renewal) is considered done.

Why a thread per I/O: a read from a dead NFS server or a suspended device can block in the kernel
for minutes and cannot be cancelled. The caller must get an answer within ``io_timeout`` (the
lockspace's N) so the renewal loop can count the failure and fencing can start on time. Each I/O
runs in a worker of a per-storage pool; the caller waits at most ``timeout`` seconds. A timed-out
I/O that has not started yet is cancelled; one already in the kernel is abandoned (exactly what
sanlock does with its AIO): its worker finishes whenever the kernel returns, its buffer is not
reused until then, and later I/O goes to other workers, so one stalled request never delays the
next.
Workers are daemon threads: a process that gave up on a stalled I/O can still exit (a pool that
joins its workers at exit would hang the CLI, or an agent's shutdown, until the kernel returns).

Why abandoned writes fence later writes (``WriteGuard``): an abandoned write is not a failed
write. It may still land long after we gave up (dm-multipath requeues a stuck request, an NFS
server answers after a failover), and if it lands over a newer write of ours to the same bytes,
our data goes back in time. For a dblock that breaks Disk Paxos: a retried ballot writes its
phase-2 value, the old phase-1 write lands over it, and a concurrent ballot by another host no
longer sees that value and commits itself for the same lver (two owners; sanlock has the same
hole). So while a write of this process that overlaps a byte range may still land, i.e. until its
system call has returned, every new write overlapping that range is refused (``WriteAbandoned``).
The guard is process-wide and keyed by the file's (st_dev, st_ino): one process may open the same
file through several Storage objects (one per lockspace or resource path).

Why the overlapping byte range and not the whole lease area: the safety argument needs exactly one
thing, that no *acceptor's dblock* regresses, and every dblock write covers exactly its own sector,
so a held dblock write fences that sector and nothing else. A regressing leader sector (our late
commit or release landing over a newer leader) is harmless to safety: every acquire runs a ballot
for lver + 1 and a ballot re-adopts the highest-bal value of that lver, or aborts on a dblock of a
newer lver, so a stale leader can only make a ballot adopt the real owner or fail (it may stall a
lease, a liveness cost a guard of ours cannot prevent: the late write is the one doing it). A delta
lease sector regressing to an older renewal of ours only makes us look alive longer. Fencing the
whole area would also need the layout, which this module does not know, and would stop a lease
release or a shared-block cleanup for no safety gain.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import stat
import struct
import threading

from . import errors
from .clock import REAL_CLOCK, Clock

BLKSSZGET = 0x1268  # logical sector size of a block device
BLKGETSIZE64 = 0x80081272


_local = threading.local()


def _buffer(length: int) -> memoryview:
    """The calling worker thread's page-aligned I/O buffer (an anonymous mmap, as O_DIRECT needs),
    grown when needed, as a view of ``length`` bytes.

    Reused from one I/O to the next: a worker runs one I/O at a time, and a worker whose I/O was
    abandoned keeps its buffer until the kernel returns, so the kernel never gets a buffer that
    another I/O is using. Reuse saves mapping and faulting in fresh pages for every I/O (about a
    millisecond per 1 MiB read).
    """
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < length:
        buf = _local.buf = mmap.mmap(-1, max(length, mmap.PAGESIZE))
    return memoryview(buf)[:length]


class _Job:
    __slots__ = ("done", "error", "fn", "result", "started")

    def __init__(self, fn) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.started = False
        self.result = None
        self.error: BaseException | None = None


class _IoWorkers:
    """Daemon threads running I/O jobs; each job gets an idle worker or a new one (up to max)."""

    def __init__(self, name: str, max_workers: int) -> None:
        self._name = name
        self._max = max_workers
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn) -> _Job:
        job = _Job(fn)
        with self._lock:
            if self._idle:
                self._idle -= 1  # reserved: that worker is (about to be) waiting for a job
            elif self._count < self._max:
                self._count += 1
                threading.Thread(
                    target=self._work, name=f"{self._name}-{self._count}", daemon=True
                ).start()
        self._jobs.put(job)
        return job

    def cancel(self, job: _Job) -> bool:
        """Cancel a job that has not started; False if it is already running (abandoned)."""
        with self._lock:
            if job.started:
                return False
            job.fn = None
            return True

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                fn, job.started = job.fn, True
            if fn is not None:
                try:
                    job.result = fn()
                except BaseException as e:
                    job.error = e
                job.done.set()
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Stop idle workers; a worker stuck in the kernel ends when its I/O returns."""
        with self._lock:
            count, self._count, self._idle = self._count, 0, 0
        for _ in range(count):
            self._jobs.put(None)


class _Write:
    """A write of this process whose system call has not returned yet."""

    __slots__ = ("abandoned_at", "end", "key", "start")

    def __init__(self, key: tuple[int, int], start: int, end: int) -> None:
        self.key = key
        self.start = start
        self.end = end
        self.abandoned_at: float | None = None


class WriteGuard:
    """The writes of one process in flight, per file; refuses writes over abandoned ones."""

    def __init__(self, clock: Clock = REAL_CLOCK) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._writes: dict[tuple[int, int], set[_Write]] = {}

    def begin(self, key: tuple[int, int], path: str, offset: int, length: int) -> _Write:
        """Register a write about to be submitted; refuse it over a write that may still land."""
        end = offset + length
        with self._lock:
            for w in self._writes.get(key, ()):
                if w.abandoned_at is not None and w.start < end and offset < w.end:
                    raise errors.WriteAbandoned(
                        path=path,
                        offset=offset,
                        length=length,
                        held_offset=w.start,
                        held_length=w.end - w.start,
                        ago=self.clock.now() - w.abandoned_at,
                    )
            write = _Write(key, offset, end)
            self._writes.setdefault(key, set()).add(write)
            return write

    def abandon(self, write: _Write) -> None:
        """The caller gave up waiting; the write stays registered until its syscall returns."""
        with self._lock:
            if write in self._writes.get(write.key, ()):
                write.abandoned_at = self.clock.now()

    def end(self, write: _Write) -> None:
        """The write's system call returned (or it was cancelled before it started)."""
        with self._lock:
            writes = self._writes.get(write.key)
            if writes is not None:
                writes.discard(write)
                if not writes:
                    del self._writes[write.key]


#: The guard of this process: every Storage on the same file shares its record of writes.
PROCESS_GUARD = WriteGuard()


class Storage:
    """One open lease storage path. Offsets are absolute byte offsets in the file or device."""

    #: Workers per storage: enough that a few abandoned (stalled) I/Os leave room for new ones.
    MAX_WORKERS = 16

    def __init__(
        self, path: str, *, writable: bool = True, guard: WriteGuard = PROCESS_GUARD
    ) -> None:
        self.path = path
        self.guard = guard
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise errors.StorageUnusable(
                path=path,
                detail="no such file or device; create the lease file first "
                "(e.g. `truncate -s 1M PATH`) or check the path",
            ) from None
        self.is_block = stat.S_ISBLK(st.st_mode)
        #: the file's identity for the write guard (a device node's inode names the device)
        self.key = (st.st_dev, st.st_ino)
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
            detail = os.strerror(e.errno or errno.EIO)
            raise errors.StorageUnusable(path=path, detail=detail) from None
        self.sector_size = self._discover_sector_size()
        self._pool = _IoWorkers(f"io:{os.path.basename(path)}", self.MAX_WORKERS)
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
                self._pool.shutdown()
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

    def _run(self, fn, op: str, offset: int, length: int, timeout: float, write=None):
        job = self._pool.submit(fn)
        if not job.done.wait(timeout):
            # cancelling succeeds only if it never started; a started one is abandoned
            if write is not None:
                if self._pool.cancel(job):
                    self.guard.end(write)
                else:
                    self.guard.abandon(write)
            else:
                self._pool.cancel(job)
            raise errors.IoTimeout(
                op=op, length=length, path=self.path, offset=offset, timeout=timeout
            )
        if isinstance(job.error, OSError):
            raise errors.IoFailed(
                op=op,
                length=length,
                path=self.path,
                offset=offset,
                detail=os.strerror(job.error.errno or errno.EIO),
            )
        if job.error is not None:
            raise job.error
        return job.result

    def read(self, offset: int, length: int, timeout: float) -> bytes:
        """Read ``length`` bytes at ``offset``; short reads (end of storage) return fewer bytes."""
        self._check_alignment(offset, length, "read")
        return self._run(lambda: self._pread(offset, length), "read", offset, length, timeout)

    def write(self, offset: int, data: bytes, timeout: float) -> None:
        """Write whole sectors at ``offset``; the file grows if needed (never a block device).

        Refused (``WriteAbandoned``) while an abandoned write of this process to overlapping
        bytes may still land (module docstring).
        """
        length = len(data)
        self._check_alignment(offset, length, "write")
        write = self.guard.begin(self.key, self.path, offset, length)

        def do() -> None:
            try:
                self._pwrite(offset, data)
            finally:
                self.guard.end(write)

        self._run(do, "write", offset, length, timeout, write)

    # ---- the system calls, run in a worker (a test double replaces these and the pool) --------

    def _pread(self, offset: int, length: int) -> bytes:
        view = _buffer(length)
        n = os.preadv(self.fd, [view], offset)
        return bytes(view[:n])

    def _pwrite(self, offset: int, data: bytes) -> None:
        length = len(data)
        view = _buffer(length)
        view[:] = data
        done = 0
        while done < length:
            n = os.pwritev(self.fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            done += n
