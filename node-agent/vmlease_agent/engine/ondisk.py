"""On-disk format of sanlock 3.8 leases: the specification, and the code that reads and writes it.

Everything is little-endian and byte-compatible with sanlock 3.8.5 (checked against Debian's
binary by the ``interop`` tests). Every write covers whole sectors, zero-filled beyond the record.

Sizes
=====
A lease area (lockspace or resource) is ``align_size`` bytes and holds one sector per host.

======  ======  =========  ===========
sector  align   max_hosts  leader flag
======  ======  =========  ===========
512     1 MiB   2000       0x10
4096    1 MiB   250        0x10
4096    2 MiB   500        0x20
4096    4 MiB   1000       0x40
4096    8 MiB   2000       0x80
======  ======  =========  ===========

A leader without an align flag (format minor < 4) implies 1 MiB for 512-byte sectors and 8 MiB for
4096. Regular files are 512-byte-sector storage; block devices use their logical sector size.

Leader record (200 bytes, at sector offset 0)
=============================================
======  ====  ==================  ============================  =============================
offset  type  field               delta lease (lockspace)       paxos lease (resource)
======  ====  ==================  ============================  =============================
0x00    u32   magic               0x12212010                    0x06152010 (0x11282016 clear)
0x04    u32   version             0x00030004                    0x00060004
0x08    u32   flags               align flag                    align flag | 0x1 SHORT_HOLD
0x0C    u32   sector_size         512 / 4096                    512 / 4096
0x10    u64   num_hosts           0                             dblocks used by ballots
0x18    u64   max_hosts           1 (sanlock quirk)             max hosts of the size class
0x20    u64   owner_id            host_id (0 before use)        owner host_id
0x28    u64   owner_generation    +1 at every acquire           owner's delta generation
0x30    u64   lver                0                             +1 per ballot
0x38    c48   space_name          lockspace                     lockspace
0x68    c48   resource_name       owner's host name             resource
0x98    u64   timestamp           owner's monotime, 0 = free    winner's monotime, 0 = free
0xA0    u64   unused1             fire-timeout tag (below)      0
0xA8    u32   checksum            CRC over bytes 0..0xA7        same
0xAC    u16   unused2             0                             0
0xAE    u16   io_timeout          owner's N (N & 0xFF)          0
0xB0    u64   write_id            host event generation         host_id that wrote the leader
0xB8    u64   write_generation    host event                    its generation
0xC0    u64   write_timestamp     host event data               its monotime
======  ====  ==================  ============================  =============================

Names are NUL-padded to 48 bytes and need not be NUL-terminated; they compare like
``strncmp(a, b, 48)``.

Checksum: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) with seed 0xFFFFFFFE and *no*
final inversion, over leader bytes 0..167 or dblock bytes 0..47, stored little-endian.

Delta lease (lockspace) area
============================
Host ``h`` (1..max_hosts) owns sector ``h - 1``: its leader record at +0 and, at +256, a
256-byte bitmap in which it sets bit ``h'`` (byte ``(h'-1) // 8``, mask ``1 << ((h'-1) % 8)``)
to notify host ``h'`` of a request or an event.

Fire-timeout tag (vmlease extension, invisible to sanlock)
----------------------------------------------------------
sanlock 3.8.5 assumes every host's watchdog fires 60 s after its last keepalive. vmlease lets a
node use a shorter watchdog timeout W and records it in ``unused1`` of its *own* delta lease:
``unused1 = W << 32 | tag`` where ``tag = crc(resource_name[48] + owner_id + owner_generation)``
(little-endian u64s). The field lies inside the checksummed range, sanlock never interprets it,
and a sanlock host that later acquires the host_id rewrites the host name and bumps the
generation, so a stale tag no longer matches and the host is judged with sanlock's 60 s. A host
is judged with W only when the tag matches its current record.

Machine identity (vmlease extension, invisible to sanlock)
----------------------------------------------------------
Bytes 0xC8..0xEF of a host's own sector (zero in everything sanlock writes, never read by it)
say which machine and which boot wrote the record, so that an agent that lost its saved state
can tell a previous boot of its own machine (every process gone: re-take the host_id at once)
from an earlier agent of this same boot (its holders may still run: wait out its deadline + W)
and from another machine using our host name (refuse):

======  =====  ============  =============================================================
0xC8    u32    magic         0x494c4d56 ("VMLI")
0xCC    u32    checksum      crc(bytes 0xD0..0xEF + resource_name[48] + owner_id + generation)
0xD0    16 B   machine       sha256("vmlease-machine:" + /etc/machine-id)[:16]
0xE0    16 B   boot          sha256("vmlease-boot:" + machine-id + ":" + boot_id)[:16]
======  =====  ============  =============================================================

Like the fire-timeout tag it is bound to the record's owner and generation: a sanlock host that
takes the host_id writes zeros there, and a stale block from an older generation never matches.

Paxos (resource) lease area
===========================
====================  ======================================================================
sector 0              leader record
sector 1              request record: u32 magic 0x08292011, u32 version 0x00010001,
                      u64 lver, u32 force_mode (1 force, 2 graceful), 4 bytes pad
sector 2 + (h - 1)    host h's dblock at +0, its mode block at +128
sector 2002           lock value block (fixed sector index, a sanlock quirk: for 4096-byte
                      sectors with 1/2/4 MiB align it lies beyond the area; reproduced)
====================  ======================================================================

lock value block (sector 2002): raw bytes of the lease's users, no header and no checksum
(sanlock's SANLK_ACQUIRE_LVB, set_lvb/get_lvb). Read at acquire by a holder that asks for it;
written only by the exclusive holder, before it releases the lease or converts it to shared; a
sector never written reads as zeros (``init`` clears it when it lies inside the area).

dblock (56 bytes): u64 mbal, bal, inp (owner host_id), inp2 (owner generation), inp3 (owner
monotime), lver; u32 checksum over bytes 0..47; u32 flags (0x1 RELEASED, *not* checksummed).
A dblock that is all zero was never written and is valid.

mode block (16 bytes at +128): u32 flags (0x1 SHARED), 4 bytes pad, u64 generation of the
shared holder.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace

from . import errors

# ---- constants (src/leader.h, src/paxos_dblock.h, src/mode_block.h) ---------------------

DELTA_DISK_MAGIC = 0x12212010
PAXOS_DISK_MAGIC = 0x06152010
PAXOS_DISK_CLEAR = 0x11282016
REQ_DISK_MAGIC = 0x08292011

DELTA_DISK_VERSION = 0x00030004
PAXOS_DISK_VERSION = 0x00060004
REQ_DISK_VERSION = 0x00010001
DELTA_VERSION_MAJOR = 0x00030000
PAXOS_VERSION_MAJOR = 0x00060000
VERSION_MAJOR_MASK = 0xFFFF0000

LFL_SHORT_HOLD = 0x1
LFL_ALIGN_1M = 0x10
LFL_ALIGN_2M = 0x20
LFL_ALIGN_4M = 0x40
LFL_ALIGN_8M = 0x80
LFL_ALIGN_MASK = LFL_ALIGN_1M | LFL_ALIGN_2M | LFL_ALIGN_4M | LFL_ALIGN_8M

DBLOCK_FL_RELEASED = 0x1
MBLOCK_SHARED = 0x1
MBLOCK_OFFSET = 128

REQ_FORCE = 1
REQ_GRACEFUL = 2

NAME_LEN = 48
LEADER_SIZE = 200
LEADER_CHECKSUM_LEN = 168
LEADER_COMPARE_LEN = 152
LEADER_TIMESTAMP_OFFSET = 0x98
HOSTID_BITMAP_OFFSET = 256
HOSTID_BITMAP_SIZE = 256
DBLOCK_SIZE = 56
DBLOCK_CHECKSUM_LEN = 48
REQUEST_SECTOR = 1
DBLOCK_FIRST_SECTOR = 2
LVB_SECTOR = 2002

MiB = 1024 * 1024
SECTOR_SIZES = (512, 4096)
ALIGN_SIZES = (1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB)

#: (sector_size, align_size) -> (max_hosts, leader align flag)  (src/sizeflags.c)
SIZE_CLASSES: dict[tuple[int, int], tuple[int, int]] = {
    (512, 1 * MiB): (2000, LFL_ALIGN_1M),
    (4096, 1 * MiB): (250, LFL_ALIGN_1M),
    (4096, 2 * MiB): (500, LFL_ALIGN_2M),
    (4096, 4 * MiB): (1000, LFL_ALIGN_4M),
    (4096, 8 * MiB): (2000, LFL_ALIGN_8M),
}
_ALIGN_OF_FLAG = {
    LFL_ALIGN_1M: 1 * MiB,
    LFL_ALIGN_2M: 2 * MiB,
    LFL_ALIGN_4M: 4 * MiB,
    LFL_ALIGN_8M: 8 * MiB,
}
#: Historical default when a leader carries no align flag (sector_size_to_align_size_old).
_OLD_ALIGN = {512: 1 * MiB, 4096: 8 * MiB}

# ---- CRC-32C as sanlock computes it --------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc(data: bytes | memoryview, seed: int = 0xFFFFFFFE) -> int:
    """sanlock's checksum: raw reflected CRC-32C from seed ~1, no final inversion."""
    table = _CRC_TABLE
    c = seed
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c


