"""The operator's ``hostid_writes.HostIdStore`` over the unit tests' one in-memory API server.

A thin adapter: every object, resourceVersion, precondition, finalizer and error comes from
``fake_kube_api.FakeKubeApi`` (and its own tests), the server the agent's sync is tested
against, so the operator's allocation and the agent's claims meet on the same objects. What the
adapter adds is only what the operator's tests need around it: the agent's claim written as
the agent writes it, a caught-up watch's view (``records``) and a hook to slip
another writer in between an allocator's read and its write.
``tests/unit/kopf_operator/test_operator_fakes.py``
checks the adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fake_kube_api import FakeKubeApi
from vmlease_api import naming
from vmlease_api.allocation import HostIdRecord
from vmlease_api.errors import Conflict

HOSTIDS = "hostids"


class FakeHostIdStore:
    def __init__(self, api: FakeKubeApi | None = None) -> None:
        self.api = api or FakeKubeApi()
        #: Called with the body just before a create is applied: lets a test slip another
        #: writer's create in between an allocator's read and its write.
        self.before_create: list[Callable[[dict[str, Any]], None]] = []

    # ---- the server's counters and objects, read through -------------------------------------

    @property
    def objects(self) -> dict[str, dict[str, Any]]:
        """The HostIds by name, as stored (the server's own dict: do not write to it)."""
        return self.api.objects[HOSTIDS]

    @property
    def writes(self) -> int:
        """HostId writes the server applied (refused ones are not counted)."""
        return sum(1 for _, kind, _ in self.api.writes if kind == HOSTIDS)

    @property
    def reads(self) -> int:
        return self.api.reads

    # ---- HostIdStore --------------------------------------------------------------------------

    def list_for_node(self, lockspace: str, node: str) -> list[HostIdRecord]:
        items, _ = self.api.list(HOSTIDS, label_selector=naming.node_selector(lockspace, node))
        # As the real ``Kube``: the node label may be a digest, compare the exact name too.
        return [HostIdRecord.from_body(i) for i in items if i["spec"]["nodeName"] == node]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        for hook in list(self.before_create):
            hook(body)
        return self.api.create(HOSTIDS, body)

    def delete(self, name: str, resource_version: str) -> dict[str, Any] | None:
        return self.api.delete(HOSTIDS, name, resource_version)

    def set_finalizers(self, name: str, finalizers: list[str], resource_version: str) -> None:
        self.api.set_finalizers(HOSTIDS, name, finalizers, resource_version)

    # ---- what other writers and a caught-up watch do ------------------------------------------

    def records(self, lockspace: str | None = None) -> list[HostIdRecord]:
        """What a fully caught-up watch would show (tests only; not a HostIdStore method)."""
        return [
            HostIdRecord.from_body(i)
            for i in self.api.stored(HOSTIDS)
            if lockspace is None or i["spec"]["lockspace"] == lockspace
        ]

    def claim(self, record: HostIdRecord) -> HostIdRecord:
        """The agent's claim: state Joining, guarded by the version it decided on. An agent
        never claims a HostId that is being deleted."""
        if record.terminating or record.resource_version is None:
            raise Conflict(record.name, 409)
        body = self.api.patch_status(
            HOSTIDS, record.name, {"state": "Joining"}, record.resource_version
        )
        return HostIdRecord.from_body(body)
