"""The agent's Kubernetes mode as plain decisions: no I/O, no clock, no client library.

``kube_sync`` feeds these functions what its watches and the local agent show and carries out
what they return. The protocol with the operator (``vmlease_operator.hostid_writes``,
``vmlease_operator.formatting``) as seen from a node:

1. **Which lockspaces.** A Lockspace is *wanted* while its ``spec.nodeSelector`` matches this
   Node's labels and it is not being deleted (the operator's own ``selector.matches``).
2. **Which id.** The operator creates HostIds named ``<lockspace>.<hostId>`` labelled with the
   node. If two operators raced and a node has several, the node uses the operator's
   ``allocation.keeper`` (a claimed one, else the lowest id), so both sides pick the same one.
3. **Claim before touching the disk.** The agent writes ``status.state: Joining`` on its HostId
   with a resourceVersion precondition; the operator deletes unclaimed extras under the same
   kind of precondition, so the API server orders the two and never both win.
4. **Format only when told.** An unformatted Lockspace carries ``status.formatRequest`` naming
   one node and host_id; only that node's agent formats (``kube_format``), then sets
   ``status.formatted``. Every other agent, and the formatter too, joins only once
   ``status.formatted`` is true, so nobody's delta lease can be in the area when it is written.
5. **Join with the allocated id**, never with another: a lockspace already joined locally under
   a different id (saved state from an older allocation) is reported, not changed.
6. **Leave** when the Lockspace no longer wants this node, only while no lease of it is held
   (leaving would fence their holders); then the HostId says Free.

HostId status written by the agent: ``own_status`` (its own ids), ``peer_reports`` (other
nodes' ids, by one reporter per lockspace). DiskLease status: ``lease_status``.
"""

from __future__ import annotations

import datetime
import enum
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmlease_api.allocation import HostIdRecord, keeper
from vmlease_api.conditions import find_condition, set_condition
from vmlease_api.models import (
    FENCE_REQUEST_ANNOTATION,
    ConditionStatus,
    HostId,
    HostIdStatus,
    HostState,
    Lockspace,
)
from vmlease_api.selector import matches

from vmlease_agent.core import lockspace as local_ls
from vmlease_agent.core.snapshot import FencedSnapshot, LockspaceSnapshot, WatchdogSnapshot

JOINED, RENEWING, HOLDERS_STOPPED = "Joined", "Renewing", "HoldersStopped"

#: The agent's lockspace states as HostId states. A lockspace that stopped after a failed join
#: is still "Joining" for the cluster: the agent retries, and the id stays claimed.
LOCAL_TO_HOST_STATE = {
    local_ls.JOINING: HostState.JOINING,
    local_ls.LIVE: HostState.LIVE,
    local_ls.FAILED: HostState.FAILING,
    local_ls.STOPPED: HostState.JOINING,
}

#: The delta-lease states of other hosts (``delta.HostStatus.state``) worth reporting: the
#: operator needs Dead or Free, seen for the safe time, before an id may be reused.
DISK_TO_HOST_STATE = {"fail": HostState.FAILING, "dead": HostState.DEAD, "free": HostState.FREE}


def utc(ts: float) -> datetime.datetime:
    """Wall-clock seconds as metav1.Time stores them (UTC, whole seconds)."""
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC)


# --- paths -----------------------------------------------------------------------------------


def resolve_path(shared_dir: str, path: str) -> str:
    """Where a Lockspace or lease path is on this node: block devices (``/dev/...``) as they
    are, anything else under the agent's shared volume. The CRD's pattern already refuses
    ``..`` segments and other absolute paths, so the result cannot leave ``shared_dir``."""
    if path.startswith("/dev/"):
        return path
    return os.path.join(shared_dir, path.lstrip("/"))


def relative_path(shared_dir: str, path: str) -> str | None:
    """The inverse of ``resolve_path`` for paths under the shared volume, else None."""
    if path.startswith("/dev/"):
        return path
    root = os.path.normpath(shared_dir)
    full = os.path.normpath(path)
    if os.path.commonpath([root, full]) != root or full == root:
        return None
    return os.path.relpath(full, root)


