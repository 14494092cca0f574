"""Conflict-safe host_id allocation through the API server: the HostId writes (create, delete,
finalizer removal) that apply ``vmlease_api.allocation``'s rules, which decide without I/O.

Design
------
The API server is the only arbiter; in-memory state (kopf indexes, this module's caches) only
makes the common case cheap and is never trusted for uniqueness.

1. **An id has one holder, by name.** A HostId is named ``<lockspace>.<hostId>`` and the CRD's
   CEL rule refuses any other name, so creating a second HostId for a taken id fails with
   409 AlreadyExists at the API server, whoever creates it: this operator, a second replica
   whose peering froze late, an operator started with ``--standalone`` by mistake, or a human.
   On 409 the allocator re-reads and tries the next free id.
2. **A node's id is found by label.** Every HostId carries ``vmlease.io/lockspace`` and
   ``vmlease.io/node`` labels. Before creating, the allocator lists the node's HostIds from the
   API server (a read), so a node that another operator served a moment ago keeps that id.
3. **Two operators may still race for one node** (both listed before either created), leaving
   the node with two HostIds. That is harmless for uniqueness: each id still has one holder.
   The extra object is removed by ``allocation.keeper``'s rule: the node's agent claims exactly
   one HostId by writing its status with a resourceVersion precondition *before* it writes the
   disk; the operator deletes an unclaimed extra with a resourceVersion precondition too. The
   API server orders the two writes, so either the claim wins (the delete fails with 409) or
   the delete wins (the claim fails with 404/409 and the agent picks the keeper).
4. **Ids are freed late.** HostIds are created with the ``vmlease.io/host-id-reuse``
   finalizer; only the operator removes it, and only when ``allocation.release_reason`` allows
   (a user's ``kubectl delete`` cannot free an id early).

Cost per node: one read (the node's HostIds), one write (the create); the handler adds one
Event. Within one process, concurrent allocations pick distinct ids under a lock, and ids this
process created or lost to a 409 are remembered until the watch has delivered them, so a burst of
new nodes does not turn into a burst of conflicts.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from vmlease_api import naming
from vmlease_api.allocation import HostIdRecord, LockspaceFull, keeper, lowest_free
from vmlease_api.errors import AlreadyExists, Conflict, NotFound
from vmlease_api.models import HostId, HostIdSpec, ObjectMeta


class HostIdStore(Protocol):
    """The API-server operations allocation and release need (implemented by ``kube`` for a
    real cluster and by ``tests/unit/fake_hostid_store.py`` for unit tests)."""

    def list_for_node(self, lockspace: str, node: str) -> list[HostIdRecord]:
        """A fresh (quorum) read of one node's HostIds in one lockspace."""

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a HostId; raises AlreadyExists when the name is taken."""

    def delete(self, name: str, resource_version: str) -> dict[str, Any] | None:
        """Delete with a resourceVersion precondition; returns the object if a finalizer keeps
        it; raises Conflict or NotFound."""

    def set_finalizers(self, name: str, finalizers: list[str], resource_version: str) -> None:
        """Replace the finalizers with a resourceVersion precondition; raises Conflict or
        NotFound."""


@dataclass(frozen=True)
class Allocation:
    record: HostIdRecord
    created: bool
    conflicts: int
    body: dict[str, Any] | None = None


def hostid_body(lockspace: str, node: str, host_id: int) -> dict[str, Any]:
    """A new HostId, born with its labels and its reuse finalizer (no extra write for either)."""
    return HostId(
        metadata=ObjectMeta(
            name=naming.hostid_name(lockspace, host_id),
            labels=naming.hostid_labels(lockspace, node),
            finalizers=[naming.HOSTID_FINALIZER],
        ),
        spec=HostIdSpec(lockspace=lockspace, node_name=node, host_id=host_id),
    ).to_api()


class Allocator:
    """Gives nodes host_ids; safe to call from many threads and many processes at once."""

    def __init__(
        self,
        store: HostIdStore,
        memory_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._memory_seconds = memory_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._node_locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
        self._reserved: dict[str, set[int]] = defaultdict(set)
        # lockspace -> id -> (node or None when lost to a 409, monotonic expiry)
        self._recent: dict[str, dict[int, tuple[str | None, float]]] = defaultdict(dict)

    def ensure(
        self, lockspace: str, node: str, max_hosts: int, known: Iterable[HostIdRecord]
    ) -> Allocation:
        """The node's HostId in the lockspace, created with the lowest free id if it has none.

        ``known``: the lockspace's HostIds as last seen by the watch (may lag; never trusted for
        uniqueness). Raises LockspaceFull when no id is free.
        """
        known = list(known)
        with self._lock:
            lock = self._node_locks[(lockspace, node)]
        with lock:
            mine = keeper(r for r in known if r.node == node)
            if mine is not None:
                return Allocation(mine, created=False, conflicts=0)
            conflicts = 0
            while True:
                fresh = keeper(self._store.list_for_node(lockspace, node))
                if fresh is not None:
                    return Allocation(fresh, created=False, conflicts=conflicts)
                host_id = self._reserve(lockspace, max_hosts, known)
                try:
                    body = self._store.create(hostid_body(lockspace, node, host_id))
                except AlreadyExists:
                    conflicts += 1
                    self._remember(lockspace, host_id, None)
                    continue
                else:
                    self._remember(lockspace, host_id, node)
                    return Allocation(HostIdRecord.from_body(body), True, conflicts, body)
                finally:
                    with self._lock:
                        self._reserved[lockspace].discard(host_id)

    def _reserve(self, lockspace: str, max_hosts: int, known: list[HostIdRecord]) -> int:
        with self._lock:
            now = self._clock()
            recent = self._recent[lockspace]
            for stale in [i for i, (_, expiry) in recent.items() if expiry <= now]:
                del recent[stale]
            taken = {r.host_id for r in known} | recent.keys() | self._reserved[lockspace]
            host_id = lowest_free(taken, max_hosts)
            if host_id is None:
                raise LockspaceFull(lockspace, max_hosts)
            self._reserved[lockspace].add(host_id)
            return host_id

    def _remember(self, lockspace: str, host_id: int, node: str | None) -> None:
        with self._lock:
            self._recent[lockspace][host_id] = (node, self._clock() + self._memory_seconds)

    def forget(self, lockspace: str, host_id: int) -> None:
        """The watch saw the id's HostId deleted: it is no longer held in the API server."""
        with self._lock:
            self._recent[lockspace].pop(host_id, None)


def release(store: HostIdStore, record: HostIdRecord) -> bool:
    """Free ``record``'s id: delete the HostId and drop the reuse finalizer, both guarded by the
    resourceVersion the release decision was made on. False when the object changed meanwhile
    (an agent claimed it, a state changed): the caller decides again on the next pass."""
    try:
        current = record
        if not record.terminating:
            if record.resource_version is None:
                return False
            body = store.delete(record.name, record.resource_version)
            if body is None:
                return True
            current = HostIdRecord.from_body(body)
        if naming.HOSTID_FINALIZER not in current.finalizers:
            return True
        if current.resource_version is None:
            return False
        rest = [f for f in current.finalizers if f != naming.HOSTID_FINALIZER]
        store.set_finalizers(current.name, rest, current.resource_version)
    except Conflict:
        return False
    except NotFound:
        return True
    return True
