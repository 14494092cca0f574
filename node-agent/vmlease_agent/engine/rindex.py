"""Resource index ("rindex"): sanlock 3.8.5's on-disk table of the resource leases that follow it.

An application that does not want to track lease offsets itself (sanlock's ``create``/``delete``
commands) formats an index at an align-size boundary; resource leases are then placed by sanlock,
and found again by name. All offsets are bytes from the start of the disk, all integers
little-endian. ``A`` is the align size, ``S`` the sector size of the index (both in its header)::

    offset X            the index, one align-size area:
      X + 0               header (80 bytes; the rest of the first sector is zero)
                            magic:u32 0x01042018 | version:u32 0x00010002 | flags:u32 (RHF_ALIGN_
                            1M=1 2M=2 4M=4 8M=8) | sector_size:u32 | max_resources:u32 | unused:u32
                            | rx_offset:u64 (= X: an index copied elsewhere is refused) |
                            lockspace_name[48]
      X + S + 64*i        entry i (64 bytes): res_offset:u64 | flags:u32 | unused:u32 | name[48];
                          all zero when slot i is free
    offset X + A        "rindex_lease": a paxos resource lease of the lockspace (``paxos``),
                        held by a host while it changes the index
    offset X + (2+i)*A  slot i: the resource lease entry i names (i < max_resources)

``max_resources`` is 4096 unless the formatter asked for another count, capped by what fits in
one area (16000 for 1M, 32000 2M, 64000 4M, 128000 8M); 0 (older sanlock) means that cap.

Operations, as sanlock 3.8.5 runs them (``src/rindex.c``):

* format: write the header with zeroed entries over the whole index area, then a fresh
  ``rindex_lease``. Unlike sanlock we refuse when either area holds something else than zeros,
  an index or a free lease (an index reformatted loses its entries; ``rebuild`` finds them);
* lookup (no lease taken): by name (first matching entry), by offset (the entry of that slot),
  both (the slot's name must match: -278) or neither (the first free slot);
* create: holding ``rindex_lease`` (acquired without waiting: a live holder fails the command),
  take the first free entry, write a new resource lease in its slot, then the entry (the lease
  exists before the index names it). We refuse a slot that holds a live lease or data that is
  not a lease of this lockspace (sanlock overwrites it);
* delete: holding ``rindex_lease``, clear the entry found by name, then write a cleared lease
  over its slot (refused, as by ``init``, if the lease is held: sanlock clears it anyway);
* update: set (name, offset) or clear (offset) one entry. sanlock does it without the lease; we
  take it, so no update is lost under a concurrent create;
* rebuild: holding ``rindex_lease``, zero every entry, then add one for each slot whose first
  sector has the paxos leader magic (reading stops at the end of the storage).

An entry is written by rewriting the one sector that holds it, from the copy read under the
lease. Without a lockspace (sanlock's SANLK_RX_NO_LOCKSPACE) only lookup runs: no host_id, no
lease, so nothing that writes the index.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import delta, errors, ondisk, paxos
from .directio import Storage
from .inspect import refuse_overwrite
from .ondisk import Sizes

MAGIC = 0x01042018
VERSION = 0x00010002
VERSION_MAJOR_MASK = 0xFFFF0000
HEADER = struct.Struct(f"<6IQ{ondisk.NAME_LEN}s")
ENTRY = struct.Struct(f"<QII{ondisk.NAME_LEN}s")
LEASE_NAME = "rindex_lease"
DEFAULT_MAX_RESOURCES = 4096
#: the header's RHF_ALIGN_* flag of each align size
ALIGN_FLAGS = {1 * ondisk.MiB: 0x1, 2 * ondisk.MiB: 0x2, 4 * ondisk.MiB: 0x4, 8 * ondisk.MiB: 0x8}
#: how many entries fit in one index area of each align size
MAX_RESOURCES = {1 * ondisk.MiB: 16000, 2 * ondisk.MiB: 32000, 4 * ondisk.MiB: 64000}
MAX_RESOURCES[8 * ondisk.MiB] = 128000
#: the sector read to learn an index's sector size when no lockspace tells it (as sanlock)
PROBE_SECTOR = 4096

#: builds the acquirer of the index's lease (the caller's host in the lockspace)
AcquirerFor = Callable[[paxos.Resource], paxos.Acquirer]


@dataclass(frozen=True, slots=True)
class Place:
    """Where an index lives and the lockspace it serves (sanlock's ``struct sanlk_rindex``)."""

    lockspace: str
    path: str
    offset: int

    def where(self) -> dict:
        return {"path": self.path, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class Header:
    sizes: Sizes
    max_resources: int
    lockspace: str
    rx_offset: int

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            VERSION,
            ALIGN_FLAGS[self.sizes.align_size],
            self.sizes.sector_size,
            self.max_resources,
            0,
            self.rx_offset,
            ondisk.encode_name(self.lockspace, "lockspace"),
        )

    @property
    def slots(self) -> int:
        """How many entries are searched (0 on disk: as many as fit, as sanlock)."""
        return self.max_resources or MAX_RESOURCES[self.sizes.align_size]


@dataclass(frozen=True, slots=True)
class Entry:
    """An index entry: a resource lease name and its offset (empty name: a free slot)."""

    name: str
    offset: int

    def pack(self) -> bytes:
        if not self.name and not self.offset:
            return bytes(ENTRY.size)
        return ENTRY.pack(self.offset, 0, 0, ondisk.encode_name(self.name, "resource"))

    @classmethod
    def unpack(cls, buf: bytes, at: int) -> Entry:
        offset, _flags, _unused, name = ENTRY.unpack_from(buf, at)
        return cls(ondisk.decode_name(name), offset)

    @property
    def free(self) -> bool:
        return not self.name and not self.offset


# ---- layout ----------------------------------------------------------------------------------


def lease_of(place: Place, header: Header) -> paxos.Resource:
    """The paxos lease that serialises changes to the index, in the area after it."""
    offset = place.offset + header.sizes.align_size
    return paxos.Resource(place.lockspace, LEASE_NAME, place.path, offset)


def slot_offset(place: Place, header: Header, i: int) -> int:
    return place.offset + (2 + i) * header.sizes.align_size


def entry_at(header: Header, i: int) -> int:
    """Offset of entry ``i`` from the start of the index (entries follow the header sector)."""
    return header.sizes.sector_size + i * ENTRY.size


def slot_of(place: Place, header: Header, res_offset: int) -> int:
    """The slot a resource lease offset is in; RindexOffset unless it is one of the index's
    (sanlock does not check the range: it would read and write outside the index)."""
    _check_aligned(place, header, res_offset)
    first = slot_offset(place, header, 0)
    i = (res_offset - first) // header.sizes.align_size
    if not 0 <= i < header.slots:
        detail = (
            f"resource offset {res_offset} is not one of the index's {header.slots} slots "
            f"({first} to {slot_offset(place, header, header.slots - 1)})"
        )
        raise errors.RindexOffset(**place.where(), detail=detail)
    return i


# ---- reading ----------------------------------------------------------------------------------


def read_header(st: Storage, place: Place, probe: int, timeout: float) -> Header:
    """Read and check the header: magic, major version, lockspace and offset, in sanlock's order.
    ``probe``: the bytes read (the lockspace's sector size, or PROBE_SECTOR)."""
    buf = st.read(place.offset, probe, timeout)
    if len(buf) < HEADER.size:
        raise errors.RindexMagic(**place.where(), magic=0)
    magic, version, flags, sector, max_res, _unused, rx_offset, name = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise errors.RindexMagic(**place.where(), magic=magic)
    if version & VERSION_MAJOR_MASK != VERSION & VERSION_MAJOR_MASK:
        raise errors.RindexVersion(**place.where(), version=version)
    found = ondisk.decode_name(name)
    if found != place.lockspace:
        raise errors.RindexLockspace(**place.where(), found=found, expected=place.lockspace)
    if rx_offset != place.offset:
        detail = f"the header says it was written at offset {rx_offset}"
        raise errors.RindexOffset(**place.where(), detail=detail)
    align = {f: a for a, f in ALIGN_FLAGS.items()}.get(flags, 0)
    try:
        sizes = Sizes(sector, align)
    except errors.BadSizes:
        detail = f"the header has sector size {sector} and align flags {flags:#x}"
        raise errors.RindexOffset(**place.where(), detail=detail) from None
    return Header(sizes, max_res, found, rx_offset)


def read_index(st: Storage, place: Place, header: Header, timeout: float) -> bytes:
    """The whole index area: header sector and entries."""
    return st.read(place.offset, header.sizes.align_size, timeout)


def entries(header: Header, area: bytes) -> Iterator[tuple[int, Entry]]:
    for i in range(header.slots):
        yield i, Entry.unpack(area, entry_at(header, i))


def find(header: Header, area: bytes, name: str = "") -> int:
    """The first slot whose entry names ``name`` (empty: the first free slot), or -1."""
    for i, e in entries(header, area):
        if (e.free and not name) or (name and e.name == name):
            return i
    return -1


def lookup(st: Storage, place: Place, probe: int, name: str, offset: int, timeout: float) -> Entry:
    """sanlock ``lookup``'s four cases (module docstring); reads only."""
    header = read_header(st, place, probe, timeout)
    area = read_index(st, place, header, timeout)
    _check_aligned(place, header, offset)
    if offset:
        recorded = Entry.unpack(area, entry_at(header, slot_of(place, header, offset)))
        if name and recorded.name != name:
            raise errors.RindexDiff(
                **place.where(), res_offset=offset, found=recorded.name, expected=name
            )
        return Entry(recorded.name, offset)
    i = find(header, area, name)
    if i < 0:
        detail = f"no entry names {name!r}" if name else "no free slot is left"
        raise errors.RindexNotFound(**place.where(), detail=detail)
    return Entry(name, slot_offset(place, header, i))


# ---- writing ----------------------------------------------------------------------------------


def format_index(
    st: Storage, place: Place, sizes: Sizes, max_resources: int, write_timeout: float
) -> Header:
    """Write a new, empty index and its lease (module docstring: what we refuse)."""
    what = f"resource index {place.lockspace}"
    delta.check_offset(delta.Location(place.lockspace, place.path, place.offset), sizes, what)
    count = min(max_resources or DEFAULT_MAX_RESOURCES, MAX_RESOURCES[sizes.align_size])
    header = Header(sizes, count, place.lockspace, place.offset)
    _refuse_over_index(st, place, sizes.align_size, write_timeout)
    lease = lease_of(place, header)
    refuse_overwrite(st, place.path, lease.offset, sizes.align_size, f"resource {lease.label}")
    area = ondisk.sector(sizes.sector_size, (0, header.pack())) + bytes(
        sizes.align_size - sizes.sector_size
    )
    st.write(place.offset, area, write_timeout)
    paxos.init_resource(st, lease, sizes, force=True, write_timeout=write_timeout)  # checked above
    return header


def _refuse_over_index(st: Storage, place: Place, length: int, timeout: float) -> None:
    """An index may be formatted over (its leases stay in their slots); anything else in the
    area is refused as ``init`` refuses it: a lease, a disk image."""
    if st.size() >= place.offset + st.sector_size:
        head = st.read(place.offset, st.sector_size, timeout)
        if struct.unpack_from("<I", head)[0] == MAGIC:
            return
    refuse_overwrite(st, place.path, place.offset, length, f"resource index {place.lockspace}")


@contextlib.contextmanager
def _locked(
    st: Storage, place: Place, header: Header, acquirer_for: AcquirerFor, timeout: float
) -> Iterator[bytes]:
    """Hold the index's lease (without waiting for a live holder, as sanlock) and yield the
    index area read under it."""
    acq = acquirer_for(lease_of(place, header))
    token = acq.acquire(nowait=True)
    try:
        yield read_index(st, place, header, timeout)
    finally:
        acq.release(token)


def _check_aligned(place: Place, header: Header, res_offset: int) -> None:
    """sanlock's first check of a given resource offset (0 passes: no offset)."""
    if res_offset % header.sizes.align_size:
        detail = f"resource offset {res_offset} is not a multiple of the align size"
        raise errors.RindexOffset(**place.where(), detail=detail)


def _write_entry(
    st: Storage, place: Place, header: Header, area: bytes, i: int, e: Entry, timeout: float
) -> None:
    """Rewrite the sector holding entry ``i``, the rest of it as read under the lease."""
    ss = header.sizes.sector_size
    at = entry_at(header, i)
    start = at // ss * ss
    sector = bytearray(area[start : start + ss])
    sector[at - start : at - start + ENTRY.size] = e.pack()
    st.write(place.offset + start, bytes(sector), timeout)


def create(
    st: Storage,
    place: Place,
    name: str,
    num_hosts: int,
    acquirer_for: AcquirerFor,
    probe: int,
    timeout: float,
) -> int:
    """A new resource lease ``name`` in the first free slot; returns its offset."""
    ondisk.encode_name(name, "resource")
    header = read_header(st, place, probe, timeout)
    with _locked(st, place, header, acquirer_for, timeout) as area:
        i = find(header, area)
        if i < 0:
            raise errors.RindexNotFound(**place.where(), detail="no free slot is left")
        res = paxos.Resource(place.lockspace, name, place.path, slot_offset(place, header, i))
        # a free lease of this lockspace in a slot the index says is free may be replaced
        what = f"resource {res.label}"
        refuse_overwrite(st, place.path, res.offset, header.sizes.align_size, what, place.lockspace)
        paxos.init_resource(
            st, res, header.sizes, num_hosts=num_hosts, force=True, write_timeout=timeout
        )
        _write_entry(st, place, header, area, i, Entry(name, res.offset), timeout)
        return res.offset


def delete(
    st: Storage,
    place: Place,
    entry: Entry,
    acquirer_for: AcquirerFor,
    probe: int,
    timeout: float,
) -> None:
    """Clear the entry of ``entry.name``, then its lease (a held lease is refused before
    anything). ``entry.offset`` is only checked for alignment, as by sanlock."""
    header = read_header(st, place, probe, timeout)
    _check_aligned(place, header, entry.offset)
    name = entry.name
    with _locked(st, place, header, acquirer_for, timeout) as area:
        i = find(header, area, name)
        if i < 0:
            raise errors.RindexNotFound(**place.where(), detail=f"no entry names {name!r}")
        res = paxos.Resource(place.lockspace, name, place.path, slot_offset(place, header, i))
        what = f"resource {res.label}"
        refuse_overwrite(st, place.path, res.offset, header.sizes.align_size, what)
        _write_entry(st, place, header, area, i, Entry("", 0), timeout)
        paxos.init_resource(st, res, header.sizes, clear=True, force=True, write_timeout=timeout)


def update(
    st: Storage,
    place: Place,
    entry: Entry,
    flags: tuple[bool, bool],
    acquirer_for: AcquirerFor,
    probe: int,
    timeout: float,
) -> Entry:
    """``flags`` (remove, add): clear the entry of ``entry.offset`` (sanlock's RXUP_REM),
    else set ``entry`` (RXUP_ADD: name and offset needed); returns what the slot now says.
    The checks come in sanlock's order: the header, the offset's alignment, the request."""
    header = read_header(st, place, probe, timeout)
    _check_aligned(place, header, entry.offset)
    remove, add = flags
    if not entry.offset or not (remove or (add and entry.name)):
        raise errors.InvalidArgument(
            what="update_rindex", detail="removing needs an offset, adding a name and an offset"
        )
    with _locked(st, place, header, acquirer_for, timeout) as area:
        i = slot_of(place, header, entry.offset)
        new = Entry("", 0) if remove else entry
        _write_entry(st, place, header, area, i, new, timeout)
        return new


def rebuild(
    st: Storage, place: Place, acquirer_for: AcquirerFor, probe: int, timeout: float
) -> list[Entry]:
    """Recreate every entry from the leases found in the slots; returns the entries."""
    header = read_header(st, place, probe, timeout)
    with _locked(st, place, header, acquirer_for, timeout) as area:
        ss = header.sizes.sector_size
        found: list[Entry] = []
        new = bytearray(area[:ss]) + bytearray(len(area) - ss)
        end = st.size()
        for i in range(header.slots):
            off = slot_offset(place, header, i)
            if off + ss > end:
                break
            leader = st.read(off, ss, timeout)
            if struct.unpack_from("<I", leader)[0] != ondisk.PAXOS_DISK_MAGIC:
                continue
            e = Entry(ondisk.Leader.unpack(leader).resource_name, off)
            new[entry_at(header, i) : entry_at(header, i) + ENTRY.size] = e.pack()
            found.append(e)
        st.write(place.offset, bytes(new), timeout)
        return found
