"""Mutual-exclusion torture test: several processes, each a host with its own host_id and a delta
lease renewed in the background, contend for a few resources on one file for a bounded time.
Every holder checks and records exclusive ownership in a shared mmap'd region (see
tests/torture_worker.py). The invariant: no overlap, ever, across thousands of acquisitions."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from leasekit import MiB, make_file
from vmlease_agent.engine import delta, ondisk, paxos
from vmlease_agent.engine.directio import Storage

HOSTS = 4
RESOURCES = 3
SECONDS = float(os.environ.get("VMLEASE_TORTURE_SECONDS", "28"))
WORKER = str(Path(__file__).parents[2] / "torture_worker.py")


@pytest.mark.slow
def test_no_two_hosts_ever_hold_a_resource_at_once_safety(lease_dir):
    path = make_file(lease_dir, "leases", (RESOURCES + 1) * MiB)
    sizes = ondisk.Sizes(512, MiB)
    with Storage(path) as st:
        delta.init_lockspace(st, delta.Location("TORTURE", path, 0), sizes, 1)
        for r in range(RESOURCES):
            res = paxos.Resource("TORTURE", f"R{r}", path, (r + 1) * MiB)
            paxos.init_resource(st, res, sizes)
    shared = make_file(lease_dir, "shared", 4096)
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, path, shared, str(h), str(RESOURCES), str(SECONDS), str(h)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in range(1, HOSTS + 1)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=SECONDS + 60)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(r["acquired"] for r in results)
    refused: dict[str, int] = {}
    for r in results:
        for k, v in r["refused"].items():
            refused[k] = refused.get(k, 0) + v
    per_host = [r["acquired"] for r in results]
    print(f"\ntorture: {total} acquisitions by {HOSTS} hosts on {RESOURCES} resources in "
          f"{SECONDS:.0f}s, refused {refused}, per host {per_host}")  # fmt: skip
    assert sum(r["overlaps"] for r in results) == 0
    assert all(not r["errors"] and not r["renew_errors"] for r in results), results
    # every host got its share, and the total is large enough to mean something
    assert all(r["acquired"] > 50 for r in results), results
    assert total >= 1000
    # the leases' versions agree with the count of acquisitions recorded by the holders
    with open(shared, "rb") as f:
        data = f.read()
    with Storage(path) as st:
        for r in range(RESOURCES):
            _, max_lver, count = struct.unpack_from("<QQQ", data, r * 24)
            lr = paxos.read_leader(st, paxos.Resource("TORTURE", f"R{r}", path, (r + 1) * MiB), 1)
            assert lr.lver == max_lver == count
            # every lease was given back: the leader is free, or (sanlock's rule) it was committed
            # by another host than its owner, who then only marked its dblock RELEASED
            if lr.timestamp != 0:
                assert lr.write_id != lr.owner_id, lr
                owner_dblock = ondisk.Dblock.unpack(
                    st.read((r + 1) * MiB + (2 + lr.owner_id - 1) * 512, 512, 1)
                )
                assert owner_dblock.flags & ondisk.DBLOCK_FL_RELEASED, owner_dblock
                assert owner_dblock.lver == lr.lver, owner_dblock
