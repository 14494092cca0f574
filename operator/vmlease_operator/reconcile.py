"""One Lockspace's periodic pass, as a pure plan: which nodes need an id, which ids may be
released, what the status should say and which events its changes deserve.

The handlers feed it the kopf indexes (Nodes, HostIds) and carry out the plan; Node events
allocate immediately, this pass catches everything else (a Lockspace created after its nodes,
a node waiting for a full lockspace, ids to release, formatting, counters and conditions).
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmlease_agent.engine.timeouts import host_dead_seconds
from vmlease_api.allocation import HostIdRecord, ReleaseClock, keeper, release_reason
from vmlease_api.conditions import set_condition
from vmlease_api.models import (
    ConditionStatus,
    HostState,
    Lockspace,
    LockspaceSpec,
    LockspaceStatus,
)
from vmlease_api.patch import merge_patch
from vmlease_api.selector import matches

from vmlease_operator import events
from vmlease_operator.formatting import format_request

FORMATTED, READY, DEGRADED = "Formatted", "Ready", "Degraded"


def failover_seconds(spec: LockspaceSpec) -> int:
    """The safe time of a lockspace: the engine's ``host_dead_seconds`` (8N + W), the one
    formula both the agents' takeover and the operator's id reuse wait for."""
    return host_dead_seconds(spec.io_timeout_seconds, spec.watchdog_fire_timeout_seconds)


@dataclass
class Plan:
    allocate: list[str] = field(default_factory=list)
    """Selected nodes without a HostId, in name order."""
    release: list[tuple[HostIdRecord, str]] = field(default_factory=list)
    """HostIds whose id may be reused now, with the reason."""
    status_patch: dict[str, Any] = field(default_factory=dict)
    """A JSON merge patch for ``status`` (empty: nothing changed)."""
    events: list[events.Event] = field(default_factory=list)


def selected_nodes(spec: LockspaceSpec, nodes: Mapping[str, Mapping[str, str]]) -> set[str]:
    return {name for name, labels in nodes.items() if matches(spec.node_selector, labels)}


def plan(
    lockspace: Lockspace,
    nodes: Mapping[str, Mapping[str, str]],
    records: Iterable[HostIdRecord],
    clock: ReleaseClock,
    now_monotonic: float,
    now: datetime.datetime,
) -> Plan:
    """``nodes``: every Node's labels; ``records``: the lockspace's HostIds (from the watch)."""
    spec, old = lockspace.spec, lockspace.status
    records = list(records)
    # A Lockspace being deleted wants no ids any more: all are released, none allocated.
    deleting = lockspace.metadata.deletion_timestamp is not None
    selected = set() if deleting else selected_nodes(spec, nodes)
    by_node: dict[str, list[HostIdRecord]] = defaultdict(list)
    for record in records:
        by_node[record.node].append(record)
    keepers = {node: keeper(by_node[node]) for node in selected}
    out = Plan(allocate=sorted(node for node, rec in keepers.items() if rec is None))

    safe = failover_seconds(spec)
    for record in records:
        wanted = record.node in selected and keepers.get(record.node) is record
        why = release_reason(record, wanted, clock.released_for(record.name, now_monotonic), safe)
        if why is not None:
            out.release.append((record, why))

    present = [r for r in keepers.values() if r is not None]
    request = format_request(old, present, now)
    free_ids = spec.effective_max_hosts - len({r.host_id for r in records})
    # The agents' fields (formatted*, storageId, and any added later) are carried over as they
    # are: a status rebuilt from the operator's fields alone would merge-patch them away.
    new = old.model_copy(
        deep=True,
        update={
            "format_request": request,
            "allocated_hosts": sum(1 for r in records if not r.terminating),
            "live_hosts": sum(1 for r in records if r.state == HostState.LIVE),
            "failover_seconds": safe,
            "observed_generation": lockspace.metadata.generation,
        },
    )
    waiting = max(0, len(out.allocate) - max(0, free_ids))
    failing = sorted(
        f"{r.node} (host_id {r.host_id}: {r.state})"
        for r in present
        if r.state in (HostState.FAILING, HostState.DEAD)
    )
    _conditions(spec, new, waiting, failing, now)
    out.status_patch = merge_patch(old.to_api(), new.to_api())
    out.events = _condition_events(lockspace.metadata.name, old, new)
    return out


def _conditions(
    spec: LockspaceSpec,
    status: LockspaceStatus,
    waiting: int,
    failing: list[str],
    now: datetime.datetime,
) -> None:
    gen = status.observed_generation

    def put(type_: str, ok: bool, reason: str, message: str) -> None:
        value = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        status.conditions = set_condition(
            status.conditions, type_, value, reason, message, gen, now
        )

    if status.formatted:
        put(FORMATTED, True, "Formatted", f"formatted by {status.formatted_by}")
    elif status.format_request is not None:
        req = status.format_request
        put(
            FORMATTED,
            False,
            "FormatRequested",
            f"the agent on node {req.node} (host_id {req.host_id}) is asked to format {spec.path}",
        )
    else:
        put(
            FORMATTED,
            False,
            "WaitingForAgent",
            "no agent has claimed a HostId yet; the first one to claim formats the lockspace",
        )

    if not status.formatted:
        put(READY, False, "NotFormatted", "hosts join once the lockspace is formatted")
    elif not status.live_hosts:
        put(READY, False, "NoLiveHosts", "no host renews its delta lease")
    else:
        put(READY, True, "HostsLive", f"{status.live_hosts} of {status.allocated_hosts} live")

    if waiting:
        put(
            DEGRADED,
            True,
            events.LOCKSPACE_FULL,
            f"{waiting} selected node(s) wait for a host_id: all {spec.effective_max_hosts} are "
            f"held; ids of departed nodes are released after their lease is Dead or Free for "
            f"{status.failover_seconds} s",
        )
    elif failing:
        put(DEGRADED, True, "HostsFailing", "not renewing: " + ", ".join(failing))
    else:
        put(DEGRADED, False, "AsExpected", "every selected node has a host_id and none is failing")


def _condition_events(name: str, old: LockspaceStatus, new: LockspaceStatus) -> list[events.Event]:
    out = []
    if new.format_request is not None and new.format_request != old.format_request:
        req = new.format_request
        out.append(
            events.Event(
                events.NORMAL,
                events.LOCKSPACE_FORMAT_REQUESTED,
                f"lockspace {name} is to be formatted by the agent on node {req.node} "
                f"(host_id {req.host_id})",
            )
        )
    if new.formatted and not _had(old, FORMATTED):
        out.append(
            events.Event(
                events.NORMAL,
                events.LOCKSPACE_FORMATTED,
                f"lockspace {name} was formatted by node {new.formatted_by}",
            )
        )
    degraded = next(c for c in new.conditions if c.type == DEGRADED)
    if degraded.reason == events.LOCKSPACE_FULL and not _had(old, DEGRADED, events.LOCKSPACE_FULL):
        out.append(events.Event(events.WARNING, events.LOCKSPACE_FULL, degraded.message))
    return out


def _had(status: LockspaceStatus, type_: str, reason: str | None = None) -> bool:
    """The old status had condition ``type_`` True (with ``reason``, if given)."""
    return any(
        c.type == type_ and c.status == ConditionStatus.TRUE and reason in (None, c.reason)
        for c in status.conditions
    )
