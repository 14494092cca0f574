"""Parsing sanlock's lease arguments: ``LS:HOSTID:PATH:OFFSET`` and ``LS:RES:PATH:OFFSET[:LVER]``.

Paths may contain ':' escaped as ``\\:`` (sanlock ``sanlock_path_import``); offsets are bytes, or
a number with an ``M`` suffix for MiB. Errors say which argument and how it should look.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import errors, ondisk
from .delta import Location
from .paxos import Resource


def split_escaped(text: str) -> list[str]:
    """Split on ':' except where escaped with a backslash; unescape '\\:' and '\\\\'."""
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if c == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def escape_path(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:")


def parse_size(text: str, what: str) -> int:
    t = text.strip()
    try:
        value = int(t[:-1]) * ondisk.MiB if t.upper().endswith("M") else int(t)
    except ValueError:
        raise errors.InvalidArgument(
            what=f"{what} {text!r}", detail="must be a number of bytes, or of MiB with an M suffix"
        ) from None
    if value < 0:
        raise errors.InvalidArgument(what=f"{what} {text!r}", detail="must not be negative")
    return value


@dataclass(frozen=True, slots=True)
class LockspaceArg:
    name: str
    host_id: int
    path: str
    offset: int

    @property
    def location(self) -> Location:
        return Location(self.name, self.path, self.offset)


def parse_lockspace(text: str) -> LockspaceArg:
    parts = split_escaped(text)
    if len(parts) != 4:
        raise errors.InvalidArgument(
            what=f"lockspace {text!r}",
            detail="expected LOCKSPACE:HOST_ID:PATH:OFFSET (escape ':' in the path as '\\:')",
        )
    name, host, path, off = parts
    ondisk.encode_name(name, "lockspace")
    try:
        host_id = int(host)
    except ValueError:
        raise errors.InvalidArgument(
            what=f"host_id {host!r} in {text!r}", detail="must be a number (0 for init)"
        ) from None
    if host_id < 0:
        raise errors.InvalidArgument(what=f"host_id {host_id}", detail="must not be negative")
    if not path:
        raise errors.InvalidArgument(what=f"lockspace {text!r}", detail="the path is empty")
    return LockspaceArg(name, host_id, path, parse_size(off, "offset"))


@dataclass(frozen=True, slots=True)
class ResourceArg:
    resource: Resource
    lver: int | None = None
    shared: bool = False


def parse_resource(text: str) -> ResourceArg:
    """``LS:RES:PATH:OFFSET[:LVER|:SH]`` (sanlock ``sanlock_str_to_res``, one disk)."""
    parts = split_escaped(text)
    if len(parts) not in (4, 5):
        raise errors.InvalidArgument(
            what=f"resource {text!r}",
            detail="expected LOCKSPACE:RESOURCE:PATH:OFFSET[:LVER|:SH] "
            "(escape ':' in the path as '\\:')",
        )
    ls, name, path, off = parts[:4]
    ondisk.encode_name(ls, "lockspace")
    ondisk.encode_name(name, "resource")
    if not path:
        raise errors.InvalidArgument(what=f"resource {text!r}", detail="the path is empty")
    lver, shared = None, False
    if len(parts) == 5:
        if parts[4] == "SH":
            shared = True
        else:
            lver = parse_size(parts[4], "lver")
    return ResourceArg(Resource(ls, name, path, parse_size(off, "offset")), lver, shared)


def format_resource(res: Resource, lver: int | None = None, shared: bool = False) -> str:
    """The inverse of ``parse_resource`` (sanlock ``sanlock_res_to_str``)."""
    text = f"{res.lockspace}:{res.name}:{escape_path(res.path)}:{res.offset}"
    if shared:
        return text + ":SH"
    return text if lver is None else f"{text}:{lver}"
