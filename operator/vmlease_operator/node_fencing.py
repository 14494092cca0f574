"""Node fencing for Kubernetes: what the lease files prove about a node, turned into taints.

A Lockspace with ``spec.nodeFencing`` has every joined agent keep its watchdog armed while its
delta lease is on disk, leases held or not. So when a host_id of that lockspace has been silent
for the safe time (8N + W, read Dead on disk), its node has been reset by its watchdog: nothing
on it runs any more, and its pods can be deleted and their volumes detached. Kubernetes does
exactly that for a node tainted ``node.kubernetes.io/out-of-service=nodeshutdown:NoExecute``
(non-graceful node shutdown); KubeVirt and other controllers then start the workloads elsewhere.

The taint is applied only on the full proof, every part of which is checked here:

1. the HostId reads **Dead** (never only Failing: a Failing host may still be writing);
2. the node's own agent said ``nodeFencing: true`` in its status: a real watchdog device was
   armed for this lockspace (an agent run with ``--watchdog none``, or too old to know the
   field, resets nobody, so its silence proves nothing);
3. the Dead report comes from **another** node whose own HostId in the same lockspace is Live
   and renewed recently (``FRESH_OBSERVER_SECONDS``): a reader whose own storage stalled sees
   every peer fall silent, and its word is worth nothing;
4. the node's own last reported renewal is at least the safe time old, a second clock (the
   reporter's is the first) that must agree.

The taint is lifted when the node's own agent reports the HostId **Live** again (it rejoined
after the reset), and only a taint this operator put (the annotation ``FENCING_ANNOTATION``
lists the lockspaces whose proof put it; a taint someone else applied is never removed).

While a node cannot renew such a lockspace (its HostId Failing, on its own agent's view, or
Dead), the ``FAILING_TAINT`` NoSchedule taint keeps new pods off it; it is lifted as soon as
the node's agent reports Live again. Both are opt-in with the Lockspace: the operator writes
Nodes for fencing lockspaces only (the chart grants it ``patch`` on Nodes only then).

Pure: ``assess`` judges HostIds, ``node_change`` computes a Node's new taints and annotation;
the handlers read, patch (with the Node's resourceVersion) and post the Events.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmlease_api import GROUP
from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import HostState

from vmlease_operator import events

OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
OUT_OF_SERVICE_VALUE = "nodeshutdown"
FAILING_TAINT = f"{GROUP}/lockspace-failing"
#: JSON ``{"outOfService": [lockspaces], "noSchedule": [lockspaces], "ownsTaint": bool}``:
#: which lockspaces' state holds our taints on this node, and whether the out-of-service taint
#: is ours (we put it); a taint is removed only when its list becomes empty, and the
#: out-of-service one only if it is ours.
FENCING_ANNOTATION = f"{GROUP}/fencing"
#: How recently a Dead report's observer must itself have renewed. Agents refresh lastRenewal
#: in their HostId status every --status-interval (30 s by default) and on every state change,
#: so a Live observer within 60 s (or the safe time, if longer) was renewing when it read.
FRESH_OBSERVER_SECONDS = 60


@dataclass(frozen=True)
class Verdict:
    """One node's standing in one fencing lockspace."""

    node: str
    lockspace: str
    out_of_service: bool | None  # True: put the taint; False: lift ours; None: leave it
    no_schedule: bool
    why: str  # the proof, or what is missing from it (for Events and logs)
    hostid: str | None = None  # the HostId whose state decided it
    unproven: bool = False  # a Dead report that is not the whole proof (said as an Event)