# --- which lockspaces, which id, which step --------------------------------------------------


def wanted(
    lockspaces: Iterable[Lockspace], labels: Mapping[str, str] | None
) -> dict[str, Lockspace]:
    """The Lockspaces this node takes part in; ``labels`` None: the Node does not exist (yet)."""
    if labels is None:
        return {}
    return {
        ls.metadata.name: ls
        for ls in lockspaces
        if ls.metadata.deletion_timestamp is None and matches(ls.spec.node_selector, labels)
    }


def my_hostid(records: Iterable[HostIdRecord], lockspace: str, node: str) -> HostIdRecord | None:
    """The HostId this node uses in ``lockspace`` (the operator's keeper rule)."""
    return keeper(r for r in records if r.lockspace == lockspace and r.node == node)


@dataclass(frozen=True)
class Local:
    """One lockspace as the local agent holds it (``JoinedLockspace.snapshot()``)."""

    name: str
    host_id: int
    state: str
    generation: int
    error: str = ""
    last_renewal_ago: float | None = None
    renewal_ms: float = 0.0
    #: node fencing holds: the lockspace fences the node and a real device is armed for it. A
    #: condemned node (never fed again) says so too: its reset is certain, and its word must
    #: stand on its HostId for the operator's proof once it has gone silent
    fencing: bool = False

    @classmethod
    def of(cls, ls: LockspaceSnapshot, watchdog: WatchdogSnapshot) -> Local:
        return cls(
            name=ls.name,
            host_id=ls.host_id,
            state=ls.state,
            generation=ls.generation,
            error=ls.error,
            last_renewal_ago=ls.last_renewal_ago,
            renewal_ms=ls.renewal_ms,
            fencing=ls.fence_node and watchdog.armed and watchdog.enforced,
        )

    @property
    def active(self) -> bool:
        """Joined or joining: a new join must not be started."""
        return self.state != local_ls.STOPPED


class Step(enum.Enum):
    WAIT_HOSTID = "WaitingForHostId"
    CLAIM = "Claiming"
    WAIT_FORMAT = "WaitingForFormat"
    FORMAT = "Formatting"
    JOIN = "Joining"
    JOINED = "Joined"
    REFUSED = "Refused"
    CONFLICT = "HostIdConflict"


@dataclass(frozen=True)
class Decision:
    step: Step
    hostid: HostIdRecord | None
    message: str = ""


def decide(
    ls: Lockspace,
    hostid: HostIdRecord | None,
    local: Local | None,
    node: str,
    fire_timeout: int,
) -> Decision:
    """What to do next for one wanted lockspace."""
    name = ls.metadata.name
    if local is not None and local.active:
        if hostid is not None and hostid.host_id != local.host_id:
            return Decision(
                Step.CONFLICT,
                hostid,
                f"lockspace {name} is joined on this node with host_id {local.host_id} (saved "
                f"state of an earlier allocation), but the operator allocated host_id "
                f"{hostid.host_id} (HostId {hostid.name}): the agent keeps the joined id while "
                f"leases may be held; release them and run `vmlease client rem_lockspace -s "
                f"{name}` to rejoin with the allocated one",
            )
        return Decision(Step.JOINED, hostid)
    if hostid is None:
        return Decision(
            Step.WAIT_HOSTID,
            None,
            f"waiting for the operator to allocate a HostId for node {node} in lockspace {name}",
        )
    if fire_timeout > ls.spec.watchdog_fire_timeout_seconds:
        return Decision(
            Step.REFUSED,
            hostid,
            f"this agent's watchdog fires {fire_timeout} s after its last keepalive, but "
            f"lockspace {name} promises other hosts {ls.spec.watchdog_fire_timeout_seconds} s "
            f"(spec.watchdogFireTimeoutSeconds): its leases could be taken while this node "
            f"still runs; start the agent with --watchdog-fire-timeout "
            f"{ls.spec.watchdog_fire_timeout_seconds} or less",
        )
    if not hostid.claimed:
        return Decision(Step.CLAIM, hostid)
    if not ls.status.formatted:
        request = ls.status.format_request
        if request is not None and request.node == node and request.host_id == hostid.host_id:
            return Decision(Step.FORMAT, hostid)
        who = f"node {request.node}" if request else "the node the operator will choose"
        return Decision(Step.WAIT_FORMAT, hostid, f"waiting for {who} to format lockspace {name}")
    return Decision(Step.JOIN, hostid)


