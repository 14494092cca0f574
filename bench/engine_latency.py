"""Resource-lease acquire and release latency: our engine beside the real sanlock 3.8.5 daemon.

Both sides run on the same file system (/var/tmp), in one lockspace (io_timeout N), each with a
joined host that renews its delta lease in the background, each on its own resource (a fresh
1 MiB area, 512-byte sectors, 2000 hosts: sanlock's defaults). Ours: the engine called directly
(``paxos.Acquirer`` with the host-status table of the joined host, as the agent does). sanlock:
``sanlock.acquire``/``sanlock.release`` for a registered process through python-sanlock (the
latency a libvirt or VDSM client sees), timed inside the calling process.

    .venv/bin/python bench/engine_latency.py [--count 300] [--io-timeout 2] [--json]

Target (issue 2): our acquire p50 no slower than sanlock's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

from sanlockd import SanlockDaemon, sanlock_skip_reason
from vmlease_agent.engine import delta, paxos, timeouts
from vmlease_agent.engine.clock import Clock
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import MiB, Sizes

SIZES = Sizes(512, MiB)


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(values: list[float]) -> dict:
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "mean_ms": statistics.fmean(values) * 1000,
        "n": len(values),
    }


def init(args: list[str]) -> None:
    subprocess.run(["sanlock", "direct", "init", *args], check=True, capture_output=True)


class OurHost:
    """Host 2 joined to the lockspace, renewing every 2N and feeding its host-status table."""

    def __init__(self, ls_path: str, n: int) -> None:
        self.st = Storage(ls_path)
        self.loc = delta.Location("BENCH", ls_path, 0)
        self.n = n
        self.clock = Clock()
        self.lease = delta.DeltaLease(self.st, self.loc, SIZES, 2, "bench-host-2", n)
        self.table = delta.HostStatusTable(self.loc, SIZES, n)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True)

    def join(self) -> None:
        self.lease.acquire()
        self.thread.start()

    def _renew(self) -> None:
        last = self.clock.now()
        while not self.stop.wait(0.2):
            if self.clock.now() - last >= timeouts.id_renewal_seconds(self.n):
                _, area = self.lease.renew()
                self.table.update(area, self.clock.now(), 2)
                last = self.clock.now()

    def leave(self) -> None:
        self.stop.set()
        self.thread.join()
        self.lease.release()
        self.st.close()

    def measure(self, res_path: str, count: int, warmup: int) -> dict:
        res = paxos.Resource("BENCH", "OURS", res_path, 0)
        view = paxos.OwnerView(self.st, self.loc, SIZES, self.n, self.table)
        acq_t, rel_t = [], []
        with Storage(res_path) as st:
            acq = paxos.Acquirer(st, res, 2, self.lease.generation, self.n, view)
            for i in range(warmup + count):
                t0 = time.perf_counter()
                token = acq.acquire()
                t1 = time.perf_counter()
                acq.release(token)
                t2 = time.perf_counter()
                if i >= warmup:
                    acq_t.append(t1 - t0)
                    rel_t.append(t2 - t1)
        return {"acquire": summary(acq_t), "release": summary(rel_t)}


def run(count: int, n: int, warmup: int = 20) -> dict:
    work = tempfile.mkdtemp(prefix="vmlease-bench-", dir="/var/tmp")
    daemon = client = ours = None
    try:
        ls_path = os.path.join(work, "lockspace")
        res_ours, res_theirs = os.path.join(work, "res-ours"), os.path.join(work, "res-sanlock")
        for p in (ls_path, res_ours, res_theirs):
            with open(p, "wb") as f:
                f.truncate(MiB)
        init(["-s", f"BENCH:0:{ls_path}:0", "-o", str(n)])
        init(["-r", f"BENCH:OURS:{res_ours}:0"])
        init(["-r", f"BENCH:THEIRS:{res_theirs}:0"])
        daemon = SanlockDaemon()
        client = daemon.client()
        ours = OurHost(ls_path, n)
        joining = threading.Thread(target=ours.join)
        joining.start()
        client.call("add_lockspace", lockspace="BENCH", host_id=1, path=ls_path, io_timeout=n)
        joining.join()
        client.call("register")
        theirs = client.call(
            "bench", lockspace="BENCH", resource="THEIRS", path=res_theirs, count=warmup
        )
        theirs = client.call(
            "bench", lockspace="BENCH", resource="THEIRS", path=res_theirs, count=count
        )
        mine = ours.measure(res_ours, count, warmup)
        return {
            "vmlease": mine,
            "sanlock": {
                "acquire": summary(theirs["acquire"]),
                "release": summary(theirs["release"]),
            },
            "count": count,
            "io_timeout": n,
            "fs": "/var/tmp",
        }
    finally:
        if ours is not None and ours.thread.is_alive():
            ours.leave()
        if client is not None:
            client.close()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(result: dict) -> str:
    lines = [
        f"Resource lease latency, {result['count']} acquire+release cycles each, "
        f"io_timeout {result['io_timeout']}, files on {result['fs']}",
        f"{'operation':<10} {'vmlease p50':>12} {'sanlock p50':>12} {'ratio':>6}   "
        f"{'vmlease p99':>12} {'sanlock p99':>12} {'ratio':>6}",
    ]
    for op in ("acquire", "release"):
        a, b = result["vmlease"][op], result["sanlock"][op]
        r50, r99 = a["p50_ms"] / b["p50_ms"], a["p99_ms"] / b["p99_ms"]
        lines.append(
            f"{op:<10} {a['p50_ms']:>9.2f} ms {b['p50_ms']:>9.2f} ms {r50:>6.2f}"
            f"   {a['p99_ms']:>9.2f} ms {b['p99_ms']:>9.2f} ms {r99:>6.2f}"
        )
    verdict = result["vmlease"]["acquire"]["p50_ms"] <= result["sanlock"]["acquire"]["p50_ms"]
    lines.append(
        "target (acquire p50 no slower than sanlock's): " + ("met" if verdict else "NOT met")
    )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=300)
    p.add_argument(
        "--io-timeout", type=int, default=2, help="N; a free acquire does not wait on it"
    )
    p.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = p.parse_args()
    reason = sanlock_skip_reason()
    if reason:
        print(f"engine_latency: skipped: {reason}")
        return 0
    result = run(args.count, args.io_timeout)
    print(table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
