"""Watchdog hardware for a simulated node: supervises a file-backed device (``FileWatchdog``).

    python -m vmlease_agent.sim.watchdog_harness --device FILE --pgid PGID [--pgid ...] \
        [--events FILE]
    python -m vmlease_agent.sim.watchdog_harness --device FILE --reset-command "docker kill N"

A simulated node is one or more process groups (its agent, its "VMs"). Every 0.1 s the harness
reads the device; once it is armed and not fed for longer than its fire timeout, it SIGKILLs every
given process group, exactly as a reset would kill everything on the node, appends a ``fired``
event (a JSON line) to the events file and exits 0. It never kills anything while the device is
disarmed, and it exits when the device file is removed (that is how tests and the demo stop it).
A node that is a container (the kind e2e tier's) is reset by a command instead:
``--reset-command "docker kill NODE"``, run on the host, where the device file is too (the
node mounts it from there).

The harness is the hardware, so it creates the device file (disarmed) if it is missing. It must
not be in a process group it supervises, or the "reset" would kill it before it records the
event: start it with ``start_new_session=True`` (``spawn_harness`` does); it refuses otherwise.
An unreadable device file keeps the last state it read: a device that was counting keeps counting.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from vmlease_agent.core.watchdog import DeviceState, read_state
from vmlease_agent.engine.clock import boottime

#: How often the device is read: the harness fires at most this late.
POLL_SECONDS = 0.1

#: Written on stdout once the device file exists and supervision starts.
READY = b"ready\n"

#: What a device that was never armed contains.
NEVER_ARMED = DeviceState(armed=False, fire_timeout=0, fed_at=0.0, pid=0)


def spawn_harness(
    device: str | os.PathLike,
    pgids: Iterable[int],
    events: str | os.PathLike | None = None,
    reset_command: str | None = None,
) -> subprocess.Popen:
    """Start a harness in a session of its own; return once it supervises the device."""
    cmd = [sys.executable, "-m", "vmlease_agent.sim.watchdog_harness", "--device", str(device)]
    for pgid in pgids:
        cmd += ["--pgid", str(pgid)]
    if reset_command is not None:
        cmd += ["--reset-command", reset_command]
    if events is not None:
        cmd += ["--events", str(events)]
    # The harness runs from the same source tree as its caller, installed or not.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p
    )
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    if line != READY:
        raise RuntimeError(f"the watchdog harness did not start (exit status {proc.wait()})")
    return proc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vmlease_agent.sim.watchdog_harness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", required=True, help="the file-backed device (file:PATH's PATH)")
    p.add_argument("--pgid", type=int, action="append", default=[], help="a process group to kill")
    p.add_argument("--reset-command", help="run this (shell words) to reset the node instead")
    p.add_argument("--events", help="append a JSON line here when the watchdog fires")
    args = p.parse_args(argv)
    if not args.pgid and not args.reset_command:
        p.error("nothing to reset: give --pgid (a simulated node) or --reset-command")
    reset = shlex.split(args.reset_command) if args.reset_command else []
    for pgid in args.pgid:
        problem = _refusal(pgid)
        if problem:
            print(f"watchdog harness: {problem}", file=sys.stderr)
            return 2
    _create_disarmed(args.device)
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    return supervise(args.device, args.pgid, args.events, reset)


def supervise(device: str, pgids: list[int], events: str | None, reset: list[str]) -> int:
    """Poll the device until it is removed (exit 0) or fires (kill, record, exit 0)."""
    state = NEVER_ARMED
    while True:
        try:
            state = read_state(device)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            print(
                f"watchdog harness: unreadable {device}, keeping its last state: {e}",
                file=sys.stderr,
            )
        now = boottime()
        if state.armed and now - state.fed_at > state.fire_timeout:
            fire(now, state, pgids, events, reset)
            return 0
        time.sleep(POLL_SECONDS)


def fire(
    now: float, state: DeviceState, pgids: list[int], events: str | None, reset: list[str]
) -> None:
    """What a reset does to the node: every process of it dies at once."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError):  # that part of the node is already gone
            os.killpg(pgid, signal.SIGKILL)
    done = subprocess.run(reset, capture_output=True, text=True) if reset else None
    event = {"event": "fired", "at": now, "fed_at": state.fed_at, "pgids": pgids}
    if done is not None:
        event |= {"reset": reset, "status": done.returncode, "reset_done_at": boottime()}
    print(
        f"watchdog harness: FIRED {now - state.fed_at:.2f} s after the last keepalive "
        f"(fire timeout {state.fire_timeout} s): "
        + (f"SIGKILL to process groups {pgids}" if pgids else "")
        + (f" ran {reset}: exit {done.returncode} {done.stderr.strip()}" if done else ""),
        file=sys.stderr,
    )
    if events:
        with open(events, "a") as f:
            f.write(json.dumps(event) + "\n")


def _refusal(pgid: int) -> str | None:
    if pgid <= 1:
        return f"refusing process group {pgid}: 0 means my own group and 1 is init's"
    if pgid == os.getpgrp():
        return (
            f"refusing to supervise my own process group {pgid}: the kill would take me with "
            "it; start me in a session of my own (start_new_session=True, or setsid)"
        )
    return None


def _create_disarmed(device: str) -> None:
    """Create the device file, never armed, unless an agent already armed it (atomic: link)."""
    tmp = f"{device}.{os.getpid()}.new"
    with open(tmp, "w") as f:
        f.write(NEVER_ARMED.to_json())
    try:
        os.link(tmp, device)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


if __name__ == "__main__":
    sys.exit(main())
