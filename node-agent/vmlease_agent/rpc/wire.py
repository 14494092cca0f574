"""The agent's wire (JSON lines on ``<run_dir>/agent.sock``) and the hook's client of it, on C
modules only (and the ``engine`` package's codes and error pattern, which import nothing;
``client.AgentClient`` is this call with the library's error classes).

Why not ``client.AgentClient`` in the hook: libvirt runs the hook as a fresh Python process up
to five times per domain start/stop (``started`` and ``prepare`` on the start path), and importing
``json``, ``socket`` and ``typing`` costs more there than the agent's whole reply. The requests
the hook sends hold only strings, integers, booleans and lists of strings, so encoding them is
a few lines over ``_json.encode_basestring_ascii``; replies are decoded by ``_json``'s own C
scanner (what ``json.loads`` uses underneath). Same wire format, same error semantics: an
unreachable or silent agent raises :class:`Unreachable`, an error reply :class:`Refused`.
"""

import _json
import _socket
import os

from vmlease_agent import engine

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: the agent's socket in its run directory, and the run directory's default
SOCKET_NAME = "agent.sock"
DEFAULT_RUN_DIR = "/run/vmlease"


class Unreachable(engine.Templated):
    """No reply from the agent at ``path``; ``detail`` says why."""

    template = "cannot reach the vmlease agent at {path}: {detail}"


class Refused(engine.Templated):
    """An error reply: the agent's (sanlock's) result ``code``, error class ``name`` and
    ``message``."""

    template = "{message}"


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


_scan: "Callable[[str, int], tuple[Any, int]]" = _json.make_scanner(_Context())  # type: ignore[arg-type]


def decode(text: str) -> "Any":
    try:
        value, end = _scan(text, 0)
    except StopIteration as e:  # what the C scanner raises where json.loads says "Expecting"
        raise ValueError(f"malformed JSON at character {e.value}: {text[:60]!r}") from None
    if text[end:].strip():
        raise ValueError(f"trailing data after the reply: {text[end : end + 40]!r}")
    return value


def call(run_dir: str, timeout: float | None, op: str, **args: object) -> "Any":
    """One request on a fresh connection, bounded by ``timeout`` per socket operation (None:
    unbounded). Returns the reply's ``result``: decoded JSON, ``Any`` as from ``json.loads``."""
    path = os.path.join(run_dir, SOCKET_NAME)
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
        raise Unreachable(path=path, detail=f"no reply within {timeout or 0:.1f}s") from None
    except OSError as e:
        raise Unreachable(path=path, detail=e.strerror or str(e)) from None
    finally:
        s.close()
    if not data:
        raise Unreachable(path=path, detail="the agent closed the connection without a reply")
    try:
        reply = decode(data.decode(errors="replace"))
    except ValueError as e:
        raise Unreachable(
            path=path, detail=f"the agent answered something that is not JSON: {e}"
        ) from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        err = reply.get("error", {}) if isinstance(reply, dict) else {}
        raise Refused(
            code=err.get("code", engine.SANLK_ERROR),
            name=err.get("name", ""),
            message=err.get("message", str(reply)),
        )
    return reply.get("result")
