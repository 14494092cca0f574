"""Errors of the lease engine: one class per cause, with sanlock's code and a message template.

Every message names the lease, where it lives (path and offset), what went wrong and what to do.
``code`` is sanlock's result code where one exists (``src/sanlock_rv.h``), so the CLI can exit with
the number an admin knows and python-sanlock users see the same ``errno``.
"""

from __future__ import annotations

import errno
from typing import ClassVar

from vmlease_agent import engine
from vmlease_agent.engine import Templated


class LeaseError(Templated):
    """Base class. Subclasses set ``code`` and ``template`` (``str.format`` with the kwargs:
    the pattern of every vmlease error, ``engine.Templated``)."""

    code: ClassVar[int] = engine.SANLK_ERROR


# ---- input and layout ---------------------------------------------------------------------


class InvalidArgument(LeaseError):
    code = -errno.EINVAL
    template = "{what}: {detail}"


class NameTooLong(LeaseError):
    code = -errno.ENAMETOOLONG
    template = (
        "{kind} name {name!r} is {length} bytes; sanlock stores names in 48 bytes: "
        "choose a name of at most 48 bytes"
    )


class OffsetNotAligned(LeaseError):
    code = -errno.EINVAL
    template = (
        "{lease} at {path}:{offset}: offset {offset} is not a multiple of the {align_name} "
        "align size ({align} bytes); use an offset such as {suggestion}"
    )


class BadSizes(LeaseError):
    code = engine.SANLK_ADDLS_SIZES
    template = (
        "invalid sector/align size combination {sector_size}/{align_size}: use 512 with 1M, "
        "or 4096 with 1M, 2M, 4M or 8M"
    )


class HostIdOutOfRange(LeaseError):
    code = engine.SANLK_ADDLS_INVALID_HOSTID
    template = (
        "{lease} at {path}:{offset}: host_id {host_id} is out of range; this lockspace "
        "holds host_ids 1..{max_hosts}"
    )


class StorageUnusable(LeaseError):
    code = -errno.ENODEV
    template = "{path}: {detail}"


class Truncated(LeaseError):
    code = -errno.ENODATA
    template = (
        "{lease} at {path}:{offset}: the storage ends at {size} bytes but the lease needs "
        "{needed} bytes from offset {offset}; the file was truncated or the offset is wrong"
    )


class RefuseOverwrite(LeaseError):
    code = -errno.EEXIST
    template = "{lease} at {path}:{offset}: refusing to initialise: {detail}"


# ---- on-disk validation (sanlock -214, -223..-229) ---------------------------------------


class LeaderMagic(LeaseError):
    code = engine.SANLK_LEADER_MAGIC  # "Lease does not exist on storage"
    template = (
        "{lease} at {path}:{offset}: no {kind} lease on storage (magic {magic:#010x}, "
        "expected {expected:#010x}){hint}"
    )


class LeaderVersion(LeaseError):
    code = engine.SANLK_LEADER_VERSION
    template = (
        "{lease} at {path}:{offset}: on-disk format version {version:#010x} is not "
        "recognised (expected major {expected:#010x}); it was written by an incompatible tool"
    )


class LeaderSectorSize(LeaseError):
    code = engine.SANLK_LEADER_SECTORSIZE
    template = (
        "{lease} at {path}:{offset}: the lease was written with sector size "
        "{on_disk} but {detail}; use the sector size the lease was initialised with"
    )


class LeaderLockspace(LeaseError):
    code = engine.SANLK_LEADER_LOCKSPACE
    template = (
        "{lease} at {path}:{offset}: the lease on storage belongs to lockspace "
        "{found!r}, not {expected!r}; check the lockspace name and the offset"
    )


class LeaderResource(LeaseError):
    code = engine.SANLK_LEADER_RESOURCE
    template = (
        "{lease} at {path}:{offset}: the lease on storage is resource {found!r}, not "
        "{expected!r}; check the resource name and the offset"
    )


class LeaderNumHosts(LeaseError):
    code = engine.SANLK_LEADER_NUMHOSTS
    template = (
        "{lease} at {path}:{offset}: the lease was initialised for {num_hosts} hosts and "
        "cannot be used by host_id {host_id}; re-initialise it with a larger -n"
    )


