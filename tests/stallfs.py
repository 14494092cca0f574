"""A one-file FUSE file system whose I/O can be stalled on command: the stall fixture of the tests.

Why FUSE: the engine promises that a read or write stuck in the kernel (a dead NFS server, a
suspended multipath device) is reported as a timeout within io_timeout. To test that honestly the
I/O must really be stuck in the kernel. device-mapper (``dmsetup suspend``) would be the classic
way, but this sandbox has no device-mapper driver; FUSE is available (/dev/fuse, root may mount).
A FUSE request that the server does not answer blocks the calling thread inside pread/pwrite
exactly like a hung NFS server does.

This is a minimal server speaking the kernel's FUSE protocol on /dev/fuse directly (no libfuse):
a root directory with one regular file, ``disk``, backed by memory — or passing through to a real
file (``--backing FILE``), so one simulated host reaches shared storage through a path that can
stall or fail while the others use the file directly — opened with FOPEN_DIRECT_IO so every
O_DIRECT read and write reaches the server. Commands on stdin, one per line:

``stall``   read READ/WRITE requests but leave them unanswered. The caller sleeps uninterruptibly
            (state D), like I/O to a suspended block device: not even SIGKILL ends it.
``stall1``  like ``stall`` for the next READ/WRITE request only; later ones are answered.
``freeze``  stop reading requests at all. They stay queued in the kernel and the caller sleeps
            killably, like I/O to an NFS server that stopped answering (hard mount).
``fail``    answer READ/WRITE requests with EIO, like a path whose storage reports errors.
``resume``  answer every held request, read queued ones again, stop failing.

Each command is acknowledged with ``ok CMD``. The server prints ``ready`` once mounted, ``held N``
each time it holds a request (N held now), and ``queued`` when a request waits in the kernel while
frozen, so a test knows the I/O really is stuck in the kernel. It exits when unmounted or when
stdin closes (closing /dev/fuse then fails every held request with ENOTCONN).

Run as ``python stallfs.py MOUNTPOINT SIZE`` or ``python stallfs.py MOUNTPOINT --backing FILE``;
tests use the ``StallFs`` class below.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import subprocess
import sys
import time

# ---- the kernel protocol (include/uapi/linux/fuse.h) -------------------------------------

LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC = 14, 15, 16, 17, 18, 20
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 25, 26, 27, 28, 29
INTERRUPT, DESTROY, BATCH_FORGET = 36, 38, 42
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr, 88 bytes
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags pad
WRITE_IN = struct.Struct("<QQIIQII")
FOPEN_DIRECT_IO = 1
ROOT, DISK = 1, 2
MAX_WRITE = 128 * 1024


class FileStore:
    """The bytes of ``disk`` in a real file. O_SYNC, no O_DIRECT: the kernel keeps our page cache
    coherent with other processes' O_DIRECT I/O on a local file system (their direct reads
    flush our dirty pages, their direct writes invalidate them)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_SYNC | os.O_CLOEXEC)

    def __len__(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    def write(self, off: int, data: bytes) -> int:
        return os.pwrite(self.fd, data, off) if off < len(self) else 0


class MemoryStore(bytearray):
    def read(self, off: int, size: int) -> bytes:
        return bytes(self[off : off + size])

    def write(self, off: int, data: bytes) -> int:
        end = min(off + len(data), len(self))
        if off < end:
            self[off:end] = data[: end - off]
        return max(0, end - off)


class Server:
    def __init__(self, mountpoint: str, store: FileStore | MemoryStore) -> None:
        self.mountpoint = mountpoint
        self.data = store
        self.failing = False
        self.stalled = False
        self.stall_one = False
        self.held: list[tuple[int, int, bytes]] = []
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if libc.mount(b"vmlease-stallfs", mountpoint.encode(), b"fuse", 0, opts) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mount fuse on {mountpoint}: {os.strerror(e)}")

    def attr(self, node: int) -> bytes:
        now = int(time.time())
        if node == ROOT:
            return ATTR.pack(ROOT, 0, 0, now, now, now, 0, 0, 0, 0o40755, 2, 0, 0, 0, 4096, 0)
        size = len(self.data)
        return ATTR.pack(
            DISK, size, size // 512, now, now, now, 0, 0, 0, 0o100644, 1, 0, 0, 0, 4096, 0
        )

    def reply(self, unique: int, error: int = 0, body: bytes = b"") -> None:
        msg = OUT_HEADER.pack(OUT_HEADER.size + len(body), -error, unique) + body
        try:
            os.write(self.fd, msg)
        except OSError as e:  # the request was interrupted or the connection is gone
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def io(self, opcode: int, unique: int, payload: bytes) -> None:
        if opcode == READ:
            _fh, off, size, *_ = READ_IN.unpack_from(payload)
            self.reply(unique, 0, self.data.read(off, size))
        else:
            _fh, off, size, *_ = WRITE_IN.unpack_from(payload)
            written = self.data.write(off, payload[WRITE_IN.size : WRITE_IN.size + size])
            self.reply(unique, 0, struct.pack("<II", written, 0))

    def handle(self, opcode: int, unique: int, node: int, payload: bytes) -> bool:
        if opcode in NO_REPLY:
            return True
        if opcode == INIT:
            _major, minor, readahead, _flags = struct.unpack_from("<IIII", payload)
            body = struct.pack("<IIIIHHIIHHII", 7, min(minor, 31), readahead, 0, 16, 12,
                               MAX_WRITE, 1, 0, 0, 0, 0) + bytes(24)  # fmt: skip
            self.reply(unique, 0, body)
        elif opcode == LOOKUP:
            name = payload.split(b"\0", 1)[0]
            if node == ROOT and name == b"disk":
                self.reply(unique, 0, struct.pack("<QQQQII", DISK, 0, 0, 0, 0, 0) + self.attr(DISK))
            else:
                self.reply(unique, errno.ENOENT)
        elif opcode == GETATTR:
            self.reply(unique, 0, struct.pack("<QII", 0, 0, 0) + self.attr(node))
        elif opcode == OPEN:
            self.reply(unique, 0, struct.pack("<QIi", 0, FOPEN_DIRECT_IO, 0))
        elif opcode in (READ, WRITE):
            if self.stalled or self.stall_one:
                self.stall_one = False
                self.held.append((opcode, unique, payload))
                print(f"held {len(self.held)}", flush=True)
                return True
            if self.failing:
                self.reply(unique, errno.EIO)
                return True
            self.io(opcode, unique, payload)
        elif opcode in (RELEASE, FSYNC, RELEASEDIR):
            self.reply(unique)
        elif opcode == DESTROY:
            self.reply(unique)
            return False
        else:  # FLUSH too: ENOSYS tells the kernel never to flush on close (see StallFs)
            self.reply(unique, errno.ENOSYS)
        return True

    def command(self, cmd: str) -> None:
        if cmd == "stall":
            self.stalled = True
        elif cmd == "stall1":
            self.stall_one = True
        elif cmd == "freeze":
            self.frozen = True
            self.queued_reported = False
        elif cmd == "fail":
            self.failing = True
        elif cmd == "resume":
            self.stalled = self.frozen = self.failing = False
            held, self.held = self.held, []
            for opcode, unique, payload in held:
                self.io(opcode, unique, payload)
        print(f"ok {cmd}", flush=True)

    def serve(self) -> None:
        """One thread: poll stdin (commands) and /dev/fuse (requests, unless frozen)."""
        self.frozen = False
        self.queued_reported = False
        stdin = sys.stdin.fileno()
        pending = b""
        print("ready", flush=True)
        while True:
            poller = select.poll()
            poller.register(stdin, select.POLLIN)
            if not (self.frozen and self.queued_reported):
                poller.register(self.fd, select.POLLIN)
            events = dict(poller.poll())
            if stdin in events:
                chunk = os.read(stdin, 4096)
                if not chunk:
                    os._exit(0)  # the test is gone; closing /dev/fuse fails held requests
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self.command(line.decode().strip())
                continue
            if self.fd not in events:
                continue
            if events[self.fd] & (select.POLLERR | select.POLLHUP):
                return  # unmounted
            if self.frozen:
                print("queued", flush=True)
                self.queued_reported = True
                continue
            try:
                msg = os.read(self.fd, MAX_WRITE + 4096)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                if e.errno == errno.ENODEV:  # unmounted
                    return
                raise
            length, opcode, unique, node, *_ = IN_HEADER.unpack_from(msg)
            if not self.handle(opcode, unique, node, msg[IN_HEADER.size : length]):
                return


class StallFs:
    """Test-side handle: mounts the server in a child process; ``path`` is the stallable file."""

    def __init__(self, mountpoint: str, size: int = 0, backing: str | None = None) -> None:
        self.mountpoint = mountpoint
        self.path = os.path.join(mountpoint, "disk")
        os.makedirs(mountpoint, exist_ok=True)
        source = ["--backing", backing] if backing else [str(size)]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, mountpoint, *source],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._expect("ready")
        self.held = 0
        # One open/close now: its FLUSH gets ENOSYS, after which the kernel never sends FLUSH on
        # close again. Otherwise a process exiting with the file open would wait for a frozen
        # server at close(), hiding whether its stuck I/O itself let it exit.
        os.close(os.open(self.path, os.O_RDONLY))

    def _expect(self, word: str) -> str:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"stallfs exited (rc {self.proc.poll()}) before {word!r}")
            if line.startswith("held "):
                self.held = int(line.split()[1])
            if line.startswith(word):
                return line.strip()

    def _send(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        self._expect(f"ok {cmd}")

    def stall(self) -> None:
        self._send("stall")

    def resume(self) -> None:
        self._send("resume")
        self.held = 0

    def stall_next(self) -> None:
        self._send("stall1")

    def fail(self) -> None:
        self._send("fail")

    def freeze(self) -> None:
        self._send("freeze")

    def wait_held(self, count: int) -> None:
        """Block until ``count`` requests are held by the server (stuck in the kernel, state D)."""
        while self.held < count:
            self._expect("held ")

    def wait_queued(self) -> None:
        """Block until a request waits in the kernel for the frozen server."""
        self._expect("queued")

    def close(self) -> None:
        """Answer held requests, unmount, stop the server; never leaves a mount behind."""
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, RuntimeError):
                self._send("resume")
        unmounted = subprocess.run(["umount", self.mountpoint], capture_output=True).returncode
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if unmounted != 0 or self.mounted():  # busy: detach it (the server is gone)
            subprocess.run(["umount", "-l", self.mountpoint], capture_output=True)
        self.proc.stdout.close()

    def mounted(self) -> bool:
        """From /proc/self/mounts: os.path.ismount fails on a FUSE mount whose server is gone."""
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == self.mountpoint for line in f)


if __name__ == "__main__":
    if sys.argv[2] == "--backing":
        Server(sys.argv[1], FileStore(sys.argv[3])).serve()
    else:
        Server(sys.argv[1], MemoryStore(int(sys.argv[2]))).serve()
