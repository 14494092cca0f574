"""Agent CPU and memory while holding 1,000 leases in one lockspace (target: < 2% of a core,
< 100 MiB RSS).

One agent joins a lockspace (io_timeout N), one process acquires 1,000 resource leases through
it (sparse lease files, one lease area each), then the agent's CPU time (utime + stime from
/proc) and resident memory are sampled over a steady window of several renewal intervals.

    .venv/bin/python bench/agent_footprint.py [--leases 1000] [--seconds 30] [--io-timeout 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from vmlease_agent.engine import paxos
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import MiB, Sizes
from vmlease_agent.rpc.client import AgentClient

S512 = Sizes(512, MiB)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tool(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leases", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--io-timeout", type=int, default=10)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="vmlease-bench-", dir="/var/tmp")
    agent = holder = None
    try:
        ls, leases = os.path.join(work, "ls"), os.path.join(work, "leases")
        with open(ls, "wb") as f:
            f.truncate(1 << 20)
        with open(leases, "wb") as f:
            f.truncate(args.leases << 20)
        vm = tool("vmlease")
        subprocess.run(
            [vm, "direct", "init", "-s", f"B:0:{ls}:0", "-o", str(args.io_timeout)],
            check=True,
            capture_output=True,
        )
        t = time.monotonic()
        with Storage(leases) as st:
            for i in range(args.leases):
                paxos.init_resource(st, paxos.Resource("B", f"r{i}", leases, i << 20), S512)
        init_s = time.monotonic() - t
        run = os.path.join(work, "run")
        agent = subprocess.Popen(
            [
                tool("vmlease-agent"),
                "--run-dir",
                run,
                "--node-name",
                "bench",
                "--watchdog",
                "none",
                "--lockspace",
                f"B:1:{ls}:0:{args.io_timeout}",
                "--log-level",
                "WARNING",
            ],
            stderr=subprocess.DEVNULL,
        )
        client = AgentClient(run, timeout=600)
        deadline = time.monotonic() + 60 + 4 * args.io_timeout
        while time.monotonic() < deadline:
            try:
                if client.call("status")["lockspaces"][0]["state"] == "live":
                    break
            except Exception:
                pass
            time.sleep(0.2)
        holder = subprocess.Popen(["sleep", "3600"])
        t = time.monotonic()
        batch = 50
        for start in range(0, args.leases, batch):
            end = min(start + batch, args.leases)
            specs = [f"B:r{i}:{leases}:{i << 20}" for i in range(start, end)]
            client.call("acquire", pid=holder.pid, resources=specs, owner="bench")
        acquire_s = time.monotonic() - t
        held = len(client.call("status")["leases"])
        time.sleep(2)
        c0, w0 = cpu_seconds(agent.pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - w0 < args.seconds:
            time.sleep(1)
            peak = max(peak, rss_mib(agent.pid))
        cpu = (cpu_seconds(agent.pid) - c0) / (time.monotonic() - w0) * 100
        print(
            f"agent footprint, {held} leases held, io_timeout {args.io_timeout}s, "
            f"{args.seconds:.0f}s window"
        )
        print(f"{'metric':<28}{'vmlease':>12}{'target':>12}")
        print(f"{'CPU (% of one core)':<28}{cpu:>12.2f}{'< 2':>12}")
        print(f"{'RSS (MiB, peak)':<28}{peak:>12.1f}{'< 100':>12}")
        print(f"{'acquire 1,000 leases (s)':<28}{acquire_s:>12.1f}")
        print(f"{'init 1,000 leases (s)':<28}{init_s:>12.1f}")
        return 0 if held == args.leases and cpu < 2 and peak < 100 else 1
    finally:
        for proc in (holder, agent):
            if proc is not None:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
