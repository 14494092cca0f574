"""Shared helpers and fixtures of the lease-engine tests (unit, interop, torture).

Lease files live under /var/tmp: the engine opens them with O_DIRECT, which tmpfs may refuse.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from vmlease_agent.engine import delta, errors, ondisk, paxos
from vmlease_agent.engine.clock import FakeClock
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import Sizes

MiB = ondisk.MiB
S512 = Sizes(512, MiB)
LEASE_ROOT = "/var/tmp"


@pytest.fixture
def lease_dir() -> Iterator[str]:
    """A fresh directory on a file system that supports O_DIRECT."""
    path = tempfile.mkdtemp(prefix="vmlease-test-", dir=LEASE_ROOT)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_file(directory: str, name: str, size: int = MiB) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def digest(path: str) -> str:
    """A fingerprint of a file's bytes, to assert that a refused operation wrote nothing."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_bytes(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def write_bytes(path: str, offset: int, data: bytes) -> None:
    """Write behind the engine's back (simulating another host or corruption)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def assert_refused(
    path: str, exc_type: type[errors.LeaseError], fn: Callable[[], object]
) -> errors.LeaseError:
    """``fn`` raises ``exc_type`` and the file's bytes are unchanged; returns the error."""
    before = digest(path)
    with pytest.raises(exc_type) as info:
        fn()
    assert digest(path) == before, f"{exc_type.__name__} was raised but the file was modified"
    return info.value


class CountingStorage(Storage):
    """A Storage that records every I/O (op, offset, length, timeout) and can run hooks."""

    def __init__(self, path: str, **kw) -> None:
        super().__init__(path, **kw)
        self.ops: list[tuple[str, int, int, float]] = []
        self.before_write: list[Callable[[int, bytes], None]] = []
        self.after_write: list[Callable[[int, bytes], None]] = []

    def read(self, offset: int, length: int, timeout: float) -> bytes:
        self.ops.append(("read", offset, length, timeout))
        return super().read(offset, length, timeout)

    def write(self, offset: int, data: bytes, timeout: float) -> None:
        self.ops.append(("write", offset, len(data), timeout))
        for hook in list(self.before_write):
            hook(offset, data)
        super().write(offset, data, timeout)
        for hook in list(self.after_write):
            hook(offset, data)


@dataclass
class Lockspace:
    """A lockspace file with its storage, location and sizes."""

    path: str
    st: Storage
    loc: delta.Location
    sizes: Sizes
    io_timeout: int

    def lease(self, host_id: int, clock: FakeClock, name: str | None = None, **kw):
        return delta.DeltaLease(
            self.st,
            self.loc,
            self.sizes,
            host_id,
            name or f"host{host_id}",
            self.io_timeout,
            clock=clock,
            **kw,
        )

    def record(self, host_id: int) -> ondisk.Leader:
        off = self.loc.offset + (host_id - 1) * self.sizes.sector_size
        return ondisk.Leader.unpack(read_bytes(self.path, off, ondisk.LEADER_SIZE))

    def view(self, table: delta.HostStatusTable | None = None) -> paxos.OwnerView:
        return paxos.OwnerView(self.st, self.loc, self.sizes, self.io_timeout, table)


def make_lockspace(
    directory: str,
    name: str = "LS",
    io_timeout: int = 1,
    sizes: Sizes = S512,
    filename: str = "lockspace",
    storage_cls: type[Storage] = Storage,
) -> Lockspace:
    path = make_file(directory, filename, sizes.align_size)
    st = storage_cls(path)
    loc = delta.Location(name, path, 0)
    delta.init_lockspace(st, loc, sizes, io_timeout)
    return Lockspace(path, st, loc, sizes, io_timeout)


@dataclass
class Host:
    """A simulated host: its delta lease in the lockspace and an Acquirer for one resource."""

    host_id: int
    lease: delta.DeltaLease
    acq: paxos.Acquirer
    tokens: list[paxos.Token] = field(default_factory=list)

    @property
    def generation(self) -> int:
        return self.lease.generation


def join(
    ls: Lockspace,
    host_id: int,
    clock: FakeClock,
    res_st: Storage,
    res: paxos.Resource,
    table: delta.HostStatusTable | None = None,
    **lease_kw,
) -> Host:
    """Acquire host_id in the lockspace (on the fake clock) and make its Acquirer for ``res``."""
    lease = ls.lease(host_id, clock, **lease_kw)
    lease.acquire()
    acq = paxos.Acquirer(
        res_st, res, host_id, lease.generation, ls.io_timeout, ls.view(table), clock=clock
    )
    return Host(host_id, lease, acq)


def make_resource(
    directory: str,
    lockspace: str = "LS",
    name: str = "RES",
    sizes: Sizes = S512,
    filename: str = "resource",
    num_hosts: int = 0,
    storage_cls: type[Storage] = Storage,
) -> tuple[Storage, paxos.Resource]:
    path = make_file(directory, filename, sizes.align_size)
    st = storage_cls(path)
    res = paxos.Resource(lockspace, name, path, 0)
    paxos.init_resource(st, res, sizes, num_hosts=num_hosts)
    return st, res


def dblock_of(path: str, host_id: int, sector_size: int = 512, offset: int = 0) -> ondisk.Dblock:
    off = offset + ondisk.dblock_sector_index(host_id) * sector_size
    return ondisk.Dblock.unpack(read_bytes(path, off, ondisk.DBLOCK_SIZE))


def mode_block_of(
    path: str, host_id: int, sector_size: int = 512, offset: int = 0
) -> ondisk.ModeBlock:
    off = offset + ondisk.dblock_sector_index(host_id) * sector_size + ondisk.MBLOCK_OFFSET
    return ondisk.ModeBlock.unpack(read_bytes(path, off, 16))


def leader_of(path: str, offset: int = 0) -> ondisk.Leader:
    return ondisk.Leader.unpack(read_bytes(path, offset, ondisk.LEADER_SIZE))


@pytest.fixture
def loop_device_4k(lease_dir: str) -> Iterator[str]:
    """A real block device with 4096-byte logical sectors (a loop device), 16 MiB."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup for a 4K-sector loop device")
    backing = make_file(lease_dir, "loop4k.img", 16 * MiB)
    proc = subprocess.run(
        ["losetup", "--find", "--show", "--sector-size", "4096", backing],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot create a loop device here: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], capture_output=True)