def to_leave(
    managed: Iterable[str], joined: Iterable[str], wanted_names: Iterable[str]
) -> list[str]:
    """Lockspaces this agent joined for Kubernetes that no Lockspace wants any more."""
    return sorted((set(managed) & set(joined)) - set(wanted_names))


# --- HostId status ---------------------------------------------------------------------------


def own_status(
    old: HostIdStatus,
    state: HostState,
    node: str,
    now: datetime.datetime,
    local: Local | None,
    wall_now: float,
    joined: tuple[bool, str, str],
    fenced: FencedSnapshot | None = None,
) -> HostIdStatus:
    """This node's HostId status. ``joined``: the Joined condition (ok, reason, message);
    ``fenced``: the lockspace's last failure with holders of ours in it, said as the condition
    HoldersStopped (the operator turns it into an Event on the Node)."""
    since = old.state_since if old.state == state and old.state_since else now
    new = HostIdStatus(
        state=state,
        state_since=since,
        observed_by=node,
        generation=old.generation,
        last_renewal=old.last_renewal,
        renewal_latency_ms=old.renewal_latency_ms,
        node_fencing=bool(local is not None and local.fencing),
        conditions=old.conditions,
    )
    if local is not None and local.generation:
        new.generation = local.generation
        if local.last_renewal_ago is not None:
            new.last_renewal = utc(wall_now - local.last_renewal_ago)
        new.renewal_latency_ms = round(local.renewal_ms)
    ok, reason, message = joined
    new.conditions = put_condition(new.conditions, JOINED, ok, reason, message, now)
    if state == HostState.LIVE:
        new.conditions = put_condition(
            new.conditions, RENEWING, True, "Renewing", "the delta lease is renewed every 2N", now
        )
    elif state == HostState.FAILING:
        error = local.error if local else ""
        new.conditions = put_condition(
            new.conditions, RENEWING, False, "RenewalFailed", f"renewals failed: {error}", now
        )
    elif state == HostState.FREE:
        new.conditions = put_condition(
            new.conditions, RENEWING, False, "Released", "the delta lease was released", now
        )
    if fenced is not None:
        new.conditions = put_condition(new.conditions, HOLDERS_STOPPED, *_stopped(fenced), now)
    return new


def _stopped(fenced: FencedSnapshot) -> tuple[bool, str, str]:
    failed = f"the lockspace failed at {utc(fenced.since).isoformat()} ({fenced.error})"
    who = "; ".join(fenced.holders) or "no holder"
    if fenced.done:
        return (
            True,
            "AllStopped",
            (f"{failed}; holders stopped: {who}. Nothing of this node writes under it any more"),
        )
    return False, "Stopping", f"{failed}; stopping its holders: {who}"


def fence_request(annotations: Mapping[str, str] | None, local: Mapping[str, Local]) -> str:
    """Why this node must fence itself now ("" if it must not): the operator's selfFence request
    (a NodeHealthCheck remediation) names a lockspace this node renews with node fencing, at the
    very delta-lease generation it renews. After the reset the node rejoins with another
    generation, so one request never resets a node twice; an agent restarted before the reset
    resumes the same generation and keeps honouring it."""
    raw = (annotations or {}).get(FENCE_REQUEST_ANNOTATION)
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    item = local.get(str(doc.get("lockspace")))
    if item is None or not item.fencing or item.generation != doc.get("generation"):
        return ""
    return (
        f"remediation {doc.get('remediation')} (NodeHealthCheck, selfFence) asked this node to "
        f"fence itself at {doc.get('requestedAt')} (lockspace {item.name}, generation "
        f"{item.generation})"
    )