class LeaderChecksum(LeaseError):
    code = engine.SANLK_LEADER_CHECKSUM
    template = (
        "{lease} at {path}:{offset}: leader checksum mismatch (stored {stored:#010x}, "
        "computed {computed:#010x}): the record is corrupt; nothing was written"
    )


class DblockChecksum(LeaseError):
    code = engine.SANLK_DBLOCK_CHECKSUM
    template = (
        "{lease} at {path}:{offset}: paxos block of host_id {host_id} is corrupt "
        "(checksum mismatch); nothing was written"
    )


# ---- I/O ----------------------------------------------------------------------------------


class IoTimeout(LeaseError):
    code = engine.SANLK_AIO_TIMEOUT
    template = (
        "{op} of {length} bytes at {path}:{offset} did not complete within the io_timeout "
        "of {timeout}s: the storage is stalled or too slow; check the path to the storage"
    )


class IoFailed(LeaseError):
    code = -errno.EIO
    template = "{op} of {length} bytes at {path}:{offset} failed: {detail}"


class WriteAbandoned(LeaseError):
    code = -errno.EBUSY
    template = (
        "write of {length} bytes at {path}:{offset} refused: our write of {held_length} bytes "
        "at {path}:{held_offset} was abandoned at its io_timeout {ago:.1f}s ago and may still "
        "land over it; this part of the lease area cannot be written until that write "
        "completes or fails: check the path to the storage (multipath queueing, NFS server)"
    )


# ---- delta leases ---------------------------------------------------------------------------


class HostIdBusy(LeaseError):
    code = engine.SANLK_HOSTID_BUSY
    template = (
        "{lease} at {path}:{offset}: host_id {host_id} is in use by another host "
        "({holder}); pick another host_id, or stop the host that uses it"
    )


class HostNameCollision(LeaseError):
    code = engine.SANLK_HOSTID_BUSY  # the host_id is in use, by a machine with our name
    template = (
        "{lease} at {path}:{offset}: host_id {host_id} is held under our host name {name!r} by "
        "another machine (machine {theirs}; this machine is {ours}): two machines use the same "
        "node name; give each a unique name (--node-name) before joining"
    )


class RenewOwner(LeaseError):
    code = engine.SANLK_RENEW_OWNER
    template = (
        "{lease} at {path}:{offset}: our delta lease of host_id {host_id} was taken over "
        "({detail}); another host uses the same host_id"
    )


class RenewDiff(LeaseError):
    code = engine.SANLK_RENEW_DIFF
    template = (
        "{lease} at {path}:{offset}: our delta lease of host_id {host_id} changed on disk "
        "since our last renewal; another writer uses the same host_id"
    )


# ---- paxos leases ---------------------------------------------------------------------------


class DblockLver(LeaseError):
    code = engine.SANLK_DBLOCK_LVER
    template = "{lease}: lost the ballot, another host acquired a newer lease version"


class DblockMbal(LeaseError):
    code = engine.SANLK_DBLOCK_MBAL
    template = "{lease}: lost the ballot to another host with a higher ballot number"


class AcquireLver(LeaseError):
    code = engine.SANLK_ACQUIRE_LVER
    template = "{lease}: lease version is {found}, not the requested {expected}"


class AcquireIdLive(LeaseError):
    code = engine.SANLK_ACQUIRE_IDLIVE  # "Lease is held by another host"
    template = (
        "disk lease {lease} at {path}:{offset} is held by host {owner_id} "
        "(node {owner_name}, generation {owner_generation}){renewed}; it cannot be taken while "
        "that host is alive: stop its user there, or wait until it releases"
    )


class OwnerRecordOlder(LeaseError):
    code = engine.SANLK_ACQUIRE_IDLIVE  # to its clients the lease is held, not takeable
    template = (
        "disk lease {lease} at {path}:{offset} is held by host {owner_id} generation "
        "{owner_generation}, but the lockspace {lockspace} holds an older record for host_id "
        "{owner_id} (generation {record_generation}): the lockspace area was re-initialised or "
        "overwritten, and its owner's liveness, io_timeout and watchdog timeout are unknown, so "
        "the lease cannot be taken safely; make sure that host is stopped (node powered off, "
        "or its holders fenced), then re-initialise the lease with `vmlease direct init -r "
        "{lease}:{path}:{offset}`"
    )


class AcquireOwned(LeaseError):
    code = engine.SANLK_ACQUIRE_OWNED
    template = (
        "disk lease {lease} at {path}:{offset} was acquired by host {owner_id} "
        "(generation {owner_generation}) in a concurrent ballot"
    )


