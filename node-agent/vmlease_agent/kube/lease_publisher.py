"""Publishing the leases this node holds as DiskLease status (``kubectl get disklease``).

Writes only on change: the agent's lease table is compared with what was last published, so a
node with fifty running VMs costs nothing while nothing happens. A write is a read-modify-write
with a resourceVersion precondition (``lease_status`` explains why). Every
``resync_seconds`` every DiskLease naming this node is checked again with one list: that clears
holders whose release happened while the agent or the API server was away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from vmlease_api.models import DiskLease, DiskLeaseStatus, Lockspace
from vmlease_api.patch import merge_patch

from vmlease_agent.core.snapshot import LeaseSnapshot
from vmlease_agent.kube import lease_status
from vmlease_agent.kube.api import DISKLEASES, Conflict, KubeApi, NotFound
from vmlease_agent.kube.decisions import utc

log = logging.getLogger(__name__)

#: How many read-modify-write rounds one write tries before leaving it to the next pass.
CONFLICT_ROUNDS = 3


class LeasePublisher:
    def __init__(
        self,
        api: KubeApi,
        node: str,
        shared_dir: str,
        wall: Callable[[], float],
        missing_retry: float,
        resync_seconds: float,
        say_once: Callable[[str, str], None],
    ) -> None:
        self.api, self.node, self.shared_dir, self.wall = api, node, shared_dir, wall
        self.missing_retry, self.resync_seconds = missing_retry, resync_seconds
        self.say_once = say_once
        #: DiskLease name -> key of what was last written (None: must be checked again)
        self.published: dict[str, tuple[Any, ...] | None] = {}
        self._missing: dict[str, float] = {}
        self._resync_at = 0.0

    def publish(
        self,
        leases: Iterable[LeaseSnapshot],
        lockspace: Callable[[str], Lockspace | None],
        mono: float,
    ) -> None:
        """Bring every DiskLease in line with ``leases`` (``Agent.snapshot().leases``).
        Raises kube_api.Unavailable when the API server is away (the caller backs off)."""
        views, skipped = lease_status.held_views(leases, self.node)
        for label in skipped:
            self.say_once(
                f"name:{label}",
                f"lease {label} has a name that cannot be a DiskLease name (a DNS label of at "
                f"most 48 characters); it is not published",
            )
        if mono >= self._resync_at:
            self._resync()
            self._resync_at = mono + self.resync_seconds
        for name, view in views.items():
            if self.published.get(name) == view.key() or mono < self._missing.get(name, 0.0):
                continue
            self._held(view, lockspace(view.lockspace), mono)
        for name in [n for n in self.published if n not in views]:
            self._released(name)

    def _resync(self) -> None:
        items, _ = self.api.list(DISKLEASES)
        for name in self.published:
            self.published[name] = None
        for obj in items:
            status = obj.get("status") or {}
            holders = [status.get("holder") or {}, *(status.get("sharedHolders") or [])]
            if any(h.get("node") == self.node for h in holders):
                self.published.setdefault(obj["metadata"]["name"], None)

    def _held(self, view: lease_status.HeldView, ls: Lockspace | None, mono: float) -> None:
        for _ in range(CONFLICT_ROUNDS):
            try:
                obj = self.api.get(DISKLEASES, view.name)
            except NotFound:
                body = lease_status.auto_disk_lease(ls, view, self.shared_dir)
                if body is None:
                    self._missing[view.name] = mono + self.missing_retry
                    self.say_once(
                        f"missing:{view.name}",
                        f"lease {view.lockspace}:{view.resource} is held but no DiskLease "
                        f"{view.name} exists: create one (spec.lockspace, spec.resource, "
                        f"spec.lease) to see its holder in `kubectl get disklease`",
                    )
                    return
                try:
                    obj = self.api.create(DISKLEASES, body)
                except Conflict:
                    continue  # created meanwhile (by another holder of a shared lease)
                log.info("created DiskLease %s for an automatic disk lease", view.name)
            try:
                lease = DiskLease.model_validate(obj)
            except ValidationError as error:
                self.say_once(f"invalid:{view.name}", f"DiskLease {view.name}: {error}")
                return
            mismatch = lease_status.location_mismatch(lease, view, self.shared_dir)
            new = lease_status.held_status(
                lease.status, view, self.node, utc(self.wall()), lease.metadata.generation, mismatch
            )
            if self._patch(lease, new):
                self.published[view.name] = view.key()
                self._missing.pop(view.name, None)
                log.info("DiskLease %s: %s", view.name, _summary(new))
                return

    def _released(self, name: str) -> None:
        for _ in range(CONFLICT_ROUNDS):
            try:
                lease = DiskLease.model_validate(self.api.get(DISKLEASES, name))
            except (NotFound, ValidationError):
                self.published.pop(name, None)
                return
            new = lease_status.released_status(
                lease.status, self.node, utc(self.wall()), lease.metadata.generation
            )
            if new is None or self._patch(lease, new):
                self.published.pop(name, None)
                if new is not None:
                    log.info("DiskLease %s: %s", name, _summary(new))
                return

    def report_orphans(
        self, lockspace: str, rows: Iterable[Mapping[str, Any]], failover: int
    ) -> None:
        """As the lockspace's reporter: mark other hosts' leases Orphaned (or Held again) from
        the disk rows (``lease_status.orphan_updates``). One list per report; a conflicting
        write is left to the next report."""
        items, _ = self.api.list(DISKLEASES)
        leases = []
        for obj in items:
            try:
                leases.append(DiskLease.model_validate(obj))
            except ValidationError:
                continue
        now = utc(self.wall())
        for lease, new in lease_status.orphan_updates(leases, lockspace, rows, failover, now):
            if lease.status.holder is not None and lease.status.holder.node == self.node:
                continue  # our own: the publisher writes it
            if self._patch(lease, new):
                log.info("DiskLease %s: %s", lease.metadata.name, _summary(new))

    def _patch(self, lease: DiskLease, new: DiskLeaseStatus) -> bool:
        """Write ``new`` over ``lease.status`` if the object is unchanged; False on conflict."""
        patch = merge_patch(lease.status.to_api(), new.to_api())
        if not patch:
            return True
        try:
            self.api.patch_status(
                DISKLEASES, lease.metadata.name, patch, lease.metadata.resource_version
            )
        except Conflict:
            return False
        except NotFound:
            return True
        return True


def _summary(status: DiskLeaseStatus) -> str:
    holder = status.holder
    who = f" by {holder.node} (host_id {holder.host_id}, pid {holder.pid})" if holder else ""
    return f"{status.phase}{who}, lver {status.lver}"
