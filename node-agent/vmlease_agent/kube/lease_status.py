"""DiskLease status as plain functions: what this node's leases say, merged into an object.

A DiskLease is a cache of the disk, written by the agents of the nodes that hold the lease.
The rules that keep it right when nodes write concurrently:

* an exclusive hold *replaces* whatever holder the object named: the disk decides who holds
  it, and only the holder's node writes "held";
* a release clears only this node's entries, and is written with a resourceVersion
  precondition after reading the object, so a release that arrives late (after another node
  acquired and wrote itself in) finds the new holder and leaves it alone
  (``released_status`` returns None);
* shared holders are merged per node: each node replaces only its own entries.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmlease_api import GROUP, naming
from vmlease_api.models import (
    DNS_LABEL,
    DiskLease,
    DiskLeaseSpec,
    DiskLeaseStatus,
    Holder,
    LeaseLocation,
    LeasePhase,
    Lockspace,
    ObjectMeta,
)

from vmlease_agent.core import requests
from vmlease_agent.core.snapshot import LeaseSnapshot
from vmlease_agent.kube.decisions import put_condition, relative_path, resolve_path, utc

HELD, SYNCED = "Held", "Synced"
#: Label on DiskLeases the agent created by itself (automatic disk leases).
LABEL_AUTO = f"{GROUP}/auto"
#: Label on an automatic DiskLease whose name hashes a stable disk identity, not a path
#: (``virt.domain``, "Stable identities"): ``kubectl get dl -l vmlease.io/disk-identity=ID``.
LABEL_DISK_IDENTITY = f"{GROUP}/disk-identity"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class HeldView:
    """What this node holds of one resource: one entry per local holder (shared leases may
    have several local processes; the disk has one mark per host)."""

    name: str
    lockspace: str
    resource: str
    path: str
    offset: int
    lver: int
    shared: bool
    holders: tuple[Holder, ...] = field(default=())
    #: a pending request to give it up, as the holder's agent examined it ("" if none)
    request: str = ""
    #: what the lease name hashes, as the acquirer said: a disk's canonical path or identity
    disk: str | None = None

    def key(self) -> tuple[Any, ...]:
        """Equal keys: the published status is still right."""
        holders = tuple(h.model_dump_json() for h in self.holders)
        return (self.lver, self.shared, holders, self.request)


def held_views(leases: Iterable[LeaseSnapshot], node: str) -> tuple[dict[str, HeldView], list[str]]:
    """The agent's leases (``Agent.snapshot().leases``) grouped by DiskLease name, and the
    labels of leases whose names cannot be object names (no DiskLease is possible for them)."""
    grouped: dict[str, list[LeaseSnapshot]] = {}
    skipped = []
    for lease in leases:
        name = naming.disklease_name(lease.lockspace, lease.resource)
        if not _object_name_ok(lease.lockspace, lease.resource):
            skipped.append(lease.lease)
            continue
        grouped.setdefault(name, []).append(lease)
    views = {}
    for name, items in grouped.items():
        items = sorted(items, key=lambda x: (x.since or 0, x.holder.key))
        first = items[0]
        views[name] = HeldView(
            name=name,
            lockspace=first.lockspace,
            resource=first.resource,
            path=first.path,
            offset=first.offset,
            lver=max(x.lver for x in items),
            shared=first.shared,
            holders=tuple(_holder(x, node) for x in items),
            request=next((_request_text(x) for x in items if x.request), ""),
            disk=next((x.disk_path for x in items if x.disk_path), None),
        )
    return views, skipped


def _request_text(lease: LeaseSnapshot) -> str:
    assert lease.request is not None
    lver, mode = lease.request
    how = {requests.FORCE: "SIGKILL", requests.GRACEFUL: "its kill command or SIGTERM"}.get(
        mode, f"force mode {mode}"
    )
    return f"another host requested it (lver {lver}): the holder is being stopped ({how})"


_NAME = re.compile(DNS_LABEL)


def _object_name_ok(lockspace: str, resource: str) -> bool:
    """sanlock names may hold characters object names may not (capitals, ``_``)."""
    return all(len(p) <= 48 and _NAME.match(p) for p in (lockspace, resource))


def _holder(lease: LeaseSnapshot, node: str) -> Holder:
    who = lease.holder
    return Holder(
        node=node,
        host_id=lease.host_id,
        generation=lease.generation,
        pid=who.pid or None,
        process=(who.shown_as or None) if who.domain is None else None,
        domain=who.domain,
        since=utc(lease.since) if lease.since else None,
    )


def _holder_text(h: Holder) -> str:
    who = f"domain {h.domain}" if h.domain else (h.process or "a placeholder")
    pid = f", pid {h.pid}" if h.pid else ""
    return f"node {h.node} (host_id {h.host_id}, {who}{pid})"


def held_status(
    old: DiskLeaseStatus,
    view: HeldView,
    node: str,
    now: datetime.datetime,
    generation: int | None,
    spec_mismatch: str = "",
) -> DiskLeaseStatus:
    """The status a DiskLease should have while this node holds it (the disk is the truth: an
    exclusive hold replaces any holder the object named)."""
    new = old.model_copy(deep=True)
    new.lver = view.lver
    new.free_after = None
    new.observed_generation = generation
    if view.shared:
        others = [h for h in old.shared_holders if h.node != node]
        new.phase = LeasePhase.SHARED
        new.holder = None
        new.shared_holders = [*others, *view.holders]
        message = "shared by " + ", ".join(_holder_text(h) for h in new.shared_holders)
    else:
        new.phase = LeasePhase.CONTENDED if view.request else LeasePhase.HELD
        new.holder = view.holders[0]
        new.shared_holders = []
        message = f"held by {_holder_text(view.holders[0])}, lver {view.lver}"
        if view.request:
            message += f"; {view.request}"
    new.conditions = put_condition(new.conditions, HELD, True, new.phase.value, message, now)
    new.conditions = _sync_condition(new.conditions, node, spec_mismatch, now)
    return new


def released_status(
    old: DiskLeaseStatus, node: str, now: datetime.datetime, generation: int | None
) -> DiskLeaseStatus | None:
    """The status after this node released the lease, or None when the object does not name
    this node any more (another node took it: leave its status alone)."""
    mine = old.holder is not None and old.holder.node == node
    others = [h for h in old.shared_holders if h.node != node]
    if not mine and len(others) == len(old.shared_holders):
        return None
    new = old.model_copy(deep=True)
    new.observed_generation = generation
    new.free_after = None
    new.shared_holders = others
    if mine:
        new.holder = None
    if new.holder is None:
        new.phase = LeasePhase.SHARED if others else LeasePhase.FREE
    if new.phase == LeasePhase.FREE:
        new.conditions = put_condition(
            new.conditions, HELD, False, "Released", f"released by node {node}", now
        )
    return new


def _sync_condition(conditions: list, node: str, mismatch: str, now: datetime.datetime) -> list:
    if mismatch:
        return put_condition(conditions, SYNCED, False, "LeaseLocationMismatch", mismatch, now)
    return put_condition(conditions, SYNCED, True, "FromLeaseTable", f"written by node {node}", now)


def location_mismatch(lease: DiskLease, view: HeldView, shared_dir: str) -> str:
    """Why the object's spec.lease does not describe the lease this node holds ('' if it does)."""
    where = resolve_path(shared_dir, lease.spec.lease.path)
    if (
        os.path.normpath(where) == os.path.normpath(view.path)
        and lease.spec.lease.offset == view.offset
    ):
        return ""
    return (
        f"node {view.holders[0].node} holds {view.lockspace}:{view.resource} at "
        f"{view.path}:{view.offset}, but spec.lease names {where}:{lease.spec.lease.offset}; "
        f"fix spec.lease (recreate the DiskLease) or the lease the holder was given"
    )


