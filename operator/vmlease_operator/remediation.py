"""medik8s NodeHealthCheck's external remediation, answered from what node fencing proved.

NodeHealthCheck (NHC) decides from Node conditions that a node is unhealthy and creates a
``VmleaseRemediation`` for it (from the ``VmleaseRemediationTemplate`` its NodeHealthCheck names).
vmlease remediates the one way it can prove safe: the node is put out of service only once the
shared storage proves its watchdog reset it, exactly as ``node_fencing`` decides for Lockspaces
with ``spec.nodeFencing`` (it applies the out-of-service taint on that proof whether or not NHC
asked). A remediation therefore *reports* that proof in NHC's terms and adds no second way to
taint a node: two deciders could disagree, and one proof is enough.

The answer, in the conditions NHC reads:

* **Succeeded True** (Processing False): the node carries the out-of-service taint that node
  fencing put on the proof. NHC's job is done; it deletes the remediation when the node is
  healthy again (node fencing lifts the taint when the node's agent renews again). Once True it
  stays True: a node that came back before NHC noticed must not look like a failed remediation.
* **Succeeded False** (Processing False), at once, when no proof can ever come, so that NHC's
  escalatingRemediations move on to the next remediator (SNR, FAR) without waiting out their
  timeout: the node has no host_id in a Lockspace with nodeFencing, or its agent never armed a
  watchdog for one (``status.nodeFencing``), or the Node is gone; and when NHC timed the
  remediation out (``remediation.medik8s.io/nhc-timed-out``).
* **Processing True** (Succeeded Unknown) while the proof may still come: the message says what
  each fencing lockspace reads of the node and from when the proof can be complete (its last
  renewal plus the safe time). A node whose own agent still renews is running: the remediation
  waits (NHC's timeout escalates), unless its spec says ``selfFence``: then the operator asks
  the node's agent, through the Node's annotation ``vmlease.io/fence-request`` naming the
  lockspace and the delta-lease generation it renews, to stop feeding its watchdog. The reset,
  the silence and the proof follow; the request is lifted when the remediation ends, and a
  rejoin after the reset has a new generation, so it never resets the node twice.

``PermanentNodeDeletionExpected`` is always False: vmlease never deletes a Node.

Pure: ``judge`` decides, ``status_patch`` turns a decision into the conditions to write (or
None when nothing changes, so a watch event caused by our own write writes nothing), and
``transition_events`` says which Events the change deserves.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmlease_api.allocation import HostIdRecord
from vmlease_api.conditions import find_condition, set_condition
from vmlease_api.models import (
    FENCE_REQUEST_ANNOTATION,
    NHC_TIMED_OUT_ANNOTATION,
    Condition,
    ConditionStatus,
    HostState,
    VmleaseRemediation,
)

from vmlease_operator import events, node_fencing

PROCESSING = "Processing"
SUCCEEDED = "Succeeded"
PERMANENT_NODE_DELETION_EXPECTED = "PermanentNodeDeletionExpected"

# Succeeded's reasons (NHC shows them; alerts and runbooks match on them)
OUT_OF_SERVICE = "OutOfService"
WAITING_FOR_PROOF = "WaitingForProof"
NO_FENCING_LOCKSPACE = "NoFencingLockspace"
WATCHDOG_NOT_ARMED = "WatchdogNotArmed"
NODE_NOT_FOUND = "NodeNotFound"
TIMED_OUT = "TimedOut"


@dataclass(frozen=True)
class FencingHost:
    """One of the node's host_ids in a Lockspace with ``spec.nodeFencing``."""

    record: HostIdRecord
    failover: int  # the lockspace's safe time, seconds


@dataclass(frozen=True)
class Decision:
    processing: ConditionStatus
    succeeded: ConditionStatus
    reason: str
    message: str
    #: selfFence: the host_id whose agent is asked to fence itself (it still renews)
    self_fence: HostIdRecord | None = None


def judge(
    remediation: VmleaseRemediation,
    node: Mapping[str, Any] | None,
    hosts: Iterable[FencingHost],
) -> Decision:
    """What the remediation of ``remediation.node`` stands at: ``node`` is the Node (metadata
    with annotations, spec with taints) or None if it does not exist; ``hosts`` its host_ids in
    the Lockspaces with nodeFencing."""
    name = remediation.node
    old = find_condition(remediation.status.conditions, SUCCEEDED)
    if old is not None and old.status == ConditionStatus.TRUE:
        return Decision(ConditionStatus.FALSE, ConditionStatus.TRUE, old.reason, old.message)
    if node is not None and (fenced := _fenced_by(node)):
        return Decision(
            ConditionStatus.FALSE,
            ConditionStatus.TRUE,
            OUT_OF_SERVICE,
            f"node {name} is tainted out of service: lockspace(s) {', '.join(fenced)} proved "
            f"its watchdog reset it; Kubernetes deletes its pods and detaches their volumes",
        )
    timed_out = remediation.metadata.annotations.get(NHC_TIMED_OUT_ANNOTATION)
    if timed_out is not None:
        return _failed(
            TIMED_OUT,
            f"NodeHealthCheck timed this remediation out ({timed_out}) before the storage "
            f"proved node {name} was reset; vmlease reports no more on it",
        )
    if node is None:
        return _failed(NODE_NOT_FOUND, f"node {name} does not exist: nothing to remediate")
    hosts = list(hosts)
    if not hosts:
        return _failed(
            NO_FENCING_LOCKSPACE,
            f"node {name} has no host_id in a Lockspace with spec.nodeFencing, so the storage "
            f"can never prove it was reset: give its Lockspace nodeFencing, or let "
            f"NodeHealthCheck escalate to another remediator",
        )
    armed = [h for h in hosts if h.record.node_fencing]
    if not armed:
        lockspaces = ", ".join(sorted({h.record.lockspace for h in hosts}))
        return _failed(
            WATCHDOG_NOT_ARMED,
            f"node {name}'s agent never confirmed a watchdog armed for node fencing in "
            f"lockspace(s) {lockspaces} (HostId status.nodeFencing): its silence would not "
            f"prove it was reset. Run its agent with a watchdog device, or let NodeHealthCheck "
            f"escalate to another remediator",
        )
    armed.sort(key=lambda h: h.record.name)
    renewing = [h.record for h in armed if _renews(h.record)]
    ask = renewing[0] if remediation.spec.self_fence and renewing else None
    asked = ""
    if ask is not None:
        asked = f"; its agent is asked to fence itself (selfFence, lockspace {ask.lockspace})"
    return Decision(
        ConditionStatus.TRUE,
        ConditionStatus.UNKNOWN,
        WAITING_FOR_PROOF,
        f"waiting for the storage to prove node {name} was reset: "
        + "; ".join(_standing(h) for h in armed)
        + asked,
        ask,
    )


