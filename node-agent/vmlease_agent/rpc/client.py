"""Talking to the local agent: one request, one reply, over its unix socket (see ``server``)."""

from __future__ import annotations

import errno
import os
from typing import Any

from vmlease_agent.engine import errors
from vmlease_agent.rpc import wire


def socket_path(run_dir: str | None = None) -> str:
    run_dir = run_dir or os.environ.get("VMLEASE_RUN_DIR") or wire.DEFAULT_RUN_DIR
    return os.path.join(run_dir, wire.SOCKET_NAME)


class AgentUnavailable(errors.LeaseError):
    code = -errno.ECONNREFUSED  # as python-sanlock reports a missing daemon
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

    def call(self, op: str, **args: object) -> Any:
        """The reply's ``result`` (decoded JSON, ``Any`` as from ``json.loads``)."""
        try:
            return wire.call(os.path.dirname(self.path), self.timeout, op, **args)
        except wire.Unreachable as e:
            raise AgentUnavailable(path=e.path, detail=e.detail) from None
        except wire.Refused as e:
            raise AgentRefused(e.code, e.name, str(e)) from None
