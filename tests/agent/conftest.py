"""The ``cluster`` fixture: a lockspace and one disk lease, nodes added by each test."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .cluster import LS, Cluster, N


@pytest.fixture
def cluster(tmp_path_factory) -> Cluster:
    work = str(tmp_path_factory.mktemp("agent", numbered=True))  # a disk file system: O_DIRECT
    ls_path = os.path.join(work, "lockspace")
    lease = os.path.join(work, "vm1.lease")
    for p in (ls_path, lease):
        with open(p, "wb") as f:
            f.truncate(1 << 20)
    vm = os.path.join(os.path.dirname(sys.executable), "vmlease")
    subprocess.run(
        [vm, "direct", "init", "-s", f"{LS}:0:{ls_path}:0", "-o", str(N)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [vm, "direct", "init", "-r", f"{LS}:vm1:{lease}:0"], check=True, capture_output=True
    )
    c = Cluster(work, ls_path, f"{LS}:vm1:{lease}:0", [])
    yield c
    for n in c.nodes:
        n.stop()