def auto_disk_lease(ls: Lockspace | None, view: HeldView, shared_dir: str) -> dict[str, Any] | None:
    """The DiskLease to create for an automatic disk lease, or None when this lease is not one:
    its Lockspace has ``autoDiskLeases.enabled`` and the lease file lives in that directory."""
    if ls is None or ls.spec.auto_disk_leases is None or not ls.spec.auto_disk_leases.enabled:
        return None
    rel = relative_path(shared_dir, view.path)
    directory = os.path.normpath(ls.spec.auto_disk_leases.directory)
    if (
        rel is None
        or rel.startswith("/dev/")
        or os.path.dirname(os.path.normpath(rel)) != directory
    ):
        return None
    labels = {naming.LABEL_LOCKSPACE: view.lockspace, LABEL_AUTO: "true"}
    disk_path = None
    # only what really hashes to the lease's name: a mistaken acquirer must not mislabel a lease
    if view.disk is not None and naming.disk_resource_name(view.disk) == view.resource:
        if view.disk.startswith("/"):
            disk_path = view.disk
        elif _LABEL_VALUE.match(view.disk) and len(view.disk) <= 63:
            labels[LABEL_DISK_IDENTITY] = view.disk
    return DiskLease(
        metadata=ObjectMeta(name=view.name, labels=labels),
        spec=DiskLeaseSpec(
            lockspace=view.lockspace,
            resource=view.resource,
            disk_path=disk_path,
            lease=LeaseLocation(path=rel, offset=view.offset),
        ),
    ).to_api()