def assess(
    lockspace: str, failover: int, hosts: Iterable[HostIdRecord], now: datetime.datetime
) -> list[Verdict]:
    """One verdict per node in a fencing lockspace, from its HostIds' status alone.

    A node may have two HostIds for a while (one being released, a new one in use). Its own
    agent's Live on any of them is the node running now, and outweighs a Dead record of the
    other, which is history from before a reset: a running node must never be tainted out of
    service, and one verdict per node keeps two ids from flapping the taint."""
    hosts = list(hosts)
    nodes: dict[str, list[HostIdRecord]] = {}
    for h in hosts:
        nodes.setdefault(h.node, []).append(h)
    out = []
    for node, ids in nodes.items():
        verdicts = [_assess_one(lockspace, h, hosts, failover, now) for h in ids]
        live = [v for v in verdicts if v.out_of_service is False]
        proven = [v for v in verdicts if v.out_of_service is True]
        if live:
            # still NoSchedule if its own agent fails to renew another id it holds now
            failing = any(h.state == HostState.FAILING and h.observed_by == node for h in ids)
            out.append(Verdict(node, lockspace, False, failing, live[0].why, live[0].hostid))
        elif proven:
            out.append(proven[0])
        else:
            out.extend(verdicts[:1] if len(verdicts) == 1 else _merge_undecided(verdicts))
    return out


def _merge_undecided(verdicts: list[Verdict]) -> list[Verdict]:
    """Several ids, none deciding: NoSchedule if any is not renewing; the first unproven Dead
    (for its Event) or else the first."""
    first = next((v for v in verdicts if v.unproven), verdicts[0])
    no_schedule = any(v.no_schedule for v in verdicts)
    return [Verdict(first.node, first.lockspace, None, no_schedule, first.why, first.hostid,
                    first.unproven)]  # fmt: skip


def _assess_one(
    lockspace: str,
    h: HostIdRecord,
    hosts: list[HostIdRecord],
    failover: int,
    now: datetime.datetime,
) -> Verdict:
    if h.state == HostState.LIVE and h.observed_by == h.node:
        return Verdict(h.node, lockspace, False, False, "its agent renews again", h.name)
    if h.state == HostState.DEAD:
        missing = _missing_proof(h, hosts, failover, now)
        # without the whole proof, leave the taint as it is (None), never lift it (False):
        # a proof once made stays true until the node's own agent renews again
        if missing:
            return Verdict(h.node, lockspace, None, True, missing, h.name, unproven=True)
        return Verdict(h.node, lockspace, True, True, _proof(h, failover), h.name)
    if h.state == HostState.FAILING:
        return Verdict(h.node, lockspace, None, True, _failing(h), h.name)
    # Joining, Free, unclaimed: no word on liveness; a taint put earlier stays
    return Verdict(h.node, lockspace, None, False, f"host_id is {h.state}", h.name)


def _missing_proof(
    h: HostIdRecord, hosts: list[HostIdRecord], failover: int, now: datetime.datetime
) -> str:
    """Why this Dead report does not prove the node was reset, or "" when it does."""
    dead = f"host_id {h.host_id} of node {h.node} in lockspace {h.lockspace} reads Dead"
    if not h.node_fencing:
        return (
            f"{dead}, but its agent never confirmed an armed watchdog"
            f" for node fencing (status.nodeFencing): not proof that it was reset"
        )
    # the observer's own word on itself: a Live id it reports, if it has one
    theirs = [x for x in hosts if x.node == h.observed_by]
    observer = next(
        (x for x in theirs if x.state == HostState.LIVE and x.observed_by == x.node),
        theirs[0] if theirs else None,
    )
    if h.observed_by is None or h.observed_by == h.node or observer is None:
        return f"{dead}, but no other node of the lockspace reported it"
    fresh = max(FRESH_OBSERVER_SECONDS, failover)
    observer_ok = (
        observer.state == HostState.LIVE
        and observer.observed_by == observer.node
        and observer.last_renewal is not None
        and (now - observer.last_renewal).total_seconds() <= fresh
    )
    if not observer_ok:
        return (
            f"{dead}, but only by node {h.observed_by}, which is not "
            f"itself Live with a renewal in the last {fresh} s: a stale reader proves nothing"
        )
    if h.last_renewal is None:
        return f"{dead}, but node {h.node} never reported a renewal"
    silent = (now - h.last_renewal).total_seconds()
    if silent < failover:
        return (
            f"{dead}, but node {h.node} last reported a renewal "
            f"{silent:.0f} s ago, less than the safe time {failover} s"
        )
    return ""


def _proof(h: HostIdRecord, failover: int) -> str:
    assert h.last_renewal is not None
    return (
        f"host_id {h.host_id} in lockspace {h.lockspace} is Dead: no renewal since "
        f"{h.last_renewal.isoformat()} (more than the safe time, {failover} s), read by node "
        f"{h.observed_by}; its watchdog was armed for node fencing, so node {h.node} was reset"
    )


