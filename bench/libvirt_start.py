"""What the vmlease hook adds to a libvirt domain start, and how fast a dead QEMU's lease is free.

Real libvirtd + QEMU (TCG, the 64 MiB tiny domain of the libvirt tier), agent A as in the tests
(io_timeout 1, file watchdog, libvirt watcher on), the hook installed by ``vmlease libvirt
install-hook``. Starts rotate between "with vmlease" (the hook in ``qemu.d/``), "with vmlease,
first start" (its cached lease plan removed: ``libvirt_plancache``) and "without" (the hook moved
out of ``qemu.d/``; libvirtd keeps scanning the empty directory), in the same run, so load on
the machine hits all three equally; each start is ``virDomainCreate`` timed in this process
(it returns once QEMU runs and the ``started`` hook has returned), each followed by a destroy.
Then QEMU is SIGKILLed N times: "lease free" is the agent's ``released`` event (written after the
on-disk release), on the same monotonic clock as the kill.

    .venv/bin/python bench/libvirt_start.py [--starts 20] [--kills 10] [--json]

Needs root and the libvirt tier's packages (``scripts/install-libvirt.sh``). Target (issue 4):
p50 added start latency under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "libvirt"))  # lab, vmlease_lab


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (libvirtd, QEMU, /etc/libvirt/hooks)"
    missing = [b for b in ("libvirtd", "virtlogd", "qemu-system-x86_64") if not shutil.which(b)]
    if missing:
        return f"{', '.join(missing)} missing: run scripts/install-libvirt.sh"
    try:
        import libvirt  # noqa: F401
    except ImportError as e:
        return f"libvirt-python does not import ({e}): use .venv/bin/python"
    return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_start(domain) -> float:
    started = time.perf_counter()
    domain.start()
    took = (time.perf_counter() - started) * 1000
    domain.destroy()
    return took


def hook_times(log: Path) -> dict[str, list[float]]:
    """Per op, the hook's own duration (its log: "NAME OP: ok in N ms")."""
    out: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        m = re.search(r"\] \S+ (\w+): ok in (\d+) ms", line)
        if m:
            out.setdefault(m.group(1), []).append(float(m.group(2)))
    return out


def run(starts: int, kills: int) -> dict:
    from lab import HOOKS, Lab, TinyDomain
    from vmlease_lab import VmleaseLab, wait_for

    work = Path(tempfile.mkdtemp(prefix="vmlease-bench-libvirt-", dir="/var/tmp"))
    work.chmod(0o755)
    lab = Lab(work)
    vml = VmleaseLab(lab, work / "vmlease")
    vml.workdir.mkdir()
    domain = None
    try:
        lab.start()
        vml.setup()
        a = vml.start_a()
        hook = vml.install_hook()
        parked = HOOKS / f".{hook.name}.bench-off"  # outside qemu.d: not run
        domain = TinyDomain(lab.connect(), f"vmlease-bench-{os.getpid()}", work / "domain")
        domain.define()
        timed_start(domain)  # warm-up: QEMU binary and libvirt caches, the lease file created
        plans = Path(vml.settings["run_dir"]) / "libvirt-plans"
        times: dict[str, list[float]] = {"without": [], "with": [], "cold": []}
        vml.hook_log.write_text("")
        modes = list(times)
        for i in range(starts):
            for mode in modes[i % 3 :] + modes[: i % 3]:  # rotate: no mode always goes first
                if mode == "without":
                    hook.replace(parked)
                    try:
                        times[mode].append(timed_start(domain))
                    finally:
                        parked.replace(hook)
                else:
                    if mode == "cold":  # a domain's first start here: no cached lease plan
                        shutil.rmtree(plans, ignore_errors=True)
                    times[mode].append(timed_start(domain))
        per_op = hook_times(vml.hook_log)

        free_ms: list[float] = []
        key = f"libvirt:{domain.uuid}"
        for _ in range(kills):
            domain.start()
            killed = time.monotonic()
            os.kill(domain.qemu_pid(), signal.SIGKILL)
            event = wait_for(  # (the agent keeps its last 200 events: match by time, not index)
                lambda killed=killed: [
                    e for e in vml.events(a, "released") if e["holder"] == key and e["at"] >= killed
                ],
                10,
                "the lease to be released",
            )[0]
            free_ms.append((event["at"] - killed) * 1000)
            wait_for(lambda: not domain.domain().isActive(), 15, "libvirt to see QEMU gone")
        return {
            "starts": starts,
            "without_ms": times["without"],
            "with_ms": times["with"],
            "with_cold_plan_ms": times["cold"],
            "hook_ms": per_op,
            "qemu_death_to_lease_free_ms": free_ms,
        }
    finally:
        if domain is not None:
            try:
                domain.conn = lab.connect()
                domain.undefine()
            except Exception as e:  # the report matters more than the cleanup's failure
                print(f"cleanup: {e}", file=sys.stderr)
        vml.stop()
        lab.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict) -> None:
    def row(name: str, values: list[float]) -> str:
        return (
            f"{name:<34}{statistics.median(values):>8.0f}{pct(values, 0.9):>8.0f}"
            f"{min(values):>8.0f}{max(values):>8.0f}"
        )

    print(f"libvirt domain start, TCG 64 MiB, {r['starts']} starts each, interleaved (ms)")
    print(f"{'':<34}{'p50':>8}{'p90':>8}{'min':>8}{'max':>8}")
    print(row("without vmlease", r["without_ms"]))
    print(row("with the vmlease hook", r["with_ms"]))
    print(row("  same, first start (no plan cache)", r["with_cold_plan_ms"]))
    base = statistics.median(r["without_ms"])
    added = statistics.median(r["with_ms"]) - base
    cold = statistics.median(r["with_cold_plan_ms"]) - base
    print(f"{'added (p50 difference)':<34}{added:>8.0f}   target < 100 ms")
    print(f"{'added, first start of a domain':<34}{cold:>8.0f}")
    print("\nthe hook's own time per call, after Python's start-up (its log) (ms)")
    for op in ("prepare", "started", "stopped", "release"):
        if r["hook_ms"].get(op):
            print(row(f"  {op}", r["hook_ms"][op]))
    print(
        f"\nQEMU SIGKILL -> lease released on disk, {len(r['qemu_death_to_lease_free_ms'])} kills"
    )
    print(row("  (ms)", r["qemu_death_to_lease_free_ms"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=20)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"libvirt_start: skipped: {reason}")
        return 0
    result = run(args.starts, args.kills)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