# ---- sizes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    """The size class of a lease area: sector size, align size, max hosts, leader flag."""

    sector_size: int
    align_size: int

    def __post_init__(self) -> None:
        if (self.sector_size, self.align_size) not in SIZE_CLASSES:
            raise errors.BadSizes(sector_size=self.sector_size, align_size=self.align_size)

    @property
    def max_hosts(self) -> int:
        return SIZE_CLASSES[(self.sector_size, self.align_size)][0]

    @property
    def align_flag(self) -> int:
        return SIZE_CLASSES[(self.sector_size, self.align_size)][1]

    @classmethod
    def default_for(cls, sector_size: int) -> Sizes:
        """sanlock's default when no align size is given: 512 -> 1 MiB, 4096 -> 8 MiB."""
        return cls(sector_size, _OLD_ALIGN.get(sector_size, 1 * MiB))

    @classmethod
    def from_leader(cls, sector_size: int, flags: int) -> Sizes:
        """The size class a leader was written with (align from flags, else the old rule)."""
        align = _ALIGN_OF_FLAG.get(flags & LFL_ALIGN_MASK)
        if align is None:
            align = _OLD_ALIGN.get(sector_size, 1 * MiB)
        return cls(sector_size, align)


def parse_align(text: str) -> int:
    """'1M' / '8M' / '1048576' -> bytes. Raises InvalidArgument for anything else."""
    t = text.strip().upper()
    try:
        value = int(t[:-1]) * MiB if t.endswith("M") else int(t)
    except ValueError:
        value = -1
    if value not in ALIGN_SIZES:
        raise errors.InvalidArgument(
            what=f"align size {text!r}", detail="use one of 1M, 2M, 4M, 8M"
        )
    return value


