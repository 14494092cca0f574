"""The ``stallfs`` fixture: a file whose I/O the test can stall in the kernel (see stallfs.py)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from stallfs import StallFs


def stallfs_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "mounting the FUSE stall file system needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: the FUSE stall file system cannot be mounted"
    with open("/proc/filesystems") as f:
        if "fuse" not in f.read().split():
            return "the kernel has no FUSE file system"
    return None


@pytest.fixture
def stallfs() -> Iterator[StallFs]:
    """A mounted one-file FUSE file system (8 MiB file at ``.path``) whose I/O can be stalled."""
    reason = stallfs_skip_reason()
    if reason:
        pytest.skip(reason)
    mnt = tempfile.mkdtemp(prefix="vmlease-stallfs-")
    fs = StallFs(mnt, 8 * 1024 * 1024)
    try:
        yield fs
    finally:
        fs.close()
        assert not fs.mounted(), f"stallfs still mounted on {mnt}"
        os.rmdir(mnt)
