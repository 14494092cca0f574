"""One simulated host of the mutual-exclusion torture test (unit/engine/test_mutual_exclusion.py).

Usage: python torture_worker.py LEASE_FILE SHARED_FILE HOST_ID RESOURCES SECONDS SEED

The host joins the lockspace at offset 0 of LEASE_FILE with its own host_id and renews its delta
lease every 2N in a thread (feeding a host-status table, as the agent does). Until SECONDS have
passed it acquires random resources (``R0`` at 1 MiB, ``R1`` at 2 MiB, ...) exclusively, and while
it holds one it checks and records its ownership in SHARED_FILE, an mmap'd region shared by all
hosts. Most attempts use OWNER_NOWAIT (-247 instead of waiting for an owner the monitor did
not see renew at its latest scan), so more ballots run in the time. Per resource the region
holds three u64: the current holder (0 = none), the highest lease version ever held, and the
number of acquisitions. A holder that finds the slot taken, finds a
version not newer than one already held, or loses the slot while holding, counts an overlap.
It prints one JSON line with its counts.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import struct
import sys
import threading
import time

from vmlease_agent.engine import delta, errors, ondisk, paxos, timeouts
from vmlease_agent.engine.clock import Clock
from vmlease_agent.engine.directio import Storage

N = 1
SLOT = struct.Struct("<QQQ")


def main() -> None:
    lease_file, shared_file, host, count, seconds, seed = sys.argv[1:]
    host_id, n_res, seconds = int(host), int(count), float(seconds)
    rng = random.Random(int(seed))
    sizes = ondisk.Sizes(512, ondisk.MiB)
    st = Storage(lease_file)
    loc = delta.Location("TORTURE", lease_file, 0)
    clock = Clock()
    lease = delta.DeltaLease(st, loc, sizes, host_id, f"torture-{host_id}", N, clock=clock)
    lease.acquire()
    table = delta.HostStatusTable(loc, sizes, N)
    stop = threading.Event()
    renew_errors: list[str] = []

    def renew() -> None:
        last = clock.now()
        while not stop.wait(0.05):
            if clock.now() - last >= timeouts.id_renewal_seconds(N):
                try:
                    _, area = lease.renew()
                    table.update(area, clock.now(), host_id)
                    last = clock.now()
                except errors.LeaseError as e:
                    renew_errors.append(str(e))

    threading.Thread(target=renew, daemon=True).start()
    fd = os.open(shared_file, os.O_RDWR)
    shared = mmap.mmap(fd, SLOT.size * n_res)
    view = paxos.OwnerView(st, loc, sizes, N, table)
    acquirers = [
        paxos.Acquirer(
            st,
            paxos.Resource("TORTURE", f"R{r}", lease_file, (r + 1) * ondisk.MiB),
            host_id,
            lease.generation,
            N,
            view,
        )
        for r in range(n_res)
    ]
    counts = {"host_id": host_id, "acquired": 0, "overlaps": 0, "refused": {}, "errors": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = rng.randrange(n_res)
        try:
            # mostly OWNER_NOWAIT (as lvmlockd): a silent-looking owner is not waited for
            token = acquirers[r].acquire(nowait=rng.random() < 0.75)
        except errors.LeaseError as e:
            name = type(e).__name__
            counts["refused"][name] = counts["refused"].get(name, 0) + 1
            if not isinstance(
                e,
                errors.AcquireIdLive
                | errors.AcquireOwned
                | errors.AcquireOther
                | errors.AcquireOwnedRetry,
            ):
                counts["errors"].append(str(e))
            time.sleep(rng.random() * 0.003)
            continue
        off = r * SLOT.size
        holder, max_lver, n = SLOT.unpack_from(shared, off)
        if holder != 0 or token.lver <= max_lver:
            counts["overlaps"] += 1
        SLOT.pack_into(shared, off, host_id, max(max_lver, token.lver), n + 1)
        counts["acquired"] += 1
        time.sleep(rng.random() * 0.004)  # hold it a little
        if SLOT.unpack_from(shared, off)[0] != host_id:
            counts["overlaps"] += 1
        holder, max_lver, n = SLOT.unpack_from(shared, off)
        SLOT.pack_into(shared, off, 0, max_lver, n)
        acquirers[r].release(token)
        time.sleep(rng.random() * 0.002)
    stop.set()
    lease.release()
    counts["renew_errors"] = renew_errors
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
