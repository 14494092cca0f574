"""The in-memory API server of the unit tests, faithful where the agent's sync and the operator's
host_id allocation rely on it. The agent's sync uses it directly (it implements the agent's
``KubeApi``); the operator's allocation goes through ``fake_hostid_store.FakeHostIdStore``, a
thin adapter over it, so both programs are tested against one server.

Kept: one resourceVersion counter for everything (as etcd's revision), bumped on every write;
resourceVersion preconditions that fail with Conflict; names unique per kind (AlreadyExists, a
Conflict); the CRD's naming rule for HostIds (``<lockspace>.<hostId>``, else Refused as the 422
Invalid); the status subresource (``create`` ignores ``status``, ``patch_status`` touches
nothing else); JSON merge patch semantics (``null`` removes a field); equality label selectors
and ``metadata.name`` field selectors; watches that replay changes after a resourceVersion and
answer Expired for a compacted one; finalizers that turn a delete into "terminating", and an
object that goes when its last finalizer does. Errors are the shared ``vmlease_api.errors``, as
both programs' real clients raise them. ``down = True`` makes every call fail with Unavailable,
as a lost API server does. ``tests/unit/kube/test_kube_fake_api.py`` checks these behaviours.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from vmlease_api import naming
from vmlease_api.errors import AlreadyExists, Conflict, Expired, NotFound, Refused, Unavailable

KINDS = ("nodes", "lockspaces", "hostids", "diskleases")
#: What the fake writes into metadata.deletionTimestamp (any value: only its presence counts).
DELETED_AT = "2026-01-01T00:00:00Z"


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def _labels_match(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _fields_match(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    key, _, value = selector.partition("=")
    assert key == "metadata.name", f"the fake only knows metadata.name, not {key}"
    return obj["metadata"]["name"] == value


class FakeKubeApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted = 0
        self.down = False
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.reads = 0
        self._rv = itertools.count(1)
        self._lock = threading.Condition()

    # ---- helpers for tests ----------------------------------------------------------------------

    def _check(self) -> None:
        if self.down:
            raise Unavailable("connection refused (fake API server is down)", 0)

    def _bump(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(rv)
        self.events.append((rv, kind, type_, copy.deepcopy(obj)))
        self._lock.notify_all()

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace as an admin would, status included (tests set up state)."""
        with self._lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            old = self.objects[kind].get(meta["name"])
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            self.objects[kind][meta["name"]] = obj
            self._bump(kind, "MODIFIED" if old else "ADDED", obj)
            return copy.deepcopy(obj)

    def _current(self, kind: str, name: str, resource_version: str | None) -> dict[str, Any]:
        """The stored object, checked against a resourceVersion precondition (if any)."""
        obj = self.objects[kind].get(name)
        if obj is None:
            raise NotFound(f'{kind} "{name}" not found', 404)
        if resource_version is not None and resource_version != obj["metadata"].get(
            "resourceVersion"
        ):
            raise Conflict(
                f'the object has been modified: {kind} "{name}" is at '
                f"{obj['metadata']['resourceVersion']}, not {resource_version}",
                409,
            )
        return obj

    def delete(
        self, kind: str, name: str, resource_version: str | None = None
    ) -> dict[str, Any] | None:
        """Delete, with an optional resourceVersion precondition. Returns the object when a
        finalizer keeps it (terminating; deleting it again changes nothing), else None."""
        with self._lock:
            self._check()
            obj = self._current(kind, name, resource_version)
            self.writes.append(("delete", kind, name))
            if not obj["metadata"].get("finalizers"):
                del self.objects[kind][name]
                self._bump(kind, "DELETED", obj)
                return None
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = DELETED_AT
                self._bump(kind, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def set_finalizers(
        self, kind: str, name: str, finalizers: list[str], resource_version: str | None = None
    ) -> dict[str, Any] | None:
        """A metadata patch of the finalizers. A terminating object whose last finalizer goes
        is deleted (None is returned)."""
        with self._lock:
            self._check()
            obj = self._current(kind, name, resource_version)
            self.writes.append(("set_finalizers", kind, name))
            obj["metadata"]["finalizers"] = list(finalizers)
            if not finalizers and obj["metadata"].get("deletionTimestamp"):
                del self.objects[kind][name]
                self._bump(kind, "DELETED", obj)
                return None
            self._bump(kind, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def compact(self) -> None:
        """Forget history: watches from an older resourceVersion get Expired (410)."""
        with self._lock:
            self.compacted = int(self.events[-1][0]) if self.events else 0
            self.events.clear()

    def obj(self, kind: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[kind][name])

    def stored(self, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind, as a caught-up watch would show them (not counted as a read,
        never refused: tests look, no client asked)."""
        with self._lock:
            return [copy.deepcopy(o) for o in self.objects[kind].values()]

    def status_writes(self, kind: str, name: str | None = None) -> int:
        return sum(
            1 for v, k, n in self.writes if v == "patch_status" and k == kind and name in (None, n)
        )

    # ---- KubeApi ---------------------------------------------------------------------------------

    def list(
        self, kind: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        with self._lock:
            self._check()
            self.reads += 1
            items = [
                copy.deepcopy(o)
                for o in self.objects[kind].values()
                if _labels_match(o, label_selector) and _fields_match(o, field_selector)
            ]
            rv = self.events[-1][0] if self.events else self.compacted
            return items, str(rv)

    def watch(
        self,
        kind: str,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        wait: float = 0.2,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        since = int(resource_version)
        with self._lock:
            self._check()
            if not any(rv > since for rv, *_ in self.events):
                self._lock.wait(wait)
            if since < self.compacted:
                raise Expired(f"too old resource version: {since} ({self.compacted})", 410)
            events = [e for e in self.events if e[0] > since and e[1] == kind]
        for _, _, type_, obj in events:
            if _labels_match(obj, label_selector) and _fields_match(obj, field_selector):
                yield type_, copy.deepcopy(obj)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        with self._lock:
            self._check()
            self.reads += 1
            return copy.deepcopy(self._current(kind, name, None))

    def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._check()
            name = body["metadata"]["name"]
            if kind == "hostids":
                spec = body["spec"]
                if name != naming.hostid_name(spec["lockspace"], spec["hostId"]):
                    raise Refused(
                        f"422: HostId {name}: a HostId must be named <lockspace>.<hostId>", 422
                    )
            if name in self.objects[kind]:
                raise AlreadyExists(f'{kind} "{name}" already exists', 409)
            obj = copy.deepcopy(body)
            obj.pop("status", None)  # the status subresource: create ignores it
            meta = obj["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["generation"] = 1
            meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).isoformat()
            self.objects[kind][name] = obj
            self.writes.append(("create", kind, name))
            self._bump(kind, "ADDED", obj)
            return copy.deepcopy(obj)

    def patch_status(
        self, kind: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        with self._lock:
            self._check()
            obj = self._current(kind, name, resource_version)
            new = apply_merge_patch(obj.get("status") or {}, status)
            obj["status"] = new
            self.writes.append(("patch_status", kind, name))
            self._bump(kind, "MODIFIED", obj)
            return copy.deepcopy(obj)