def align_name(align_size: int) -> str:
    return f"{align_size // MiB}M"


# ---- names --------------------------------------------------------------------------------


def encode_name(name: str, kind: str) -> bytes:
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > NAME_LEN:
        raise errors.NameTooLong(kind=kind, name=name, length=len(raw))
    if not raw or b"\0" in raw or b":" in raw:
        raise errors.InvalidArgument(
            what=f"{kind} name {name!r}",
            detail="must be 1..48 bytes without ':' or NUL characters",
        )
    return raw.ljust(NAME_LEN, b"\0")


def decode_name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pad_name(name: str) -> bytes:
    """Pack a name already validated (or read from disk) into its 48-byte field."""
    return name.encode("utf-8", "surrogateescape")[:NAME_LEN].ljust(NAME_LEN, b"\0")


# ---- leader record ------------------------------------------------------------------------

_LEADER = struct.Struct("<IIIIQQQQQ48s48sQQIHHQQQ")
assert _LEADER.size == LEADER_SIZE


@dataclass(frozen=True, slots=True)
class Leader:
    """A leader record (delta or paxos); ``checksum`` is computed by ``pack``."""

    magic: int
    version: int
    flags: int
    sector_size: int
    num_hosts: int
    max_hosts: int
    owner_id: int
    owner_generation: int
    lver: int
    space_name: str
    resource_name: str
    timestamp: int
    unused1: int = 0
    checksum: int = 0
    unused2: int = 0
    io_timeout: int = 0
    write_id: int = 0
    write_generation: int = 0
    write_timestamp: int = 0

    def pack(self) -> bytes:
        """The 200 on-disk bytes, with the checksum recomputed."""
        body = _LEADER.pack(
            self.magic,
            self.version,
            self.flags,
            self.sector_size,
            self.num_hosts,
            self.max_hosts,
            self.owner_id,
            self.owner_generation,
            self.lver,
            _pad_name(self.space_name),
            _pad_name(self.resource_name),
            self.timestamp,
            self.unused1,
            0,
            self.unused2,
            self.io_timeout,
            self.write_id,
            self.write_generation,
            self.write_timestamp,
        )
        csum = crc(body[:LEADER_CHECKSUM_LEN])
        return body[:0xA8] + struct.pack("<I", csum) + body[0xAC:]

    def sealed(self) -> Leader:
        """This record with its checksum field set to what ``pack`` writes."""
        return replace(self, checksum=crc(self.pack()[:LEADER_CHECKSUM_LEN]))

    @classmethod
    def unpack(cls, buf: bytes | memoryview) -> Leader:
        f = _LEADER.unpack_from(buf, 0)
        return cls(*f[:9], decode_name(f[9]), decode_name(f[10]), *f[11:])  # type: ignore[call-arg]

    @property
    def sizes(self) -> Sizes:
        return Sizes.from_leader(self.sector_size, self.flags)