def _renews(r: HostIdRecord) -> bool:
    return r.state == HostState.LIVE and r.observed_by == r.node


def _failed(reason: str, message: str) -> Decision:
    return Decision(ConditionStatus.FALSE, ConditionStatus.FALSE, reason, message)


def _fenced_by(node: Mapping[str, Any]) -> list[str]:
    """The lockspaces whose proof put the out-of-service taint this Node carries, if ours."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    tainted = any(
        t.get("key") == node_fencing.OUT_OF_SERVICE_TAINT for t in spec.get("taints") or []
    )
    marks, owns = node_fencing.marks(meta.get("annotations"))
    return marks["outOfService"] if tainted and owns else []


def _standing(h: FencingHost) -> str:
    """One host_id's state in words that do not change while its state does not (no "N s
    ago"): the message is compared to decide whether to write."""
    r = h.record
    what = f"host_id {r.host_id} in lockspace {r.lockspace} is {r.state or 'unclaimed'}"
    if _renews(r):
        return f"{what}: its agent renews it, so the node runs and is not fenced"
    if r.observed_by and r.observed_by != r.node:
        what += f" (read by node {r.observed_by})"
    if r.state in (HostState.FAILING, HostState.DEAD) and r.last_renewal is not None:
        at = r.last_renewal + datetime.timedelta(seconds=h.failover)
        what += f"; the proof can be complete at {at.isoformat()} (last renewal + {h.failover} s)"
    return what


# --- selfFence: the request on the Node ----------------------------------------------------------


def fence_request_patch(
    node: Mapping[str, Any], remediation: VmleaseRemediation, decision: Decision | None,
    at: datetime.datetime,
) -> dict[str, Any] | None:  # fmt: skip
    """The Node merge patch that puts (``decision.self_fence``) or lifts this remediation's
    fence request, or None if the Node already says so. A request of another remediation is
    left alone; ``decision`` None: the remediation is gone (lift)."""
    meta = node.get("metadata") or {}
    current = _request_of((meta.get("annotations") or {}).get(FENCE_REQUEST_ANNOTATION))
    me = f"{remediation.metadata.namespace}/{remediation.metadata.name}"
    host = decision.self_fence if decision is not None else None
    if host is None:
        if current is None or current.get("remediation") != me:
            return None
        return {"metadata": {"annotations": {FENCE_REQUEST_ANNOTATION: None}}}
    if current is not None and current.get("remediation") not in (me, None):
        return None  # another remediation's request: one at a time
    wanted = {"remediation": me, "lockspace": host.lockspace, "generation": host.generation}
    if current is not None and {k: current.get(k) for k in wanted} == wanted:
        return None
    value = json.dumps({**wanted, "requestedAt": at.isoformat()}, sort_keys=True)
    return {"metadata": {"annotations": {FENCE_REQUEST_ANNOTATION: value}}}


def _request_of(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def status_patch(
    remediation: VmleaseRemediation, decision: Decision, at: datetime.datetime
) -> dict[str, Any] | None:
    """The ``status`` to write for ``decision``, or None if the conditions already say it."""
    old = remediation.status.conditions
    new = old
    for type_, status, reason, message in (
        (PROCESSING, decision.processing, decision.reason, decision.message),
        (SUCCEEDED, decision.succeeded, decision.reason, decision.message),
        (
            PERMANENT_NODE_DELETION_EXPECTED,
            ConditionStatus.FALSE,
            "NodeKept",
            "vmlease never deletes a Node",
        ),
    ):
        new = set_condition(new, type_, status, reason, message, remediation.metadata.generation,
                            at)  # fmt: skip
    if _same(old, new):
        return None
    return {"conditions": [c.to_api() for c in new]}


def _same(old: list[Condition], new: list[Condition]) -> bool:
    def key(c: Condition) -> tuple[str, str, str, str]:
        return c.type, c.status, c.reason, c.message

    return sorted(map(key, old)) == sorted(map(key, new))


def transition_events(remediation: VmleaseRemediation, decision: Decision) -> list[events.Event]:
    """Started when first judged; Finished or Failed when Succeeded becomes True or False."""
    name = remediation.node
    old = find_condition(remediation.status.conditions, SUCCEEDED)
    out = []
    if find_condition(remediation.status.conditions, PROCESSING) is None:
        out.append(events.remediation_started(name, remediation.metadata.name))
    changed = old is None or (old.status, old.reason) != (decision.succeeded, decision.reason)
    if changed and decision.succeeded == ConditionStatus.TRUE:
        out.append(events.remediation_finished(name, decision.message))
    elif changed and decision.succeeded == ConditionStatus.FALSE:
        out.append(events.remediation_failed(name, decision.reason, decision.message))
    return out
