"""What an area of lease storage holds: the basis of ``init``'s refusal to overwrite by mistake.

``init`` rewrites a whole align-size area. Over a live lockspace it would silently throw every host
out; over a held resource it would hand a running VM's disk to the next acquirer; over a VM image
(a wrong offset) it would destroy data. So before writing we look, and refuse unless forced.
"""

from __future__ import annotations

import struct

from . import errors, ondisk
from .directio import Storage
from .ondisk import Leader


def _describe_lockspace(area: bytes, first: Leader) -> list[str]:
    """Hosts that hold their host_id (timestamp != 0) in a lockspace area."""
    ss = first.sector_size
    held = []
    for idx in range(first.sizes.max_hosts):
        off = idx * ss
        if off + ondisk.LEADER_SIZE > len(area):
            break
        rec = area[off : off + ondisk.LEADER_SIZE]
        if struct.unpack_from("<I", rec)[0] != ondisk.DELTA_DISK_MAGIC:
            continue
        leader = Leader.unpack(rec)
        if leader.timestamp:
            held.append(
                f"host_id {idx + 1} ({leader.resource_name!r}, generation "
                f"{leader.owner_generation})"
            )
    return held


def _describe_resource(area: bytes, leader: Leader) -> list[str]:
    """The exclusive owner and shared holders of a resource area."""
    users = []
    if leader.timestamp:
        users.append(f"host_id {leader.owner_id} (generation {leader.owner_generation}) exclusive")
    ss = leader.sector_size
    for host_id in range(1, leader.num_hosts + 1):
        off = ondisk.dblock_sector_index(host_id) * ss + ondisk.MBLOCK_OFFSET
        if off + 16 > len(area):
            break
        mb = ondisk.ModeBlock.unpack(area, off)
        if mb.shared:
            users.append(f"host_id {host_id} (generation {mb.generation}) shared")
    return users


def refuse_overwrite(
    st: Storage, path: str, offset: int, length: int, target: str, reuse_in: str = ""
) -> None:
    """Raise RefuseOverwrite if the area holds live leases or data that is not a free lease.

    All-zero (fresh) areas and leases nobody holds may be (re)initialised; anything else needs
    ``--force``: the message says what is there. ``reuse_in``: a free resource lease of this
    lockspace may be replaced whatever its name (a slot a resource index says is free).
    """
    size = st.size()
    if size <= offset:
        return
    area = st.read(offset, min(length, size - offset) // 512 * 512 or 512, 60.0)
    if not any(area):
        return
    magic = struct.unpack_from("<I", area)[0]
    fields = {"lease": target, "path": path, "offset": offset}
    force = "; if that is intended, run again with --force"
    if magic in (ondisk.DELTA_DISK_MAGIC, ondisk.PAXOS_DISK_MAGIC, ondisk.PAXOS_DISK_CLEAR):
        leader = Leader.unpack(area)
        is_ls = magic == ondisk.DELTA_DISK_MAGIC
        kind = "lockspace" if is_ls else "resource"
        name = leader.space_name if is_ls else f"{leader.space_name}:{leader.resource_name}"
        try:
            users = _describe_lockspace(area, leader) if is_ls else _describe_resource(area, leader)
        except errors.LeaseError:
            users = []
        if users:
            raise errors.RefuseOverwrite(
                **fields,
                detail=f"the area holds {kind} {name} in use by {', '.join(users)}; "
                "initialising would take their leases away while they may still write" + force,
            )
        wanted_kind, _, wanted_name = target.partition(" ")
        reusable = not is_ls and reuse_in and leader.space_name == reuse_in
        if not reusable and (wanted_kind != kind or wanted_name != name):
            raise errors.RefuseOverwrite(
                **fields, detail=f"the area holds {kind} {name} (not in use)" + force
            )
        return
    first = bytes(area[:16]).hex(" ")
    raise errors.RefuseOverwrite(
        **fields,
        detail=f"the area holds data that is not a sanlock lease (first bytes {first}): "
        "the offset may point into a disk image" + force,
    )
