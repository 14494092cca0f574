"""An in-memory stand-in for the API server's HostId endpoints, faithful where safety depends on it.

It keeps the semantics allocation relies on: names are unique (409 AlreadyExists), the CRD's CEL
rule forces ``<lockspace>.<hostId>`` names, every write bumps resourceVersion, preconditions fail
with 409 Conflict, a finalizer turns delete into "terminating", and an object whose last
finalizer goes away disappears. ``tests/unit/test_operator_fakes.py`` checks these behaviours.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import threading
from collections.abc import Callable
from typing import Any

from vmlease_api import naming
from vmlease_api.allocation import HostIdRecord
from vmlease_api.errors import AlreadyExists, Conflict, NotFound


class Invalid(Exception):
    """422: the object violates the CRD schema (here: the naming rule)."""


class FakeHostIdStore:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes = 0
        self.reads = 0
        self._versions = itertools.count(1)
        self._lock = threading.RLock()
        #: Called with the body just before a create is applied: lets a test slip another
        #: writer's create in between an allocator's read and its write.
        self.before_create: list[Callable[[dict[str, Any]], None]] = []

    def _bump(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def list_for_node(self, lockspace: str, node: str) -> list[HostIdRecord]:
        with self._lock:
            self.reads += 1
            labels = naming.hostid_labels(lockspace, node)
            return [
                HostIdRecord.from_body(o)
                for o in self.objects.values()
                if all(o["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())
                and o["spec"]["nodeName"] == node
            ]

    def records(self, lockspace: str | None = None) -> list[HostIdRecord]:
        """What a fully caught-up watch would show (tests only; not a HostIdStore method)."""
        with self._lock:
            return [
                HostIdRecord.from_body(o)
                for o in self.objects.values()
                if lockspace is None or o["spec"]["lockspace"] == lockspace
            ]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        for hook in list(self.before_create):
            hook(body)
        with self._lock:
            self.writes += 1
            name, spec = body["metadata"]["name"], body["spec"]
            if name != naming.hostid_name(spec["lockspace"], spec["hostId"]):
                raise Invalid(f"HostId {name} must be named <lockspace>.<hostId>")
            if name in self.objects:
                raise AlreadyExists(name)
            obj = copy.deepcopy(body)
            obj.pop("status", None)  # the status subresource ignores status on create
            self._bump(obj)
            self.objects[name] = obj
            return copy.deepcopy(obj)

    def _get(self, name: str, resource_version: str | None) -> dict[str, Any]:
        obj = self.objects.get(name)
        if obj is None:
            raise NotFound(name)
        if resource_version is not None and obj["metadata"]["resourceVersion"] != resource_version:
            raise Conflict(f"{name}: resourceVersion {resource_version} is stale")
        return obj

    def delete(self, name: str, resource_version: str) -> dict[str, Any] | None:
        with self._lock:
            self.writes += 1
            obj = self._get(name, resource_version)
            if not obj["metadata"].get("finalizers"):
                del self.objects[name]
                return None
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
                self._bump(obj)
            return copy.deepcopy(obj)

    def set_finalizers(self, name: str, finalizers: list[str], resource_version: str) -> None:
        with self._lock:
            self.writes += 1
            obj = self._get(name, resource_version)
            obj["metadata"]["finalizers"] = list(finalizers)
            self._bump(obj)
            if not finalizers and obj["metadata"].get("deletionTimestamp"):
                del self.objects[name]

    def patch_status(
        self, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        """What an agent does: claim a HostId or report a state (precondition optional)."""
        with self._lock:
            self.writes += 1
            obj = self._get(name, resource_version)
            obj.setdefault("status", {}).update(status)
            self._bump(obj)
            return copy.deepcopy(obj)

    def claim(self, record: HostIdRecord) -> HostIdRecord:
        """The agent's claim: state Joining, guarded by the version it decided on. An agent
        never claims a HostId that is being deleted."""
        if record.terminating or record.resource_version is None:
            raise Conflict(record.name)
        body = self.patch_status(record.name, {"state": "Joining"}, record.resource_version)
        return HostIdRecord.from_body(body)

    def report(self, name: str, state: str, since: datetime.datetime | None = None) -> None:
        """Another agent reports the delta lease's state (no precondition: it reports disk)."""
        since = since or datetime.datetime.now(datetime.UTC)
        self.patch_status(name, {"state": state, "stateSince": since.isoformat()})
