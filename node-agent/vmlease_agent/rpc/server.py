"""The agent's local API: a unix socket speaking one JSON object per line.

Socket: ``<run_dir>/agent.sock`` (default ``/run/vmlease/agent.sock``), mode 0660, owner root,
group configurable (``--socket-group``): membership in that group is the right to ask.

Protocol (version 1)
--------------------
A request is one line of UTF-8 JSON, at most 64 KiB, ending in ``\\n``; the reply is one line::

    -> {"op": "acquire", "pid": 4242, "resources": ["LS:RES:/shared/res:0"], "owner": "vm1"}
    <- {"ok": true, "result": [{"lease": "LS:RES", "lver": 3, ...}]}
    <- {"ok": false, "error": {"code": -243, "name": "AcquireIdLive", "message": "disk lease ..."}}

Several requests may be sent on one connection, one at a time. Operations:

=================  ===========================================  ===================================
op                 arguments                                    result
=================  ===========================================  ===================================
status             -                                            node, watchdog, lockspaces, leases
events             -                                            the last 200 events (joins, leases,
                                                                fencing), with monotonic times
host_status        lockspace                                    rows: host_id, name, state, ...
add_lockspace      lockspace "LS:HOST_ID:PATH:OFFSET",          the lockspace
                   io_timeout (opt), wait (opt, default true)
rem_lockspace      lockspace (name, or the LS:... spec)         null
acquire            pid | key, resources [spec, "...:SH" = SH],  the leases taken (all or none)
                   owner (opt), wait (opt, default true),
                   disks (opt: {"LS:RES": disk path})
release            pid | key, resources (opt; all if absent)    labels released
convert            pid | key, resource "LS:RES", shared (bool), null (sanlock's convert: the held
                   wait (opt, default true)                     lease becomes shared or exclusive)
inquire            pid | key                                    the leases of that holder
request            resource "LS:RES:PATH:OFFSET[:LVER]",        owner_id, current and requested
                   force_mode (1 force, 2 graceful, 0 clear)    lver (root only; core.requests)
set_kill_command   pid | key, command [argv]                    null (run instead of SIGTERM)
bind               key, pid                                     null (the key's leases now die
                                                                with pid)
shutdown           clean (bool)                                 null
=================  ===========================================  ===================================

A ``key`` names a holder whose process does not exist yet (libvirt's hook acquires at
``prepare``, before QEMU runs, as ``libvirt:<domain uuid>``) until ``bind`` ties it to a pid.

Credentials: the peer's pid/uid come from SO_PEERCRED, never from the request. Lockspace
operations, keys and shutdown need uid 0; lease operations on a pid need uid 0 or the pid's uid.
A malformed, oversized or unknown request gets an error reply; it never stops the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vmlease_agent.core.agent import Agent
from vmlease_agent.core.holders import process_uid
from vmlease_agent.core.lockspace import LockspaceConfig
from vmlease_agent.engine import SANLK_ERROR, errors, leasespec, timeouts

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024

T = TypeVar("T")


class ApiError(errors.LeaseError):
    code = -errno.EINVAL
    template = "{detail}"


class Denied(errors.LeaseError):
    code = -errno.EACCES
    template = "{detail}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def _require(req: dict[str, Any], key: str, kind: type[T]) -> T:
    value = req.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ApiError(detail=f"request field {key!r} is missing or not a {kind.__name__}")
    return value


class Handlers:
    """One method per op; ``uid`` is the caller's (from SO_PEERCRED)."""

    def __init__(self, agent: Agent, on_shutdown: Callable[[bool], None]) -> None:
        self.agent = agent
        self.on_shutdown = on_shutdown

    def _root(self, uid: int, op: str) -> None:
        if uid != 0:
            raise Denied(detail=f"{op} needs root (caller uid {uid})")

    def _holder(self, req: dict, uid: int) -> int | str:
        """A pid, or a placeholder ``key`` (root only: it is not tied to the caller's process)."""
        if "key" in req:
            self._root(uid, "a lease held by key")
            key = str(_require(req, "key", str))
            if not 1 <= len(key) <= 128 or key.startswith("pid:"):
                raise ApiError(detail=f"key {key!r} must be 1..128 characters, not 'pid:...'")
            return key
        return self._pid(req, uid)

    def _pid(self, req: dict, uid: int) -> int:
        pid = _require(req, "pid", int)
        if pid <= 0:
            raise ApiError(detail=f"pid {pid} is not a process id")
        owner = process_uid(pid)
        if uid != 0 and owner is not None and owner != uid:
            raise Denied(detail=f"pid {pid} belongs to uid {owner}, not to the caller (uid {uid})")
        return pid

    def status(self, req: dict, uid: int) -> object:
        return self.agent.status()

    def events(self, req: dict, uid: int) -> object:
        return self.agent.recent_events()

    def host_status(self, req: dict, uid: int) -> object:
        name = str(_require(req, "lockspace", str)).split(":")[0]
        return self.agent.host_status(name)

    def add_lockspace(self, req: dict, uid: int) -> object:
        self._root(uid, "add_lockspace")
        spec = leasespec.parse_lockspace(str(_require(req, "lockspace", str)))
        if spec.host_id < 1:
            raise ApiError(detail="add_lockspace needs a host_id >= 1 (LS:HOST_ID:PATH:OFFSET)")
        io = req.get("io_timeout") or timeouts.DEFAULT_IO_TIMEOUT
        cfg = LockspaceConfig(spec.name, spec.host_id, spec.path, spec.offset, io)
        return self.agent.add_lockspace(cfg, wait=req.get("wait", True) is not False)

    def rem_lockspace(self, req: dict, uid: int) -> object:
        self._root(uid, "rem_lockspace")
        self.agent.rem_lockspace(str(_require(req, "lockspace", str)).split(":")[0])
        return None

    def acquire(self, req: dict, uid: int) -> object:
        holder = self._holder(req, uid)
        specs = _require(req, "resources", list)
        if not specs or not all(isinstance(s, str) for s in specs):
            raise ApiError(detail="resources must be a non-empty list of LS:RES:PATH:OFFSET")
        parsed = [leasespec.parse_resource(s) for s in specs]
        owner = req.get("owner") or ""
        disks = req.get("disks") or {}
        if not isinstance(disks, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in disks.items()
        ):
            raise ApiError(detail="disks must map lease labels (LS:RES) to disk paths")
        return self.agent.acquire(
            holder,
            [(p.resource, p.shared) for p in parsed],
            str(owner)[:128],
            wait=req.get("wait", True) is not False,
            disks=disks,
        )

    def release(self, req: dict, uid: int) -> object:
        holder = self._holder(req, uid)
        specs = req.get("resources")
        labels = None
        if specs is not None:
            if not isinstance(specs, list):
                raise ApiError(detail="resources must be a list")
            labels = []
            for s in specs:
                parts = leasespec.split_escaped(str(s))
                labels.append(f"{parts[0]}:{parts[1]}" if len(parts) >= 2 else str(s))
        return self.agent.release(holder, labels)

    def convert(self, req: dict, uid: int) -> object:
        holder = self._holder(req, uid)
        label = str(_require(req, "resource", str))
        shared = _require(req, "shared", bool)
        self.agent.convert(holder, label, shared, wait=req.get("wait", True) is not False)
        return None

    def request(self, req: dict, uid: int) -> object:
        self._root(uid, "request")
        parsed = leasespec.parse_resource(str(_require(req, "resource", str)))
        return self.agent.request(parsed.resource, _require(req, "force_mode", int), parsed.lver)

    def inquire(self, req: dict, uid: int) -> object:
        return self.agent.inquire(self._holder(req, uid))

    def set_kill_command(self, req: dict, uid: int) -> object:
        self._root(uid, "set_kill_command")
        cmd = _require(req, "command", list)
        self.agent.set_kill_command(self._holder(req, uid), [str(c) for c in cmd])
        return None

    def bind(self, req: dict, uid: int) -> object:
        self._root(uid, "bind")
        key = str(_require(req, "key", str))
        self.agent.bind(key, self._pid(req, uid))
        return None

    def shutdown(self, req: dict, uid: int) -> object:
        self._root(uid, "shutdown")
        clean = bool(req.get("clean", False))
        if clean:
            self.agent.check_clean_stop()
        threading.Thread(target=self.on_shutdown, args=(clean,), daemon=True).start()
        return None


