"""sanlock's own clients, unchanged, against the real sanlock 3.8.5 daemon and against
``vmlease-agent --sanlock-api``, measured in the same run (issue 12).

1. python-sanlock: a registered process acquires and releases one resource ``--count`` times
   (``sanlock.acquire``/``sanlock.release`` with its ``slkfd``), timed inside that process; each
   daemon joined to its own lockspace (io_timeout N) on the same file system, its own resource.
2. libvirt's lock driver (``lock_manager = "sanlock"``, automatic disk leases): ``--starts``
   starts and destroys of a 64 MiB TCG domain on a simulated host (``tests/libvirt/hosts.py``)
   whose lock daemon is either one, and with libvirt's ``nop`` lock manager (no leases).
3. Live migration (peer to peer) of that domain between two simulated hosts, there and back
   ``--migrations`` times: with the lease handed over by each daemon, and without (``nop``).
4. Failover: the host running the domain loses power (its lock daemon's process group and the
   QEMU are SIGKILLed); the other host tries ``virsh start`` every second, as an HA manager
   would, until it succeeds. sanlock's bound is 8N + 60 s (its fixed watchdog timeout), the
   agent's 8N + W with the W it records (10 s here); without leases (``nop``) the start succeeds
   at once, and nothing would stop it if the host were not dead but only cut off.

Parts 2 and 3 need the libvirt tier's tools (``scripts/install-libvirt.sh``) and are skipped,
saying why, without them.

    .venv/bin/python bench/sanlock_api.py [--count 200] [--starts 10] [--migrations 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "libvirt")]

from sanlockd import SanlockClient, SanlockDaemon, sanlock_skip_reason  # noqa: E402
from vmlease_agent.sim.node import SimNode  # noqa: E402

N = 1
LS = "BENCH"


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "mean_ms": statistics.fmean(values) * 1000,
        "n": len(values),
    }


# --- 1. python-sanlock ------------------------------------------------------------------------


def _init(work: str) -> tuple[str, str]:
    ls, res = os.path.join(work, "ls"), os.path.join(work, "res")
    for path in (ls, res):
        with open(path, "wb") as f:
            f.truncate(1 << 20)
    for args in (["-s", f"{LS}:0:{ls}:0", "-o", str(N)], ["-r", f"{LS}:RES:{res}:0"]):
        subprocess.run(["sanlock", "direct", "init", *args], check=True, capture_output=True)
    return ls, res


def _python_side(run_dir: str, ls: str, res: str, count: int) -> dict[str, Any]:
    admin = SanlockClient(run_dir)
    try:
        admin.call("add_lockspace", lockspace=LS, host_id=1, path=ls, io_timeout=N)
    finally:
        admin.close()
    client = SanlockClient(run_dir)
    try:
        client.call("register")
        times = client.call("bench", lockspace=LS, resource="RES", path=res, count=count)
    finally:
        client.close()
    return {"acquire": summary(times["acquire"]), "release": summary(times["release"])}


def python_sanlock(count: int) -> dict[str, Any]:
    top = tempfile.mkdtemp(prefix="vmlease-bench-slapi-", dir="/var/tmp")
    out: dict[str, Any] = {}
    try:
        work = os.path.join(top, "sanlock")
        os.makedirs(work)
        ls, res = _init(work)
        daemon = SanlockDaemon()
        try:
            out["sanlock"] = _python_side(daemon.run_dir, ls, res, count)
        finally:
            daemon.stop()
        work = os.path.join(top, "vmlease")
        os.makedirs(work)
        ls, res = _init(work)
        run_dir = os.path.join(work, "sanlock-run")
        node = SimNode("bench-node", work, io_timeout=N, fire_timeout=10, sanlock_run_dir=run_dir)
        node.start()
        try:
            sock = os.path.join(run_dir, "sanlock.sock")
            deadline = time.monotonic() + 30
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.1)
            out["vmlease"] = _python_side(run_dir, ls, res, count)
        finally:
            node.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)
    return out


# --- 2 and 3. libvirt's lock driver -----------------------------------------------------------


def libvirt_driver(starts: int, migrations: int) -> dict[str, Any] | str:
    """Start and migration times per lock daemon, or why they cannot be measured here."""
    try:
        from hosts import Cluster, HostConfig, Kit, hosts_skip_reason, real_sanlock
        from hosts import vmlease_sanlock_api as vmlease
    except ImportError as e:
        return f"the libvirt tier's tools are missing ({e}): scripts/install-libvirt.sh"
    reason = hosts_skip_reason()
    if reason:
        return reason
    import libvirt

    kit = Kit.create(Path(tempfile.mkdtemp(prefix="vmlease-bench-kit-", dir="/var/tmp")))
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_PEER2PEER
    # UNSAFE: the shared directory is local here, so libvirt cannot tell it is shared storage
    flags |= libvirt.VIR_MIGRATE_UNSAFE
    sides: dict[str, tuple[Callable[..., Any], str]] = {
        "sanlock": (real_sanlock, "sanlock"),
        "vmlease": (vmlease, "sanlock"),
        "none (nop)": (real_sanlock, "nop"),
    }
    out: dict[str, Any] = {}
    try:
        for label, (factory, manager) in sides.items():
            workdir = Path(tempfile.mkdtemp(prefix="vmlease-bench-hosts-", dir="/var/tmp"))
            cluster = Cluster(workdir, kit, n=2, lock_daemon=factory,
                              config=HostConfig(lock_manager=manager))  # fmt: skip
            cluster.start()
            try:
                name = f"bench-{os.getpid()}"
                d = cluster.hosts[0].domain(name)
                d.define()
                start_times = []
                for _ in range(starts):
                    t0 = time.monotonic()
                    d.start()
                    start_times.append(time.monotonic() - t0)
                    d.destroy()
                d.start()
                moves = []
                here, there = cluster.hosts[0], cluster.hosts[1]
                for _ in range(migrations * 2):
                    dom = here.connect().lookupByName(name)
                    t0 = time.monotonic()
                    dom.migrateToURI3(
                        there.tcp_uri, {libvirt.VIR_MIGRATE_PARAM_URI: there.migrate_uri}, flags
                    )
                    moves.append(time.monotonic() - t0)  # fmt: skip
                    here, there = there, here
                out[label] = {
                    "start": summary(start_times),
                    "migrate": summary(moves),
                    "failover_s": power_loss(here, there, name, d.uuid, libvirt),
                }
            finally:
                cluster.stop()
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        kit.close()
    return out


def power_loss(here: Any, there: Any, name: str, uuid: str, libvirt: Any) -> float:
    """Seconds from ``here``'s power loss until ``name`` starts on ``there``."""
    qemu = here.qemu_pid(name)
    t0 = time.monotonic()
    os.killpg(here.daemon.proc.pid, signal.SIGKILL)  # it leads its own process group
    os.kill(qemu, signal.SIGKILL)
    d = there.domain(name, uuid=uuid)
    d.define()
    while True:
        try:
            d.start()
            break
        except libvirt.libvirtError:
            if time.monotonic() - t0 > FAILOVER_LIMIT:
                raise
            time.sleep(1)
    took = time.monotonic() - t0
    d.destroy()
    return took


