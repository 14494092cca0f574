"""Talking to the local agent: one request, one reply, over its unix socket (see ``api``)."""

from __future__ import annotations

import json
import os
import socket

from .engine import errors

DEFAULT_RUN_DIR = "/run/vmlease"


def socket_path(run_dir: str | None = None) -> str:
    run_dir = run_dir or os.environ.get("VMLEASE_RUN_DIR") or DEFAULT_RUN_DIR
    return os.path.join(run_dir, "agent.sock")


class AgentUnavailable(errors.LeaseError):
    code = -111  # ECONNREFUSED, as python-sanlock reports a missing daemon
    template = (
        "cannot reach the vmlease agent at {path}: {detail}; is vmlease-agent running "
        "(or set VMLEASE_RUN_DIR / --run-dir)?"
    )


class AgentRefused(errors.LeaseError):
    """An error reply from the agent: ``code`` and the agent's own message."""

    template = "{message}"

    def __init__(self, code: int, name: str, message: str) -> None:
        self.code = code  # type: ignore[misc]
        super().__init__(message=message, name=name)


class AgentClient:
    def __init__(self, run_dir: str | None = None, timeout: float | None = None) -> None:
        self.path = socket_path(run_dir)
        self.timeout = timeout

    def call(self, op: str, **args: object) -> object:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(self.path)
                s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except TimeoutError:
            raise AgentUnavailable(
                path=self.path, detail=f"no reply within {self.timeout}s"
            ) from None
        except OSError as e:
            raise AgentUnavailable(path=self.path, detail=e.strerror or str(e)) from None
        if not data:
            raise AgentUnavailable(path=self.path, detail="the agent closed the connection")
        reply = json.loads(data)
        if not reply.get("ok"):
            err = reply.get("error", {})
            raise AgentRefused(err.get("code", -201), err.get("name", ""), err.get("message", ""))
        return reply.get("result")
