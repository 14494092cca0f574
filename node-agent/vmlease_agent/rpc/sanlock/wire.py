"""sanlock 3.8's client socket protocol: the structs, command numbers and flags on the wire.

This is what ``libsanlock`` (the ``sanlock client`` CLI, python-sanlock, libvirt's lock driver)
sends to ``$SANLOCK_RUN_DIR/sanlock.sock``. Every struct is raw x86_64 memory in host byte order
(little-endian), never swapped; names are 48 bytes, NUL-padded, and may fill the field with no
NUL (compared and printed on at most 48 bytes); paths are 1024 bytes with a NUL. Pads may hold
garbage (libvirt does not zero its structs): they are never read.

Header, ``struct sm_header`` (32 bytes, 8 x u32)::

    magic 0x04282010 | version 1 | cmd | cmd_flags | length | seq | data | data2

``length`` is 32 + payload for requests; the daemon does not trust it (it reads fixed structs,
counted by ``data`` or ``num_disks``). A reply copies the request header with ``length`` 32 +
its payload, ``data`` = the result (0 or a negative errno / SANLK_* code) and ``data2`` = 0 or a
count. ``data2`` = 0xFFFFFFFF in a request of a registered command means "the sender's own pid".

Payloads::

    sanlk_disk (1040)      path[1024] offset:u64 pad1:u32 pad2:u32
    sanlk_lockspace (1104) name[48] host_id:u64 flags:u32 pad:u32 host_id_disk:sanlk_disk
    sanlk_resource (128)   lockspace_name[48] name[48] lver:u64 data64:u64 data32:u32
                           unused:u32 flags:u32 num_disks:u32, then num_disks x sanlk_disk
    sanlk_options (56)     owner_name[48] flags:u32 len:u32
    sanlk_host (32)        host_id:u64 generation:u64 timestamp:u64 io_timeout:u32 flags:u32
    sanlk_state (80)       type:u32 flags:u32 data32:u32 pad:u32 data64:u64 name[48]
                           str_len:u32 pad:u32, then str_len bytes of text (NUL included)
    sanlk_rindex (1104)    flags:u32 max_resources:u32 unused:u64 lockspace_name[48] disk:sanlk_disk
    sanlk_rentry (64)      name[48] offset:u64 flags:u32 unused:u32
    sanlk_host_event (32)  host_id:u64 generation:u64 event:u64 data:u64
    event_cb (80)          a header (version 1, cmd 1 = SM_CB_GET_EVENT, length 80), then
                           sanlk_host_event, from_host_id:u64 from_generation:u64; pushed on
                           a REG_EVENT connection

(The protocol reference checked against the real daemon: ``sanlock-client-protocol.md``.)
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

MAGIC = 0x04282010
PROTO = 0x00000001
#: what VERSION answers in data2: major << 24 | minor << 16 | patch << 8 (3.8.5)
DAEMON_VERSION = 0x03080500
SELF = 0xFFFFFFFF  # data2 of a registered command: the sending connection's own pid

NAME_LEN = 48
PATH_LEN = 1024
MAX_RESOURCES = 8  # SANLK_MAX_RESOURCES per acquire
MAX_DISKS = 4  # SANLK_MAX_DISKS per resource


class Cmd(enum.IntEnum):
    REGISTER = 1
    ADD_LOCKSPACE = 2
    REM_LOCKSPACE = 3
    SHUTDOWN = 4
    STATUS = 5
    LOG_DUMP = 6
    ACQUIRE = 7
    RELEASE = 8
    INQUIRE = 9
    RESTRICT = 10
    REQUEST = 11
    ALIGN = 12
    EXAMINE_LOCKSPACE = 13
    EXAMINE_RESOURCE = 14
    HOST_STATUS = 15
    INQ_LOCKSPACE = 16
    KILLPATH = 17
    WRITE_LOCKSPACE = 18
    WRITE_RESOURCE = 19
    READ_LOCKSPACE = 20
    READ_RESOURCE = 21
    GET_LOCKSPACES = 22
    GET_HOSTS = 23
    READ_RESOURCE_OWNERS = 24
    SET_LVB = 25
    GET_LVB = 26
    CONVERT = 27
    VERSION = 28
    SHUTDOWN_WAIT = 29
    REG_EVENT = 30
    END_EVENT = 31
    SET_EVENT = 32
    SET_CONFIG = 33
    RENEWAL = 34
    FORMAT_RINDEX = 35
    UPDATE_RINDEX = 36
    LOOKUP_RINDEX = 37
    CREATE_RESOURCE = 38
    DELETE_RESOURCE = 39
    REBUILD_RINDEX = 40


# cmd_flags and struct flags (sanlock.h, sanlock_admin.h, sanlock_resource.h)
ADD_ASYNC = 0x1  # ADD_LOCKSPACE
REM_ASYNC = 0x1  # REM_LOCKSPACE
REM_UNUSED = 0x2
INQ_WAIT = 0x1  # INQ_LOCKSPACE
ACQUIRE_LVB = 0x1  # ACQUIRE: read the lock value block too
ACQUIRE_OWNER_NOWAIT = 0x8
CONVERT_OWNER_NOWAIT = 0x8  # CONVERT
MAX_LVB = 4096  # SET_LVB: sanlock refuses more before it looks at the lease (-E2BIG)
REL_ALL = 0x1  # RELEASE
RES_LVER = 0x1  # sanlk_resource.flags
RES_SHARED = 0x4
RES_SECTOR512 = 0x100  # (RES_ALIGN1M..8M are the on-disk leader's LFL_ALIGN_* bits)
RES_SECTOR4K = 0x200
WRITE_CLEAR = 0x1  # WRITE_RESOURCE: a cleared lease (sanlock direct init -r ... with clear)
LSF_ADD = 0x1  # sanlk_lockspace.flags in GET_LOCKSPACES
LSF_REM = 0x2
RESTRICT_SIGKILL = 0x2
RESTRICT_SIGTERM = 0x4
KILLPATH_PID = 0x1  # KILLPATH: append the pid to the arguments
REQUEST_NEXT_LVER = 0x1  # REQUEST: the lease's next version, whatever lver says
RX_NO_LOCKSPACE = 0x1  # rindex commands: do not use the lockspace (no lease, no busy check)
RXUP_ADD = 0x10000  # UPDATE_RINDEX: set an entry
RXUP_REM = 0x20000  # UPDATE_RINDEX: clear an entry
# SET_CONFIG's data: an outside user of the lockspace (rem_lockspace waits for it), or its
# resources' orphans (idem, while orphans remain)
CONFIG_USED, CONFIG_UNUSED, CONFIG_USED_BY_ORPHANS, CONFIG_UNUSED_BY_ORPHANS = 1, 2, 4, 8

# sanlk_state.type of the STATUS, HOST_STATUS and RENEWAL records
STATE_DAEMON, STATE_CLIENT, STATE_LOCKSPACE, STATE_RESOURCE, STATE_HOST = 1, 2, 3, 4, 5
STATE_RENEWAL = 6
#: LOG_DUMP: the client reads at most this many bytes (sanlock's LOG_DUMP_SIZE) and prints
#: them as a C string
LOG_DUMP_SIZE = 1 << 20

HEADER = struct.Struct("<6IiI")  # data: a signed result in replies
DISK = struct.Struct(f"<{PATH_LEN}sQII")
LOCKSPACE = struct.Struct(f"<{NAME_LEN}sQII{PATH_LEN}sQII")
RESOURCE = struct.Struct(f"<{NAME_LEN}s{NAME_LEN}sQQIIII")
OPTIONS = struct.Struct(f"<{NAME_LEN}sII")
HOST = struct.Struct("<QQQII")
STATE = struct.Struct(f"<IIIIQ{NAME_LEN}sII")
KILLPATH = struct.Struct("<128s128s")
HOST_EVENT = struct.Struct("<QQQQ")
RINDEX = struct.Struct(f"<IIQ{NAME_LEN}s{PATH_LEN}sQII")
RENTRY = struct.Struct(f"<{NAME_LEN}sQII")
EVENT_FROM = struct.Struct("<QQ")
CB_PROTO, CB_GET_EVENT = 1, 1
MAX_EVENT_FDS = 32  # REG_EVENT connections per lockspace
MAX_HOSTS = 2000  # SET_EVENT: host_ids above are refused before the lockspace is looked up


def _text(raw: bytes) -> str:
    """A C string field: up to the first NUL (or the whole field), bytes kept as they are."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _field(text: str, size: int) -> bytes:
    return text.encode("utf-8", "surrogateescape")[:size]