#: sanlock's 8N + 60 with N = 1, and a margin for a slow machine
FAILOVER_LIMIT = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="python-sanlock acquisitions")
    parser.add_argument("--starts", type=int, default=10, help="domain starts per daemon")
    parser.add_argument("--migrations", type=int, default=3, help="round trips per daemon")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    reason = sanlock_skip_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    result: dict[str, Any] = {"python_sanlock": python_sanlock(args.count)}
    result["libvirt"] = libvirt_driver(args.starts, args.migrations)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    py = result["python_sanlock"]
    print(f"python-sanlock, {args.count} acquire/release of one resource (registered client)")
    print(f"  {'':10} {'sanlock p50':>12} {'vmlease p50':>12} {'ratio':>7}   p99 sanlock/vmlease")
    for op in ("acquire", "release"):
        s, v = py["sanlock"][op], py["vmlease"][op]
        ratio = v["p50_ms"] / s["p50_ms"]
        print(f"  {op:10} {s['p50_ms']:10.2f}ms {v['p50_ms']:10.2f}ms {ratio:6.2f}x   "
              f"{s['p99_ms']:.2f} / {v['p99_ms']:.2f} ms")  # fmt: skip
    lv = result["libvirt"]
    if isinstance(lv, str):
        print(f"libvirt's lock driver: skipped: {lv}")
        return 0
    print(f"libvirt's lock driver, 64 MiB TCG domain: {args.starts} starts, "
          f"{args.migrations * 2} live migrations (p2p) per lock daemon")  # fmt: skip
    print(f"  {'lock daemon':12} {'start p50':>10} {'start p99':>10} {'migrate p50':>12} "
          f"{'failover':>9}")  # fmt: skip
    for label, r in lv.items():
        print(f"  {label:12} {r['start']['p50_ms']:8.0f}ms {r['start']['p99_ms']:8.0f}ms "
              f"{r['migrate']['p50_ms']:10.0f}ms {r['failover_s']:8.1f}s")  # fmt: skip
    print(f"  failover: power loss of the running host until the domain starts elsewhere "
          f"(io_timeout {N} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
