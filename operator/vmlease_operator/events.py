"""Kubernetes Events the operator posts: reasons, and which transitions deserve one.

Pure: functions return ``Event`` values and the handlers post them (each Event is an API write,
so only real transitions produce one). Transitions are judged against what *this process* saw
before; the first sight of an object after a start produces no event, so a restart does not
repeat an event per host. Reasons are CamelCase and fixed: alerts match on them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import HostState, LeasePhase

NORMAL, WARNING = "Normal", "Warning"

HOST_ID_ALLOCATED = "HostIdAllocated"
HOST_ID_RELEASED = "HostIdReleased"
LOCKSPACE_FORMAT_REQUESTED = "LockspaceFormatRequested"
LOCKSPACE_FORMATTED = "LockspaceFormatted"
LOCKSPACE_FULL = "LockspaceFull"
LOCKSPACE_JOINED = "LockspaceJoined"
LOCKSPACE_LEFT = "LockspaceLeft"
HOST_FAILING = "HostFailing"
HOST_DEAD = "HostDead"
FENCING_STARTED = "FencingStarted"
LEASE_ACQUIRED = "LeaseAcquired"
LEASE_RELEASED = "LeaseReleased"
LEASE_MOVED = "LeaseMoved"
LEASE_ORPHANED = "LeaseOrphaned"
LEASE_CONTENDED = "LeaseContended"
DISK_LEASE_INVALID = "DiskLeaseInvalid"
NODE_OUT_OF_SERVICE = "NodeOutOfService"
NODE_IN_SERVICE = "NodeInService"
NODE_NOT_RENEWING = "NodeNotRenewing"
NODE_RENEWING = "NodeRenewing"
FENCING_UNPROVEN = "FencingUnproven"
HOLDERS_STOPPED = "HoldersStopped"
REMEDIATION_STARTED = "RemediationStarted"
REMEDIATION_FINISHED = "RemediationFinished"
REMEDIATION_FAILED = "RemediationFailed"


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str
    on_node: bool = False
    """Post on the Node as well: fencing is about the machine (as FAR and SNR report it); for a
    lease, the node it was held on (taken over from)."""


def allocated(record: HostIdRecord, conflicts: int) -> Event:
    retry = f" after {conflicts} id(s) taken concurrently" if conflicts else ""
    return Event(
        NORMAL,
        HOST_ID_ALLOCATED,
        f"node {record.node} got host_id {record.host_id} in lockspace {record.lockspace}{retry}",
    )


def released(record: HostIdRecord, why: str) -> Event:
    return Event(
        NORMAL,
        HOST_ID_RELEASED,
        f"host_id {record.host_id} of node {record.node} in lockspace {record.lockspace} may be "
        f"reused: {why}",
    )


def host_transition(
    old: HostState | None, new: HostIdRecord, failover_seconds: int | None
) -> Event | None:
    """The event for a HostId whose state went from ``old`` to ``new.state``."""
    state = new.state
    if old == state or state is None:
        return None
    who = f"node {new.node} (host_id {new.host_id}) in lockspace {new.lockspace}"
    if state == HostState.LIVE and old in (None, HostState.JOINING):
        return Event(NORMAL, LOCKSPACE_JOINED, f"{who} joined and renews its delta lease")
    if state == HostState.FAILING:
        deadline = ""
        if failover_seconds and new.last_renewal is not None:
            # the safe time counts from the last renewal: by then the holders are dead or the
            # node was reset, and other hosts may take its leases
            at = new.last_renewal + datetime.timedelta(seconds=failover_seconds)
            deadline = f" by {at.isoformat()} (last renewal + {failover_seconds} s)"
        elif failover_seconds:
            deadline = f" within {failover_seconds} s"
        return Event(
            WARNING,
            FENCING_STARTED,
            f"{who} stopped renewing its delta lease: its agent is stopping lease holders and "
            f"its watchdog resets the node{deadline} unless renewals resume",
            on_node=True,
        )
    if state == HostState.DEAD:
        return Event(
            WARNING,
            HOST_DEAD,
            f"{who} is dead on disk (no renewal for the safe time): its leases may be taken over",
            on_node=True,
        )
    if state == HostState.FREE:
        return Event(NORMAL, LOCKSPACE_LEFT, f"{who} released its delta lease")
    if state == HostState.LIVE:
        return Event(NORMAL, LOCKSPACE_JOINED, f"{who} renews its delta lease again")
    return None


@dataclass(frozen=True)
class LeaseView:
    """What lease events compare: the phase and the exclusive holder."""

    phase: LeasePhase | None
    node: str | None
    host_id: int | None
    owner: str | None  # domain or process, for messages

    def holder_text(self) -> str:
        owner = f", {self.owner}" if self.owner else ""
        return f"node {self.node} (host_id {self.host_id}{owner})"


def lease_transition(name: str, old: LeaseView, new: LeaseView) -> Event | None:
    if old == new:
        return None
    if new.phase == LeasePhase.ORPHANED and old.phase != LeasePhase.ORPHANED:
        return Event(
            WARNING,
            LEASE_ORPHANED,
            f"lease {name} is held by {new.holder_text()}, whose host stopped renewing: it "
            f"becomes free after the safe time",
            on_node=True,
        )
    if new.phase == LeasePhase.CONTENDED and old.phase != LeasePhase.CONTENDED:
        return Event(
            NORMAL,
            LEASE_CONTENDED,
            f"lease {name} is held by {new.holder_text()} and another host requested it: its "
            f"holder is asked to stop (DiskLease condition Held says how)",
        )
    if new.node and old.node and new.node != old.node:
        return Event(
            NORMAL,
            LEASE_MOVED,
            f"lease {name} moved from {old.holder_text()} to {new.holder_text()}",
            on_node=True,
        )
    if new.node and not old.node:
        return Event(NORMAL, LEASE_ACQUIRED, f"lease {name} acquired by {new.holder_text()}")
    if old.node and not new.node and new.phase == LeasePhase.FREE:
        return Event(NORMAL, LEASE_RELEASED, f"lease {name} released by {old.holder_text()}")
    return None


# --- node fencing (posted on the Node: ``node_fencing``) --------------------------------------


def node_out_of_service(node: str, proof: str) -> Event:
    return Event(
        WARNING,
        NODE_OUT_OF_SERVICE,
        f"node {node} tainted node.kubernetes.io/out-of-service: {proof}. Kubernetes deletes "
        f"its pods and detaches their volumes; the taint is lifted when its agent is Live again",
    )


def node_back_in_service(node: str, why: str) -> Event:
    return Event(NORMAL, NODE_IN_SERVICE, f"node {node}: out-of-service taint lifted, {why}")


def node_not_renewing(node: str, why: str) -> Event:
    return Event(
        WARNING,
        NODE_NOT_RENEWING,
        f"node {node} tainted vmlease.io/lockspace-failing:NoSchedule: {why}",
    )


def node_renewing(node: str, why: str) -> Event:
    return Event(NORMAL, NODE_RENEWING, f"node {node}: NoSchedule taint lifted, {why}")


def holders_stopped(record: HostIdRecord, message: str) -> Event:
    """The node's own agent stopped every lease holder under a failed lockspace (its HostId's
    HoldersStopped condition, which says whom and how)."""
    return Event(
        WARNING,
        HOLDERS_STOPPED,
        f"node {record.node} (host_id {record.host_id}) in lockspace {record.lockspace}: {message}",
        on_node=True,
    )


def fencing_unproven(why: str) -> Event:
    return Event(WARNING, FENCING_UNPROVEN, f"{why}: the node is not tainted out of service")


# --- NodeHealthCheck remediation (posted on the VmleaseRemediation and the Node) ---------------


def remediation_started(node: str, remediation: str) -> Event:
    return Event(
        NORMAL,
        REMEDIATION_STARTED,
        f"remediation {remediation} of node {node}: waiting for the storage proof that its "
        f"watchdog reset it",
        on_node=True,
    )


def remediation_finished(node: str, message: str) -> Event:
    return Event(NORMAL, REMEDIATION_FINISHED, f"node {node} remediated: {message}", on_node=True)


def remediation_failed(node: str, reason: str, message: str) -> Event:
    return Event(
        WARNING, REMEDIATION_FAILED, f"node {node} not remediated ({reason}): {message}",
        on_node=True,
    )  # fmt: skip