def leader_checksum_ok(buf: bytes | memoryview) -> tuple[bool, int, int]:
    """(ok, stored, computed) for the leader record at the start of ``buf``."""
    stored = struct.unpack_from("<I", buf, 0xA8)[0]
    computed = crc(bytes(buf[:LEADER_CHECKSUM_LEN]))
    return stored == computed, stored, computed


# ---- fire-timeout tag ---------------------------------------------------------------------


def _fire_tag(resource_name: str, owner_id: int, owner_generation: int) -> int:
    return crc(_pad_name(resource_name) + struct.pack("<QQ", owner_id, owner_generation))


def fire_timeout_field(
    watchdog_fire_timeout: int, resource_name: str, owner_id: int, owner_generation: int
) -> int:
    """The ``unused1`` value recording our watchdog fire timeout in our own delta lease."""
    return (watchdog_fire_timeout << 32) | _fire_tag(resource_name, owner_id, owner_generation)


def watchdog_fire_timeout_of(leader: Leader, default: int) -> int:
    """The fire timeout a delta lease's owner declared, or ``default`` (sanlock's 60)."""
    tag = leader.unused1 & 0xFFFFFFFF
    value = leader.unused1 >> 32
    if value and tag == _fire_tag(leader.resource_name, leader.owner_id, leader.owner_generation):
        return value
    return default


# ---- machine identity -----------------------------------------------------------------------

IDENTITY_OFFSET = 0xC8
IDENTITY_MAGIC = 0x494C4D56
_IDENTITY = struct.Struct("<II16s16s")


@dataclass(frozen=True, slots=True)
class Identity:
    """Which machine and which boot of it wrote a delta lease (hashed: see the format above)."""

    machine: bytes
    boot: bytes

    @classmethod
    def of(cls, machine_id: str, boot_id: str) -> Identity:
        """Our identity; without a machine id it is ``known`` False: it proves nothing (two
        machines without one would otherwise look alike) and is never written."""
        if not machine_id:
            return cls(b"", b"")
        m = hashlib.sha256(f"vmlease-machine:{machine_id}".encode()).digest()[:16]
        b = hashlib.sha256(f"vmlease-boot:{machine_id}:{boot_id}".encode()).digest()[:16]
        return cls(m, b)

    @property
    def known(self) -> bool:
        return bool(self.machine)

    @property
    def machine_hex(self) -> str:
        return self.machine.hex()[:12]

    def pack_for(self, leader: Leader) -> bytes:
        body = self.machine + self.boot
        return _IDENTITY.pack(
            IDENTITY_MAGIC, _identity_check(body, leader), self.machine, self.boot
        )

    @classmethod
    def unpack_for(cls, sector_bytes: bytes | memoryview, leader: Leader) -> Identity | None:
        """The identity in a host's sector if it belongs to ``leader`` (that sector's record)."""
        end = IDENTITY_OFFSET + _IDENTITY.size
        if len(sector_bytes) < end:
            return None
        magic, check, machine, boot = _IDENTITY.unpack(bytes(sector_bytes[IDENTITY_OFFSET:end]))
        if magic != IDENTITY_MAGIC or check != _identity_check(machine + boot, leader):
            return None
        return cls(machine, boot)