def _failing(h: HostIdRecord) -> str:
    who = "its own agent" if h.observed_by == h.node else f"node {h.observed_by}"
    return f"host_id {h.host_id} in lockspace {h.lockspace} is Failing ({who}): no new pods"


# --- one Node --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeChange:
    """A JSON merge patch for a Node and the Events its change deserves."""

    patch: dict[str, Any]
    events: list[events.Event]


def marks(annotations: Mapping[str, str] | None) -> tuple[dict[str, list[str]], bool]:
    """Our annotation, read leniently: anything unreadable counts as no marks and a taint not
    ours (we then never remove the out-of-service taint: errs on keeping a node fenced)."""
    try:
        doc = json.loads((annotations or {}).get(FENCING_ANNOTATION, "{}"))
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    lists = {
        key: sorted({x for x in doc.get(key) or [] if isinstance(x, str)})
        for key in ("outOfService", "noSchedule")
    }
    return lists, doc.get("ownsTaint") is True


def node_change(node: Mapping[str, Any], verdicts: Iterable[Verdict]) -> NodeChange | None:
    """The Node's new taints and annotation after this lockspace's verdicts on it, or None.

    Taints are replaced as a whole list (a merge patch cannot edit one entry), so the patch
    carries the Node's resourceVersion: a concurrent change by the kubelet or another
    controller makes it fail with a conflict, and the next pass decides again."""
    meta = node.get("metadata") or {}
    name = meta.get("name", "")
    old, owns = marks(meta.get("annotations"))
    new = {key: set(value) for key, value in old.items()}
    reasons: dict[str, str] = {}
    for v in verdicts:
        if v.out_of_service is True:
            new["outOfService"].add(v.lockspace)
            reasons["outOfService"] = v.why
        elif v.out_of_service is False:
            new["outOfService"].discard(v.lockspace)
        if v.no_schedule:
            new["noSchedule"].add(v.lockspace)
            reasons.setdefault("noSchedule", v.why)
        else:
            new["noSchedule"].discard(v.lockspace)
        reasons.setdefault("lifted", v.why)
    taints = list((node.get("spec") or {}).get("taints") or [])
    have_oos = any(t.get("key") == OUT_OF_SERVICE_TAINT for t in taints)
    have_failing = any(t.get("key") == FAILING_TAINT for t in taints)
    out: list[events.Event] = []
    new_owns = owns and have_oos
    if new["outOfService"] and not have_oos:
        taints.append(
            {"key": OUT_OF_SERVICE_TAINT, "value": OUT_OF_SERVICE_VALUE, "effect": "NoExecute"}
        )
        new_owns = True
        out.append(events.node_out_of_service(name, reasons["outOfService"]))
    elif not new["outOfService"] and have_oos and owns:
        taints = [t for t in taints if t.get("key") != OUT_OF_SERVICE_TAINT]
        new_owns = False
        out.append(events.node_back_in_service(name, reasons["lifted"]))
    if new["noSchedule"] and not have_failing:
        taints.append({"key": FAILING_TAINT, "value": "true", "effect": "NoSchedule"})
        out.append(events.node_not_renewing(name, reasons["noSchedule"]))
    elif not new["noSchedule"] and have_failing:
        taints = [t for t in taints if t.get("key") != FAILING_TAINT]
        out.append(events.node_renewing(name, reasons["lifted"]))
    marks_changed = {k: sorted(v) for k, v in new.items()} != old or new_owns != owns
    if not out and not marks_changed:
        return None
    doc: dict[str, Any] = {k: sorted(v) for k, v in new.items() if v}
    if new_owns:
        doc["ownsTaint"] = True
    patch: dict[str, Any] = {
        "metadata": {
            "resourceVersion": meta.get("resourceVersion"),
            "annotations": {FENCING_ANNOTATION: json.dumps(doc, sort_keys=True) if doc else None},
        },
    }
    if out:
        patch["spec"] = {"taints": taints}
    return NodeChange(patch, out)