def orphan_updates(
    leases: Iterable[DiskLease],
    lockspace: str,
    rows: Iterable[Mapping[str, Any]],
    failover: int,
    now: datetime.datetime,
) -> list[tuple[DiskLease, DiskLeaseStatus]]:
    """The lockspace reporter's word on other nodes' leases: a DiskLease Held (or Contended) by a
    host the disk shows failing or dead becomes Orphaned, with when it becomes free (its last
    renewal plus the safe time); back to Held if that host renews again. Only where the disk row
    carries the holder's node name (a record of an earlier holder of the id says nothing about
    this one).
    The holder's own agent cannot say any of this: it is failing or gone; a host that takes the
    lease over writes Held with itself (``held_status`` clears ``free_after``)."""
    by_id = {int(r["host_id"]): r for r in rows}
    out = []
    for lease in leases:
        status, holder = lease.status, lease.status.holder
        if lease.spec.lockspace != lockspace or holder is None:
            continue
        if status.phase not in (LeasePhase.HELD, LeasePhase.CONTENDED, LeasePhase.ORPHANED):
            continue
        row = by_id.get(holder.host_id)
        if row is None or row["name"] != holder.node[:48]:
            continue
        new = status.model_copy(deep=True)
        if row["state"] in ("fail", "dead") and status.phase != LeasePhase.ORPHANED:
            ago = row.get("renewed_ago")
            new.phase = LeasePhase.ORPHANED
            if ago is not None:
                new.free_after = (
                    now
                    - datetime.timedelta(seconds=float(ago))
                    + datetime.timedelta(seconds=failover)
                ).replace(microsecond=0)
            when = f"; free after {new.free_after.isoformat()}" if new.free_after else ""
            new.conditions = put_condition(
                new.conditions, HELD, True, LeasePhase.ORPHANED.value,
                f"held by {_holder_text(holder)}, whose host stopped renewing (read by the "
                f"lockspace's reporter){when}",
                now,
            )  # fmt: skip
        elif row["state"] == "live" and status.phase == LeasePhase.ORPHANED:
            new.phase, new.free_after = LeasePhase.HELD, None
            new.conditions = put_condition(
                new.conditions, HELD, True, LeasePhase.HELD.value,
                f"held by {_holder_text(holder)}, whose host renews again", now,
            )  # fmt: skip
        else:
            continue
        out.append((lease, new))
    return out
