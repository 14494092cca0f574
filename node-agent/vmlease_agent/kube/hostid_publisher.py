"""Writing HostId status: this node's own ids, and other nodes' ids as read on disk.

Own ids: the claim is the only write with a resourceVersion precondition (it is what orders the
agent against the operator's removal of unclaimed extras, see ``vmlease_operator.hostid_writes``);
later writes are merge patches of fields only this node's agent writes, rate-limited by
``kube_logic.WriteGate`` so that renewals never become API writes. Other nodes' ids: written by
one reporter per lockspace, each guarded by the resourceVersion it was decided on, so a node that
came back and wrote Live itself is never overwritten with an older disk reading.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from vmlease_api import naming
from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import HostId, HostIdStatus, HostState
from vmlease_api.patch import merge_patch

from vmlease_agent.core.snapshot import FencedSnapshot
from vmlease_agent.kube import decisions as kube_logic
from vmlease_agent.kube.api import HOSTIDS, Conflict, KubeApi, NotFound, Refused
from vmlease_agent.kube.decisions import Local
from vmlease_agent.kube.informer import Informer

log = logging.getLogger(__name__)


class HostIdPublisher:
    def __init__(
        self,
        api: KubeApi,
        node: str,
        hostids: Informer,
        wall: Callable[[], float],
        interval: float,
        say_once: Callable[[str, str], None],
    ) -> None:
        self.api, self.node, self.hostids, self.wall = api, node, hostids, wall
        self.say_once = say_once
        self.gate = kube_logic.WriteGate(interval)

    def _model(self, record: HostIdRecord) -> HostId | None:
        obj = self.hostids.get(record.name)
        if obj is None:
            return None
        try:
            return HostId.model_validate(obj)
        except ValidationError:
            return None

    def claim(self, record: HostIdRecord, condition: tuple[bool, str, str], mono: float) -> None:
        """Write Joining with the resourceVersion the keeper rule was applied to."""
        model = self._model(record)
        old = model.status if model is not None else HostIdStatus()
        now = self.wall()
        status = kube_logic.own_status(
            old, HostState.JOINING, self.node, kube_logic.utc(now), None, now, condition
        )
        try:
            new = self.api.patch_status(
                HOSTIDS, record.name, status.to_api(), record.resource_version
            )
        except (Conflict, NotFound):
            return  # changed or gone: the watch brings the new state, the next pass decides
        self.hostids.apply("MODIFIED", new)
        self.gate.done(record.name, kube_logic.status_key(status), mono)
        log.info("claimed HostId %s (host_id %d)", record.name, record.host_id)

    def note(self, record: HostIdRecord, condition: tuple[bool, str, str], mono: float) -> None:
        """Explain on an unclaimed HostId why the agent does not claim it (conditions only: a
        state would be a claim)."""
        model = self._model(record)
        if model is None:
            return
        ok, reason, message = condition
        conditions = kube_logic.put_condition(
            model.status.conditions,
            kube_logic.JOINED,
            ok,
            reason,
            message,
            kube_logic.utc(self.wall()),
        )
        key = (None, None, ok, reason)
        if not self.gate.due(record.name, key, mono):
            return
        with contextlib.suppress(Conflict, NotFound, Refused):
            new = self.api.patch_status(
                HOSTIDS,
                record.name,
                {"conditions": [c.to_api() for c in conditions]},
                record.resource_version,
            )
            self.hostids.apply("MODIFIED", new)
        self.gate.done(record.name, key, mono)

    def write(
        self,
        record: HostIdRecord,
        state: HostState,
        item: Local | None,
        condition: tuple[bool, str, str],
        mono: float,
        fenced: FencedSnapshot | None = None,
    ) -> bool:
        """Bring the status up to date if due; True once it says ``state``."""
        model = self._model(record)
        if model is None:
            return False
        old = model.status
        now = self.wall()
        status = kube_logic.own_status(
            old, state, self.node, kube_logic.utc(now), item, now, condition, fenced
        )
        key = kube_logic.status_key(status)
        if not self.gate.due(record.name, key, mono):
            return old.state == state
        patch = merge_patch(old.to_api(), status.to_api())
        if patch:
            try:
                new = self.api.patch_status(HOSTIDS, record.name, patch)
            except NotFound:
                self.gate.forget(record.name)
                return False
            except Refused as error:
                self.gate.done(record.name, key, mono)  # retried at the interval, not per pass
                self.say_once(f"refused:{record.name}", f"HostId {record.name}: {error}")
                return False
            self.hostids.apply("MODIFIED", new)
        self.gate.done(record.name, key, mono)
        return True

    def report_peers(self, lockspace: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Write other nodes' HostIds whose delta lease failed, died or was freed on disk."""
        items, _ = self.api.list(HOSTIDS, f"{naming.LABEL_LOCKSPACE}={lockspace}")
        models = []
        for obj in items:
            with contextlib.suppress(ValidationError):
                models.append(HostId.model_validate(obj))
        now = kube_logic.utc(self.wall())
        for report in kube_logic.peer_reports(models, list(rows), self.node, now):
            try:
                self.api.patch_status(HOSTIDS, report.name, report.status, report.resource_version)
            except (Conflict, NotFound):
                continue
            log.info("reported HostId %s as %s (read on disk)", report.name, report.state)