def handle_line(handlers: Handlers, line: bytes, uid: int) -> dict:
    """One request line to one reply object; never raises."""
    try:
        req = json.loads(line)
        if not isinstance(req, dict):
            raise ApiError(detail="a request must be a JSON object")
        op = req.get("op")
        fn = getattr(handlers, op, None) if isinstance(op, str) and not op.startswith("_") else None
        if fn is None:
            raise ApiError(detail=f"unknown op {op!r}")
        return {"ok": True, "result": fn(req, uid)}
    except errors.LeaseError as e:
        return {"ok": False, "error": {"code": e.code, "name": type(e).__name__, "message": str(e)}}
    except (ValueError, UnicodeDecodeError) as e:
        return {
            "ok": False,
            "error": {
                "code": -errno.EINVAL,
                "name": "BadRequest",
                "message": f"malformed request: {e}",
            },
        }
    except Exception as e:  # a bug must not take the daemon down
        log.exception("request failed")
        error = {"code": SANLK_ERROR, "name": type(e).__name__, "message": str(e)}
        return {"ok": False, "error": error}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        _pid, uid, _gid = peer_credentials(self.connection)
        handlers: Handlers = self.server.handlers  # type: ignore[attr-defined]
        while True:
            line = self.rfile.readline(MAX_REQUEST + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
                self._reply(
                    {
                        "ok": False,
                        "error": {
                            "code": -errno.E2BIG,
                            "name": "TooLarge",
                            "message": f"request over {MAX_REQUEST} bytes or not newline-ended",
                        },
                    }
                )
                return
            self._reply(handle_line(handlers, line, uid))

    def _reply(self, obj: dict) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(obj, default=str).encode() + b"\n")


class UnixSocketServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A threaded unix socket server whose socket is mode 0660, owned by root and ``group``:
    membership in that group is the right to ask (the agent's API and sanlock's alike)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        path: str,
        handler: type[socketserver.BaseRequestHandler],
        group: str | None = None,
    ) -> None:
        if os.path.exists(path):
            os.unlink(path)
        old = os.umask(0o117)
        try:
            super().__init__(path, handler)
        finally:
            os.umask(old)
        gid = grp.getgrnam(group).gr_gid if group else -1
        os.chown(path, 0 if os.geteuid() == 0 else -1, gid)
        os.chmod(path, 0o660)
        self.path = path


class ApiServer(UnixSocketServer):
    def __init__(self, path: str, handlers: Handlers, group: str | None = None) -> None:
        super().__init__(path, _Handler, group)
        self.handlers = handlers