@dataclass
class Header:
    cmd: int
    cmd_flags: int = 0
    length: int = HEADER.size
    data: int = 0
    data2: int = 0
    magic: int = MAGIC
    version: int = PROTO
    seq: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        magic, version, cmd, flags, length, seq, data, data2 = HEADER.unpack(raw)
        return cls(cmd, flags, length, data, data2, magic, version, seq)

    def pack(self) -> bytes:
        return HEADER.pack(
            self.magic,
            self.version,
            self.cmd,
            self.cmd_flags,
            self.length,
            self.seq,
            self.data,
            self.data2 & 0xFFFFFFFF,
        )

    @property
    def acceptable(self) -> bool:
        """What sanlock itself checks: the magic, and the major half of the version."""
        return self.magic == MAGIC and (self.version & 0xFFFF0000) <= (PROTO & 0xFFFF0000)

    @property
    def name(self) -> str:
        """The command's name for messages (``acquire``), or its number if unknown."""
        try:
            return Cmd(self.cmd).name.lower()
        except ValueError:
            return str(self.cmd)

    def reply(self, result: int, payload_len: int = 0, data2: int = 0) -> bytes:
        """A reply header: this request's, with the result, count and payload length."""
        return Header(
            self.cmd, self.cmd_flags, HEADER.size + payload_len, result, data2, seq=self.seq
        ).pack()


