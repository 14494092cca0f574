"""``make demo``: three simulated nodes, one VM disk lease, a node killed, the lease moving safely.

Everything runs on this machine in a temporary directory (under /var/tmp, which supports
O_DIRECT): a lockspace with io_timeout N = 1 s, three agents with file-backed watchdogs of
W = 10 s, a "VM" (a process holding the disk lease) on node-a. Starting the same VM on node-b is
refused with the holder named. Then node-a loses power (SIGKILL of its whole process group) and
node-b waits exactly as long as safety requires — until node-a's last renewal is 8N + W = 18 s
old — before it takes the lease.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from vmlease_agent.engine import timeouts
from vmlease_agent.engine.errors import LeaseError
from vmlease_agent.sim.node import SimNode, script_path

N = 1  # io_timeout
W = 10  # watchdog fire timeout
LS = "demo"
RES = "vm1-disk"

BOLD, DIM, RED, GREEN, RESET = "\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[0m"
TTY = sys.stdout.isatty()


def say(text: str, style: str = BOLD) -> None:
    print(f"{style}{text}{RESET}" if TTY else text, flush=True)


def table(nodes: list[SimNode], t0: float) -> str:
    """Hosts as a surviving node sees them, and who holds which lease."""
    lines = [f"t={time.monotonic() - t0:5.1f}s  host                   state    renewed  leases"]
    view = None
    holders: dict[str, list[str]] = {}
    for node in nodes:
        try:
            st = node.client.call("status")
        except LeaseError:
            holders[node.name] = ["(node down)"]
            continue
        holders[node.name] = [
            f"{x['resource']} (pid {x['pid']}, {x['owner']})" for x in st["leases"]
        ]
        if view is None:
            with contextlib.suppress(LeaseError):
                view = node.client.call("host_status", lockspace=LS)
    for row in view or []:
        name = row["name"]
        leases = ", ".join(holders.get(name, [])) or "-"
        lines.append(
            f"         {row['host_id']:>2} {name:<19} {row['state']:<8} {row['renewed_ago']:>5.1f}s"
            f"  {leases}"
        )
    return "\n".join(lines)


def main() -> int:
    work = tempfile.mkdtemp(prefix="vmlease-demo-", dir="/var/tmp")
    nodes: list[SimNode] = []
    try:
        return run(work, nodes)
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)
        say(f"cleaned up {work}", DIM)


def run(work: str, nodes: list[SimNode]) -> int:
    ls_path, disk_lease = os.path.join(work, "lockspace"), os.path.join(work, "vm1.lease")
    vmlease = script_path("vmlease")
    for path in (ls_path, disk_lease):
        with open(path, "wb") as f:
            f.truncate(1024 * 1024)
    say(f"1. a lockspace and a disk lease on shared storage ({work}), io_timeout N={N}s")
    subprocess.run(
        [vmlease, "direct", "init", "-s", f"{LS}:0:{ls_path}:0", "-o", str(N)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [vmlease, "direct", "init", "-r", f"{LS}:{RES}:{disk_lease}:0"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    resource = f"{LS}:{RES}:{disk_lease}:0"

    say(f"2. three nodes join, each with a watchdog that resets it {W}s after its last feed")
    for i, name in enumerate(("node-a", "node-b", "node-c"), start=1):
        node = SimNode(
            name, work, io_timeout=N, fire_timeout=W, lockspaces=[f"{LS}:{i}:{ls_path}:0:{N}"]
        )
        nodes.append(node)
        node.start()
    for node in nodes:
        node.wait_joined(LS)
    t0 = time.monotonic()
    time.sleep(2 * N + 0.5)  # one renewal round, so every node has seen the others change
    print(table(nodes, t0))

    a, b = nodes[0], nodes[1]
    say("3. VM vm1 starts on node-a, holding its disk lease")
    vm = a.spawn_holder([resource], ["sleep", "3600"], owner="vm1")
    deadline = time.monotonic() + 10
    while not a.client.call("status")["leases"] and time.monotonic() < deadline:
        time.sleep(0.1)
    print(table(nodes, t0))

    say("4. someone starts vm1 on node-b too: refused, with the holder named")
    tried = b.spawn_holder([resource], ["sleep", "3600"], owner="vm1")
    _, err = tried.communicate(timeout=30)
    say("   " + err.strip().replace("\n", "\n   "), RED)

    say("5. node-a loses power (SIGKILL of its agent and of vm1)")
    killed_at = time.monotonic()
    a.kill()
    vm.wait()
    safe = timeouts.host_dead_seconds(N, W)
    say(f"   node-b now waits until node-a's last renewal is 8N+W = {safe}s old, never less:")
    got: dict = {}

    def take() -> None:
        """Start vm1 on node-b like an operator would: again and again until it runs."""
        give_up = time.monotonic() + safe + 30
        while time.monotonic() < give_up:
            proc = b.spawn_holder([resource], ["sleep", "3600"], owner="vm1")
            while proc.poll() is None and not b.client.call("status")["leases"]:
                time.sleep(0.1)
            if proc.poll() is None:
                got["proc"], got["at"] = proc, time.monotonic()
                return
            assert proc.stderr is not None  # started with stderr=PIPE
            got["error"] = proc.stderr.read().strip()
            time.sleep(1.0)

    taker = threading.Thread(target=take, daemon=True)
    taker.start()
    while taker.is_alive():
        print(table(nodes, t0), flush=True)
        taker.join(timeout=2.0)
    if "at" not in got or got["proc"].poll() is not None:
        say(f"   the lease did not move: {got.get('error', 'see the node logs')}", RED)
        return 1
    print(table(nodes, t0))
    say(
        f"6. vm1 runs on node-b: the lease moved {got['at'] - killed_at:.1f}s after node-a died "
        f"(safe bound {safe}s after its last renewal; sanlock needs 8N+60 = {8 * N + 60}s)",
        GREEN,
    )
    got["proc"].kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