class AcquireOther(LeaseError):
    code = engine.SANLK_ACQUIRE_OTHER
    template = (
        "disk lease {lease} at {path}:{offset}: our ballot committed host {owner_id}'s "
        "earlier proposal; the lease belongs to host {owner_id}"
    )


class AcquireOwnedRetry(LeaseError):
    code = engine.SANLK_ACQUIRE_OWNED_RETRY
    template = (
        "disk lease {lease} at {path}:{offset} is owned by host {owner_id}, which has "
        "not been silent long enough to be declared dead ({waited:.0f}s of {needed}s); retry later"
    )


class SharedHeld(LeaseError):
    code = -errno.EAGAIN
    template = (
        "disk lease {lease} at {path}:{offset} is held shared by host(s) {hosts}; "
        "an exclusive lease is possible once they release it"
    )


class LvbNotAcquired(LeaseError):
    code = -errno.EINVAL
    template = (
        "disk lease {lease} was acquired without its lock value block: acquire it with "
        "SANLK_ACQUIRE_LVB (python: lvb=True) to read or set it"
    )


class LvbTooBig(LeaseError):
    code = -errno.E2BIG
    template = "lock value block of {lease}: {size} bytes, at most one sector ({limit} bytes)"


class LvbNotWritten(LeaseError):
    """Raised after the release or convert it belongs to was done: the lease must not stay
    held because its value block could not be written (sanlock logs the same and goes on)."""

    code = engine.SANLK_ERROR
    template = (
        "disk lease {lease}: its lock value block was not written ({cause}); the {done} went "
        "ahead all the same, so the next holder reads the value before this one"
    )


class ReleaseLver(LeaseError):
    code = engine.SANLK_RELEASE_LVER
    template = (
        "{lease} at {path}:{offset}: cannot release: lease version on disk is {found}, "
        "ours is {expected}"
    )


class ReleaseOwner(LeaseError):
    code = engine.SANLK_RELEASE_OWNER
    template = "{lease} at {path}:{offset}: cannot release: {detail}"


class RequestOld(LeaseError):
    code = engine.SANLK_REQUEST_OLD
    template = (
        "{lease}: request for lease version {requested} is stale; the lease is already "
        "at version {current}"
    )


class RequestLver(LeaseError):
    code = engine.SANLK_REQUEST_LVER
    template = "{lease}: a request for a newer lease version ({existing}) is already pending"


class RequestMagic(LeaseError):
    code = engine.SANLK_REQUEST_MAGIC
    template = "{lease} at {path}:{offset}: the request record is not valid (not initialised?)"


# ---- resource index (sanlock -274..-278) -------------------------------------------------


class RindexMagic(LeaseError):
    code = engine.SANLK_RINDEX_MAGIC
    template = (
        "resource index at {path}:{offset}: no index there (magic {magic:#010x}); format one "
        "with `sanlock client format -x LOCKSPACE:PATH:OFFSET`, or check the offset"
    )


class RindexVersion(LeaseError):
    code = engine.SANLK_RINDEX_VERSION
    template = (
        "resource index at {path}:{offset}: on-disk version {version:#010x} is not a major "
        "version 1 index: written by a newer sanlock?"
    )


class RindexLockspace(LeaseError):
    code = engine.SANLK_RINDEX_LOCKSPACE
    template = "resource index at {path}:{offset} belongs to lockspace {found!r}, not {expected!r}"


class RindexOffset(LeaseError):
    code = engine.SANLK_RINDEX_OFFSET
    template = "resource index at {path}:{offset}: {detail}"


class RindexDiff(LeaseError):
    code = engine.SANLK_RINDEX_DIFF
    template = (
        "resource index at {path}:{offset}: the entry for offset {res_offset} names "
        "{found!r}, not {expected!r}"
    )


class RindexNotFound(LeaseError):
    code = -errno.ENOENT
    template = "resource index at {path}:{offset}: {detail}"


class RindexUnserialised(LeaseError):
    code = -errno.EOPNOTSUPP
    template = (
        "resource index at {path}:{offset}: {op} without a lockspace would write the index "
        "without holding its rindex lease (another host may be changing it): join lockspace "
        "{lockspace} and run it without the no-lockspace flag"
    )