def put_condition(
    conditions: list, type_: str, ok: bool, reason: str, message: str, now: datetime.datetime
) -> list:
    value = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
    return set_condition(conditions, type_, value, reason, message, at=now)


def status_key(status: HostIdStatus) -> tuple[Any, ...]:
    """What makes a HostId status write urgent; the rest (last renewal, latency) is refreshed
    only every ``status_interval``, so renewals never turn into API writes."""
    joined = find_condition(status.conditions, JOINED)
    stopped = find_condition(status.conditions, HOLDERS_STOPPED)
    return (
        status.state,
        status.generation,
        status.node_fencing,
        joined.status if joined else None,
        joined.reason if joined else None,
        (stopped.status, stopped.message) if stopped else None,
    )


class WriteGate:
    """Rate limit for status writes: at once when the key changed, else every ``interval``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, tuple[tuple[Any, ...], float]] = {}

    def due(self, name: str, key: tuple[Any, ...], now: float) -> bool:
        last = self._last.get(name)
        return last is None or last[0] != key or now - last[1] >= self.interval

    def done(self, name: str, key: tuple[Any, ...], now: float) -> None:
        self._last[name] = (key, now)

    def forget(self, name: str) -> None:
        self._last.pop(name, None)


# --- other hosts (one reporter per lockspace) ------------------------------------------------


def is_reporter(rows: Iterable[Mapping[str, Any]], my_host_id: int) -> bool:
    """Whether this node reports other hosts' states: the lowest host_id that may be alive.

    Every agent decides from its own disk view, so two may briefly both report (they write the
    same disk facts; a stateSince that moves only restarts the operator's count: slower, never
    unsafe). Hosts still ``unknown`` (not seen renewing yet) count as alive, so a live lower
    host is never skipped because we just started watching.
    """
    alive = {int(r["host_id"]) for r in rows if r["state"] in ("live", "unknown")}
    return my_host_id == min(alive | {my_host_id})


@dataclass(frozen=True)
class PeerReport:
    name: str
    resource_version: str | None
    status: dict[str, Any]
    state: HostState


def peer_reports(
    hostids: Iterable[HostId], rows: Iterable[Mapping[str, Any]], node: str, now: datetime.datetime
) -> list[PeerReport]:
    """Status patches for other nodes' HostIds whose delta lease has failed, died or been freed.

    Only HostIds their own agent claimed and got past Joining, and only when the record on disk
    carries that node's name: a record left by an earlier holder of the id says nothing about
    the node that holds the id now. Never Live: a host's own agent says that.
    """
    by_id = {int(r["host_id"]): r for r in rows}
    out = []
    for h in hostids:
        current = h.status.state
        if h.spec.node_name == node or current in (None, HostState.JOINING):
            continue
        row = by_id.get(h.spec.host_id)
        if row is None or row["name"] != h.spec.node_name[:48]:
            continue
        seen = DISK_TO_HOST_STATE.get(row["state"])
        if seen is None or seen == current:
            continue
        ago = row.get("renewed_ago")
        detail = f"no renewal seen for {ago:.0f} s" if ago is not None else "no renewal seen"
        if seen == HostState.FREE:
            detail = "its delta lease was released (timestamp 0)"
        conditions = set_condition(
            h.status.conditions,
            RENEWING,
            ConditionStatus.FALSE,
            f"Observed{seen.value}",
            f"node {node} reads host_id {h.spec.host_id} as {seen.value} on disk: {detail}",
            at=now,
        )
        status = {
            "state": seen.value,
            "stateSince": now.isoformat().replace("+00:00", "Z"),
            "observedBy": node,
            "generation": int(row.get("generation") or 0),
            "conditions": [c.to_api() for c in conditions],
        }
        out.append(PeerReport(h.metadata.name, h.metadata.resource_version, status, seen))
    return out
