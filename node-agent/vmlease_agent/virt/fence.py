"""Fencing a libvirt domain: the agent's kill command for QEMU processes started by libvirt.

The hook sets it at ``started`` (``set_kill_command``); when the domain's lockspace can no longer
be renewed, the agent runs it once at the deadline D (``fencing``), with the QEMU pid appended,
and SIGKILLs QEMU itself at D + G if it is still alive. Like sanlock's killpath helper
(``libvirt_sanlock_helper``), it asks libvirt rather than signalling QEMU directly, so libvirt
records why the domain stopped and runs its stop hooks:

``destroy`` (default; libvirt's ``poweroff``)
    ``virDomainDestroy``: QEMU is terminated, the domain is "shut off (destroyed)". Its pidfd then
    fires in the agent, which drops the leases without disk I/O.
``pause`` (``<on_lockfailure>pause</on_lockfailure>``)
    ``virDomainSuspend``, then the domain's leases are handed back to the agent, which drops them
    without disk I/O (the lockspace has failed), so the paused QEMU is not SIGKILLed at D + G.
    This is what libvirt's lock driver does on pause (a paused guest holds no leases). Caveat,
    as with sanlock: QEMU drains in-flight I/O when it stops its CPUs; if the domain's own storage
    is stalled the pause may not complete in time, and the SIGKILL at D + G remains the fallback.
    Resuming such a domain later runs it without leases; the agent reports that loudly.

If libvirt cannot be reached, or the domain's current QEMU is not the process being fenced, the
helper falls back to SIGTERM of the pid (what the agent does for holders without a command).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time

#: The helper never outlives this many seconds: by then the agent's SIGKILL (D + G, G <= 40 s)
#: or the watchdog (D + W) has ended QEMU anyway.
ALARM_SECONDS = 60


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} vmlease-fence[{os.getpid()}] {text}", file=sys.stderr)


def _current_pid(pid_dir: str, name: str) -> int | None:
    try:
        with open(os.path.join(pid_dir, f"{name}.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _sigterm(pid: int, why: str) -> int:
    if pid <= 0:
        _say(f"{why}; no pid to signal (the watchdog remains the fallback)")
        return 1
    _say(f"{why}; sending SIGTERM to pid {pid}")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return 1


def fence(uri: str, uuid: str, policy: str, run_dir: str, pid_dir: str, holder: str) -> int:
    pid = int(holder) if holder.isdigit() else 0
    try:
        import libvirt
    except ImportError as e:
        return _sigterm(pid, f"libvirt python binding missing ({e})")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
        dom = conn.lookupByUUIDString(uuid)
        name = dom.name()
        if not dom.isActive():
            _say(f"domain {name} ({uuid}) is not running: nothing to fence")
            return 0
        current = _current_pid(pid_dir, name)
        if pid and current is not None and current != pid:
            return _sigterm(pid, f"domain {name} now runs as pid {current}, not {pid}")
        if policy == "pause":
            dom.suspend()
            _say(f"domain {name} ({uuid}) paused: its lockspace failed")
            from vmlease_agent.rpc.client import AgentClient

            AgentClient(run_dir, timeout=10).call("release", **_holder_arg(holder))
            _say(f"domain {name}: leases handed back to the agent (dropped without disk I/O)")
        else:
            dom.destroy()
            _say(f"domain {name} ({uuid}) destroyed: its lockspace failed")
        return 0
    except Exception as e:
        return _sigterm(pid, f"fencing domain {uuid} through {uri} failed: {e}")


def _holder_arg(holder: str) -> dict[str, object]:
    return {"pid": int(holder)} if holder.isdigit() else {"key": holder}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vmlease-libvirt-fence", description=__doc__.splitlines()[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--uuid", required=True)
    p.add_argument("--policy", choices=("destroy", "pause"), default="destroy")
    p.add_argument("--run-dir", required=True, help="the agent's run dir (pause hands leases back)")
    p.add_argument("--pid-dir", default="/run/libvirt/qemu")
    p.add_argument("holder", help="pid (or placeholder key) appended by the agent")
    args = p.parse_args(argv)
    signal.alarm(ALARM_SECONDS)
    return fence(args.uri, args.uuid, args.policy, args.run_dir, args.pid_dir, args.holder)


if __name__ == "__main__":
    sys.exit(main())