def _identity_check(body: bytes, leader: Leader) -> int:
    owner = struct.pack("<QQ", leader.owner_id, leader.owner_generation)
    return crc(body + _pad_name(leader.resource_name) + owner)


# ---- request record, dblock, mode block ---------------------------------------------------

_REQUEST = struct.Struct("<IIQI4x")
_DBLOCK = struct.Struct("<QQQQQQII")
_DBLOCK_BODY = struct.Struct("<QQQQQQ")
_MODE = struct.Struct("<I4xQ")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    magic: int = REQ_DISK_MAGIC
    version: int = REQ_DISK_VERSION
    lver: int = 0
    force_mode: int = 0

    def pack(self) -> bytes:
        return _REQUEST.pack(self.magic, self.version, self.lver, self.force_mode)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int = 0) -> RequestRecord:
        return cls(*_REQUEST.unpack_from(buf, offset))


@dataclass(frozen=True, slots=True)
class Dblock:
    """A host's paxos ballot block. ``flags`` (RELEASED) is outside the checksum."""

    mbal: int = 0
    bal: int = 0
    inp: int = 0
    inp2: int = 0
    inp3: int = 0
    lver: int = 0
    checksum: int = 0
    flags: int = 0

    def _body(self) -> bytes:
        """The checksummed bytes 0..47 (everything but checksum and flags)."""
        return _DBLOCK_BODY.pack(self.mbal, self.bal, self.inp, self.inp2, self.inp3, self.lver)

    def pack(self) -> bytes:
        body = self._body()
        return body + struct.pack("<II", crc(body), self.flags)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int = 0) -> Dblock:
        return cls(*_DBLOCK.unpack_from(buf, offset))

    def checksum_ok(self) -> bool:
        if not (self.checksum or self.mbal or self.bal or self.inp or self.lver):
            return True  # never written
        return crc(self._body()) == self.checksum


@dataclass(frozen=True, slots=True)
class ModeBlock:
    flags: int = 0
    generation: int = 0

    def pack(self) -> bytes:
        return _MODE.pack(self.flags, self.generation)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int = 0) -> ModeBlock:
        return cls(*_MODE.unpack_from(buf, offset))

    @property
    def shared(self) -> bool:
        return bool(self.flags & MBLOCK_SHARED)


# ---- sectors and layout -------------------------------------------------------------------


def sector(sector_size: int, *parts: tuple[int, bytes]) -> bytes:
    """A zero-filled sector with each ``(offset, bytes)`` part copied in (sanlock's write rule)."""
    buf = bytearray(sector_size)
    for off, data in parts:
        buf[off : off + len(data)] = data
    return bytes(buf)


def delta_sector_index(host_id: int) -> int:
    """Host ``h`` owns sector ``h - 1`` of the lockspace area."""
    return host_id - 1


def dblock_sector_index(host_id: int) -> int:
    """Host ``h``'s dblock and mode block live in sector ``2 + h - 1`` of the resource area."""
    return DBLOCK_FIRST_SECTOR + host_id - 1


def bitmap_set(bitmap: bytearray, host_id: int) -> None:
    bitmap[(host_id - 1) // 8] |= 1 << ((host_id - 1) % 8)


def bitmap_test(bitmap: bytes | memoryview, host_id: int) -> bool:
    return bool(bitmap[(host_id - 1) // 8] & (1 << ((host_id - 1) % 8)))


def ballot_read_size(num_hosts: int, sizes: Sizes) -> int:
    """Bytes read in a ballot: roundup_pow2(num_hosts + 2) sectors, never beyond the area."""
    n = 1
    while n < num_hosts + 2:
        n <<= 1
    return min(n * sizes.sector_size, sizes.align_size)
