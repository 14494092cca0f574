"""Simulated nodes for the agent tests: real agents, file watchdogs and holder processes.

Timings: io_timeout N = 1 s and watchdog fire timeout W = 4 s keep each failover near
8N + W = 12 s while exercising exactly the production code paths.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

from vmlease_agent.sim.node import SimNode
from waiting import wait_for  # noqa: F401 (the tests import it from here)

N = 1
W = 4
LS = "agentls"

#: A "VM": appends the agent's clock (CLOCK_BOOTTIME) to a file every 50 ms while it runs. Two
#: holders' intervals overlapping would be two writers at once.
WRITER = (
    "import sys, time\n"
    "f = open(sys.argv[1], 'a', buffering=1)\n"
    "while True:\n"
    "    f.write(f'{time.clock_gettime(time.CLOCK_BOOTTIME)}\\n')\n"
    "    time.sleep(0.05)\n"
)


@dataclass
class Cluster:
    work: str
    ls_path: str
    resource: str
    nodes: list[SimNode]

    def node(self, i: int, ls_path: str | None = None, **kw) -> SimNode:
        """Start node ``i`` (host_id i); ``ls_path``: its own path to the lockspace file."""
        name = f"node-{chr(ord('a') + i - 1)}"
        n = SimNode(
            name,
            self.work,
            lockspaces=[f"{LS}:{i}:{ls_path or self.ls_path}:0:{N}"],
            **{"io_timeout": N, "fire_timeout": W, **kw},
        )
        self.nodes.append(n)
        n.start()
        n.wait_joined(LS)
        return n

    def writer(self, node: SimNode, log: str) -> subprocess.Popen:
        return node.spawn_holder([self.resource], [sys.executable, "-c", WRITER, log], owner="vm1")

    def take(self, node: SimNode, log: str, timeout: float) -> subprocess.Popen:
        """Start the writer on ``node`` again and again (as an operator would) until it runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.writer(node, log)
            while proc.poll() is None and intervals(log) is None:
                time.sleep(0.05)
            if proc.poll() is None:
                return proc
            time.sleep(0.5)
        raise AssertionError(f"{node.name} could not take the lease within {timeout}s")


def intervals(path: str) -> tuple[float, float] | None:
    try:
        with open(path) as f:
            stamps = [float(x) for x in f if x.strip()]
    except FileNotFoundError:
        return None
    return (stamps[0], stamps[-1]) if stamps else None