@dataclass
class Disk:
    path: str
    offset: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> Disk:
        path, offset, _pad1, _pad2 = DISK.unpack(raw)
        return cls(_text(path), offset)

    def pack(self) -> bytes:
        return DISK.pack(_field(self.path, PATH_LEN - 1), self.offset, 0, 0)


@dataclass
class Lockspace:
    name: str
    host_id: int
    path: str
    offset: int = 0
    flags: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> Lockspace:
        name, host_id, flags, _pad, path, offset, _p1, _p2 = LOCKSPACE.unpack(raw)
        return cls(_text(name), host_id, _text(path), offset, flags)

    def pack(self) -> bytes:
        return LOCKSPACE.pack(
            _field(self.name, NAME_LEN),
            self.host_id,
            self.flags,
            0,
            _field(self.path, PATH_LEN - 1),
            self.offset,
            0,
            0,
        )


@dataclass
class Resource:
    lockspace: str
    name: str
    lver: int = 0
    flags: int = 0
    num_disks: int = 0
    data64: int = 0
    data32: int = 0
    disks: list[Disk] = field(default_factory=list)

    @classmethod
    def unpack(cls, raw: bytes) -> Resource:
        """The 128-byte struct; its ``num_disks`` disks follow on the wire (read separately)."""
        ls, name, lver, data64, data32, _unused, flags, num_disks = RESOURCE.unpack(raw)
        return cls(_text(ls), _text(name), lver, flags, num_disks, data64, data32)

    def pack(self, with_disks: bool = True) -> bytes:
        """The struct and its disks (``num_disks`` = how many are attached), or the struct
        alone, as some replies carry it."""
        head = RESOURCE.pack(
            _field(self.lockspace, NAME_LEN),
            _field(self.name, NAME_LEN),
            self.lver,
            self.data64,
            self.data32,
            0,
            self.flags,
            len(self.disks),
        )
        return head + b"".join(d.pack() for d in self.disks) if with_disks else head

    @property
    def label(self) -> str:
        return f"{self.lockspace}:{self.name}"


@dataclass
class Rindex:
    """Where a resource index is and its lockspace; ``flags``: RES_ALIGN*/SECTOR* for format."""

    lockspace: str
    path: str
    offset: int = 0
    flags: int = 0
    max_resources: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> Rindex:
        flags, max_res, _unused, name, path, offset, _p1, _p2 = RINDEX.unpack(raw)
        return cls(_text(name), _text(path), offset, flags, max_res)


@dataclass
class Rentry:
    name: str = ""
    offset: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> Rentry:
        name, offset, _flags, _unused = RENTRY.unpack(raw)
        return cls(_text(name), offset)

    def pack(self) -> bytes:
        return RENTRY.pack(_field(self.name, NAME_LEN), self.offset, 0, 0)


def options_owner(raw: bytes) -> str:
    """``sanlk_options.owner_name``; the flags and the (never sent) trailing string ignored."""
    owner, _flags, _len = OPTIONS.unpack(raw)
    return _text(owner)


def killpath_command(raw: bytes) -> list[str]:
    """KILLPATH's ``path[128]`` and ``args[128]`` as an argv: the args split on whitespace not
    escaped with a backslash, a backslash taking the next character as it is (libsanlock
    escapes spaces and backslashes in each argument; sanlock's helper splits them so)."""
    path, args = (_text(x) for x in KILLPATH.unpack(raw))
    argv: list[str] = []
    cur: list[str] = []
    chars = iter(args)
    for c in chars:
        if c == "\\":
            cur.append(next(chars, ""))
        elif not c.isspace():
            cur.append(c)
        elif cur:
            argv.append("".join(cur))
            cur = []
    if cur:
        argv.append("".join(cur))
    return [path, *argv] if path else []


def event_callback(he: tuple[int, int, int, int], from_host_id: int, from_generation: int) -> bytes:
    """One ``event_cb`` (``he``: host_id, generation, event, data)."""
    size = HEADER.size + HOST_EVENT.size + EVENT_FROM.size
    head = Header(CB_GET_EVENT, length=size, version=CB_PROTO).pack()
    return head + HOST_EVENT.pack(*he) + EVENT_FROM.pack(from_host_id, from_generation)


def host(host_id: int, generation: int, timestamp: int, io_timeout: int, state: int) -> bytes:
    return HOST.pack(host_id, generation, timestamp, io_timeout, state)


def state_record(
    kind: int, name: str, text: str, data32: int = 0, data64: int = 0, tail: bytes = b""
) -> bytes:
    """One STATUS / HOST_STATUS record: ``sanlk_state``, its text with the NUL, its tail."""
    body = text.encode("utf-8", "surrogateescape") + b"\0"
    head = STATE.pack(kind, 0, data32 & 0xFFFFFFFF, 0, data64, _field(name, NAME_LEN), len(body), 0)
    return head + body + tail
