"""The hook's agent client: ``client.AgentClient``'s protocol (``api``) on C modules only.

Why not ``client.AgentClient``: libvirt runs the hook as a fresh Python process up to five
times per domain start/stop (``started`` and ``prepare`` on the start path), and importing
``json``, ``socket`` and ``typing`` costs more there than the agent's whole reply. The requests
the hook sends hold only strings, integers, booleans and lists of strings, so encoding them is
a few lines over ``_json.encode_basestring_ascii``; replies are decoded by ``_json``'s own C
scanner (what ``json.loads`` uses underneath). Same wire format, same error semantics: an
unreachable or silent agent raises :class:`Unreachable`, an error reply :class:`Refused`.
"""

from __future__ import annotations

import _json
import _socket
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Unreachable(Exception):
    """No reply: the message says why (like ``client.AgentUnavailable``)."""


class Refused(Exception):
    """An error reply; ``code`` is the agent's (sanlock's) result code."""

    def __init__(self, code: int, name: str, message: str) -> None:
        self.code = code
        self.name = name
        super().__init__(message)


def encode(value: object) -> str:
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{encode(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot encode {type(value).__name__} for the agent")


class _Context:
    """What ``_json.make_scanner`` reads: ``json.JSONDecoder``'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict = {}  # noqa: RUF012 - the scanner's attribute, read once


_scan: Callable[[str, int], tuple[object, int]] = _json.make_scanner(_Context())


def decode(text: str) -> object:
    try:
        value, end = _scan(text, 0)
    except StopIteration as e:  # what the C scanner raises where json.loads says "Expecting"
        raise ValueError(f"malformed JSON at character {e.value}: {text[:60]!r}") from None
    if text[end:].strip():
        raise ValueError(f"trailing data after the reply: {text[end : end + 40]!r}")
    return value


def call(run_dir: str, timeout: float, op: str, **args: object) -> object:
    """One request on a fresh connection, bounded by ``timeout`` per socket operation."""
    path = os.path.join(run_dir, "agent.sock")  # api.SOCKET_NAME (api imports the agent)
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((encode({"op": op, **args}) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise Unreachable(f"no reply within {timeout:.1f}s from {path}") from None
    except OSError as e:
        raise Unreachable(f"cannot reach the vmlease agent at {path}: {e.strerror or e}") from None
    finally:
        s.close()
    if not data:
        raise Unreachable(f"the agent at {path} closed the connection without a reply")
    try:
        reply = decode(data.decode(errors="replace"))
    except ValueError as e:
        raise Unreachable(f"the agent at {path} answered something that is not JSON: {e}") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        err = reply.get("error", {}) if isinstance(reply, dict) else {}
        raise Refused(err.get("code", -201), err.get("name", ""), err.get("message", str(reply)))
    return reply.get("result")
