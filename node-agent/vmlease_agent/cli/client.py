"""``vmlease client ...``: talk to the local agent, with sanlock's ``client`` syntax."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from vmlease_agent.core import requests
from vmlease_agent.engine import errors, leasespec
from vmlease_agent.rpc import wire
from vmlease_agent.rpc.client import AgentClient


def _print(result: object, as_json: bool, render) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        render(result)


def _table(rows: list[dict], cols: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def render_status(st: dict) -> None:
    wd = st["watchdog"]
    fed = f"armed, fed {wd['last_feed_ago']}s ago" if wd["armed"] else "disarmed (nothing held)"
    runs = (
        f" (runs with {wd['device_timeout']}s)"
        if wd["device_timeout"] != wd["fire_timeout"]
        else ""
    )
    print(f"node {st['node']}  watchdog fire timeout {wd['fire_timeout']}s{runs}, {fed}")
    print(f"on SIGTERM: {wd['on_sigterm']}")
    if wd.get("new_leases_wait"):
        print(f"new leases refused for now: {wd['new_leases_wait']}")
    print("\nlockspaces")
    _table(
        st["lockspaces"],
        [
            "name",
            "host_id",
            "generation",
            "state",
            "io_timeout",
            "last_renewal_ago",
            "deadline_in",
            "path",
            "offset",
        ],
    )
    print("\nleases")
    _table(st["leases"], ["lease", "pid", "owner", "lver", "shared", "path", "offset"])


def render_events(events: list[dict]) -> None:
    for e in events:
        when = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("time", "at", "event"))
        print(f"{when} {e['event']:<16} {rest}")


def cmd(args: argparse.Namespace) -> int:
    c = AgentClient(args.run_dir, timeout=args.timeout)
    a = args.action
    if a == "status":
        _print(c.call("status"), args.json, render_status)
    elif a == "host_status":
        rows = c.call("host_status", lockspace=args.lockspace)
        _print(
            rows,
            args.json,
            lambda r: _table(
                r,
                [
                    "host_id",
                    "name",
                    "generation",
                    "state",
                    "renewed_ago",
                    "io_timeout",
                    "watchdog_fire_timeout",
                    "timestamp",
                ],
            ),
        )
    elif a == "add_lockspace":
        extra = {"io_timeout": args.io_timeout} if args.io_timeout else {}
        ls = c.call("add_lockspace", lockspace=args.lockspace, **extra)
        print(
            f"add_lockspace done: {ls['name']} host_id {ls['host_id']} "
            f"generation {ls['generation']}"
        )
    elif a == "rem_lockspace":
        c.call("rem_lockspace", lockspace=args.lockspace)
        print("rem_lockspace done")
    elif a == "acquire":
        got = c.call("acquire", pid=args.pid, resources=args.resource, owner=args.owner or "")
        for lease in got:
            print(f"acquire done: {lease['lease']} lver {lease['lver']} for pid {lease['pid']}")
    elif a == "release":
        who = {"key": args.key} if args.key else {"pid": args.pid}
        done = c.call("release", **who, resources=args.resource)
        print("release done: " + " ".join(done))
    elif a == "convert":
        label, shared = args.resource
        c.call("convert", pid=args.pid, resource=label, shared=shared)
        print(f"convert done: {label} {'shared' if shared else 'exclusive'}")
    elif a == "inquire":
        leases = c.call("inquire", pid=args.pid)
        _print(
            leases,
            args.json,
            lambda ls: print(
                " ".join(
                    leasespec.format_resource(
                        leasespec.parse_resource(
                            f"{x['lockspace']}:{x['resource']}:"
                            f"{leasespec.escape_path(x['path'])}:{x['offset']}"
                        ).resource,
                        x["lver"],
                        x["shared"],
                    )
                    for x in ls
                )
            ),
        )
    elif a == "request":
        got = c.call("request", resource=args.resource, force_mode=args.force_mode)
        owner = f"host_id {got['owner_id']}" if got["owner_id"] else "nobody (the lease is free)"
        print(
            f"request done: {got['lease']} lver {got['requested_lver']} "
            f"({requests.MODES[got['force_mode']]}), held by {owner} at lver {got['current_lver']}"
        )
    elif a == "command":
        return command(c, args)
    elif a == "killpath":
        c.call("set_kill_command", pid=args.pid, command=args.command_path or [])
        print("killpath done" if args.command_path else "killpath cleared: SIGTERM again")
    elif a == "events":
        _print(c.call("events"), args.json, render_events)
    elif a == "shutdown":
        c.call("shutdown", clean=args.clean)
        print("shutdown requested")
    return 0


def command(c: AgentClient, args: argparse.Namespace) -> int:
    """Acquire for ourselves, then exec the command: it inherits our pid, so it holds the leases
    for as long as it runs (sanlock ``client command``)."""
    if not args.command_path:
        raise errors.InvalidArgument(what="command", detail="give the program with -c PATH ARGS...")
    owner = args.owner or os.path.basename(args.command_path[0])
    c.call("acquire", pid=os.getpid(), resources=args.resource, owner=owner)
    sys.stdout.flush()
    try:
        os.execvp(args.command_path[0], args.command_path)
    except OSError as e:
        c.call("release", pid=os.getpid())
        raise errors.InvalidArgument(
            what=f"command {args.command_path[0]}", detail=e.strerror or str(e)
        ) from None
    return 0  # not reached


def _convert_target(text: str) -> tuple[str, bool]:
    """``-r`` of convert, as sanlock's CLI takes it: the lease (path and offset may follow),
    and ``:SH`` at the end for shared; the result is the label and that mode."""
    parts = leasespec.split_escaped(text)
    if len(parts) < 2 or not all(parts[:2]):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LS:RES[:PATH:OFFSET][:SH]")
    return f"{parts[0]}:{parts[1]}", parts[-1] == "SH" and len(parts) > 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    client = sub.add_parser("client", help="ask the local agent (vmlease-agent)")
    client.add_argument(
        "--run-dir",
        help=f"agent run directory (default $VMLEASE_RUN_DIR or {wire.DEFAULT_RUN_DIR})",
    )
    client.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up waiting for the agent after this many seconds",
    )
    client.add_argument("--json", action="store_true", help="machine-readable output")
    csub = client.add_subparsers(dest="action", required=True, metavar="ACTION")
    csub.add_parser("status", help="lockspaces and leases of this node")
    csub.add_parser("events", help="what the agent did lately: joins, leases, fencing")
    p = csub.add_parser("host_status", help="every host of a lockspace, as this node sees it")
    p.add_argument("-s", dest="lockspace", required=True, metavar="LS")
    p = csub.add_parser("add_lockspace", help="join a lockspace")
    p.add_argument("-s", dest="lockspace", required=True, metavar="LS:HOST_ID:PATH:OFFSET")
    p.add_argument("-o", dest="io_timeout", type=int, metavar="SECONDS")
    p = csub.add_parser("rem_lockspace", help="leave a lockspace")
    p.add_argument("-s", dest="lockspace", required=True, metavar="LS[:HOST_ID:PATH:OFFSET]")
    for name, text in (
        ("acquire", "acquire leases for a process"),
        ("release", "release leases of a process"),
    ):
        p = csub.add_parser(name, help=text)
        p.add_argument(
            "-r",
            dest="resource",
            action="append",
            required=name == "acquire",
            metavar="LS:RES:PATH:OFFSET[:SH]",
        )
        if name == "acquire":
            p.add_argument("-p", dest="pid", type=int, required=True)
            p.add_argument("--owner", help="what the process is, shown to other hosts' users")
        else:
            who = p.add_mutually_exclusive_group(required=True)
            who.add_argument("-p", dest="pid", type=int)
            who.add_argument(
                "--key",
                help="a holder known by key, not pid (libvirt:<uuid>, exited:<pid>; root only)",
            )
    p = csub.add_parser(
        "convert", help="make a held lease shared (:SH) or exclusive (sanlock client convert)"
    )
    p.add_argument(
        "-r",
        dest="resource",
        type=_convert_target,
        required=True,
        metavar="LS:RES[:PATH:OFFSET][:SH]",
    )
    p.add_argument("-p", dest="pid", type=int, required=True)
    p = csub.add_parser(
        "request", help="ask the holder of a lease to give it up (sanlock client request)"
    )
    p.add_argument("-r", dest="resource", required=True, metavar="LS:RES:PATH:OFFSET[:LVER]")
    p.add_argument(
        "-f",
        dest="force_mode",
        type=int,
        required=True,
        choices=sorted(requests.MODES),
        help="1 force (SIGKILL the holder), 2 graceful (its killpath or SIGTERM), "
        "0 without LVER: clear the request",
    )
    p = csub.add_parser("inquire", help="the leases a process holds")
    p.add_argument("-p", dest="pid", type=int, required=True)
    p = csub.add_parser(
        "killpath", help="run a program (with the pid appended) instead of SIGTERM when fencing"
    )
    p.add_argument("-p", dest="pid", type=int, required=True)
    p.add_argument("-c", dest="command_path", nargs=argparse.REMAINDER, metavar="PATH ARGS")
    p = csub.add_parser("command", help="acquire leases, then run a command holding them")
    p.add_argument(
        "-r", dest="resource", action="append", required=True, metavar="LS:RES:PATH:OFFSET[:SH]"
    )
    p.add_argument("--owner", help="what the command is, shown to other hosts' users")
    p.add_argument("-c", dest="command_path", nargs=argparse.REMAINDER, metavar="PATH ARGS")
    p = csub.add_parser("shutdown", help="stop the agent")
    p.add_argument(
        "--clean",
        action="store_true",
        help="release everything and disarm the watchdog (refused while leases are held)",
    )
    client.set_defaults(func=cmd)
