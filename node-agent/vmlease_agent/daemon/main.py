"""``vmlease-agent``: the node daemon (DaemonSet pod, or a plain service on any Linux host).

SIGTERM / SIGINT stop it *without harm*: leases stay held on disk and by their processes, the
saved state stays in the run directory, the watchdog keeps counting; an agent started again with
the same run directory before the deadline adopts everything. A lockspace nothing holds leases in
is left (host_id released, HostId Free), so an uninstalled agent or a drained node never reads as
a dead one; the next agent joins it again (2N at a free host_id).
``vmlease client shutdown --clean`` stops it for good (released host_ids, watchdog disarmed),
refused while leases are held.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading

from vmlease_agent import __version__
from vmlease_agent.core.agent import Agent, AgentConfig
from vmlease_agent.core.lockspace import LockspaceConfig
from vmlease_agent.core.watchdog import WatchdogError, open_watchdog
from vmlease_agent.daemon import services
from vmlease_agent.engine import errors, leasespec, timeouts
from vmlease_agent.rpc.sanlock.inspection import LogRing
from vmlease_agent.rpc.sanlock.server import SanlockApiServer, default_run_dir
from vmlease_agent.rpc.server import ApiServer, Handlers, UnixSocketServer
from vmlease_agent.rpc.wire import DEFAULT_RUN_DIR, SOCKET_NAME
from vmlease_agent.virt import watcher as libvirt_events

log = logging.getLogger("vmlease-agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vmlease-agent", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"vmlease-agent {__version__}")
    p.add_argument(
        "--run-dir",
        default=os.environ.get("VMLEASE_RUN_DIR", DEFAULT_RUN_DIR),
        help="socket and saved state (default %(default)s)",
    )
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="stable host name written in our delta leases (default: $NODE_NAME or the hostname)",
    )
    p.add_argument(
        "--watchdog",
        default=os.environ.get("VMLEASE_WATCHDOG", "/dev/watchdog"),
        help="watchdog device: /dev/watchdogN, file:PATH (tests, demo) or none",
    )
    p.add_argument(
        "--watchdog-fire-timeout",
        type=int,
        default=timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT,
        help="W: seconds from the last keepalive until the device resets the node",
    )
    p.add_argument(
        "--kill-grace",
        type=int,
        default=None,
        help="seconds between SIGTERM and SIGKILL of lease holders when a lockspace "
        "fails (default: 2/3 of W, at most 40)",
    )
    p.add_argument(
        "--machine-id-file",
        default="/etc/machine-id",
        help="this machine's id (in a pod: the host's file, mounted): recorded hashed with the "
        "boot id in our delta leases, so a restart that lost its state can prove a reboot "
        "(default %(default)s)",
    )
    p.add_argument("--socket-group", default=None, help="group allowed to use the socket")
    p.add_argument(
        "--lockspace",
        action="append",
        default=[],
        metavar="LS:HOST_ID:PATH:OFFSET[:IO_TIMEOUT]",
        help="join at start",
    )
    p.add_argument(
        "--sanlock-api",
        action="store_true",
        help="also serve sanlock 3.8's client protocol (the sanlock CLI, python-sanlock, "
        "libvirt's lock driver) on sanlock.sock in --sanlock-run-dir, over the same leases",
    )
    p.add_argument(
        "--sanlock-run-dir",
        default=default_run_dir(),
        help="where sanlock clients look for sanlock.sock: $SANLOCK_RUN_DIR, or %(default)s",
    )
    p.add_argument("--log-level", default=os.environ.get("VMLEASE_LOG_LEVEL", "INFO"))
    services.add_arguments(p)
    libvirt_events.add_arguments(p)
    return p.parse_args(argv)


def lockspace_config(text: str) -> LockspaceConfig:
    parts = leasespec.split_escaped(text)
    io = timeouts.DEFAULT_IO_TIMEOUT
    if len(parts) == 5:
        raw = parts.pop()
        try:
            io = int(raw)
        except ValueError:
            raise errors.InvalidArgument(
                what=f"--lockspace {text}: io_timeout {raw!r}",
                detail=f"must be a whole number of seconds in 1..{timeouts.MAX_IO_TIMEOUT}",
            ) from None
        text = ":".join([parts[0], parts[1], leasespec.escape_path(parts[2]), parts[3]])
    spec = leasespec.parse_lockspace(text)
    return LockspaceConfig(spec.name, spec.host_id, spec.path, spec.offset, io)


def machine_id(path: str) -> str:
    """The machine id in ``path``, or "" (then no restart can prove a reboot: see Agent)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        log.warning("cannot read the machine id from %s: %s", path, e.strerror)
        return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_format = f"%(asctime)s {args.node_name} %(name)s %(levelname)s %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    log_ring = None
    if args.sanlock_api:  # from the start: LOG_DUMP shows the adoption of a restart too
        log_ring = LogRing()
        log_ring.setFormatter(logging.Formatter(log_format))
        logging.getLogger().addHandler(log_ring)
    try:
        wanted = [lockspace_config(t) for t in args.lockspace]
        watchdog = open_watchdog(args.watchdog, args.watchdog_fire_timeout)
        cfg = AgentConfig(
            args.run_dir,
            args.node_name[:48],
            args.watchdog_fire_timeout,
            args.kill_grace,
            machine_id=machine_id(args.machine_id_file),
        )
        agent = Agent(cfg, watchdog)
        agent.start()
    except errors.LeaseError as e:
        print(f"vmlease-agent: {e} [error {e.code}]", file=sys.stderr)
        return 1
    except (WatchdogError, ValueError) as e:
        print(f"vmlease-agent: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    outcome = {"clean": False}

    def shutdown(clean: bool) -> None:
        outcome["clean"] = clean
        done.set()

    server = ApiServer(
        os.path.join(args.run_dir, SOCKET_NAME), Handlers(agent, shutdown), args.socket_group
    )
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    servers: list[UnixSocketServer] = [server]
    if args.sanlock_api:
        sanlock = SanlockApiServer(
            args.sanlock_run_dir, agent, shutdown, args.socket_group, log_ring
        )
        threading.Thread(target=sanlock.serve_forever, name="sanlock-api", daemon=True).start()
        servers.append(sanlock)
    # The handler only flips a flag: taking the Event's lock inside a signal handler can
    # deadlock with the main thread holding it in wait(); the main thread polls instead.
    signalled: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signalled.append(signum))
    for ls_cfg in wanted:
        if agent.snapshot().lockspace(ls_cfg.name) is None:
            try:
                agent.add_lockspace(ls_cfg, wait=False)
            except errors.LeaseError as e:
                log.error("%s", e)
    try:
        extras = services.start(args, agent)
    except Exception as e:  # e.g. no kubeconfig: say so, and stop without harm
        print(f"vmlease-agent: cannot start: {e}", file=sys.stderr)
        for s in servers:
            s.shutdown()
        agent.stop(clean=False)
        return 1
    watcher = libvirt_events.start(args, agent)
    log.info("vmlease-agent %s ready on %s", __version__, ", ".join(s.path for s in servers))
    while not signalled and not done.wait(0.2):
        pass
    if watcher is not None:
        watcher.stop()
    for s in servers:
        s.shutdown()  # the sanlock API's registered connections stay open: leases are kept
    left = agent.leave_idle()  # no new leases; lockspaces nothing holds leases in are left
    extras.stop(left)
    agent.stop(clean=outcome["clean"])
    log.info("stopped (%s)", "clean" if outcome["clean"] else "leases kept for a restart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
