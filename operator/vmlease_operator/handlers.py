"""kopf handlers: thin glue from watch events to the plain modules.

What each resource gets, and what it costs in API writes:

* Nodes: an index of labels and an ``on.event`` handler that allocates a HostId for every
  Lockspace selecting the node (one create and one Event per new node; nothing per restart,
  because the HostId index already holds the node's id). Raw events only: kopf writes nothing
  to Nodes (no finalizer, no annotations).
* Lockspaces: a timer running ``reconcile.plan`` (allocation catch-up, id release, formatting,
  status) and a delete handler that waits until every HostId of the lockspace is released; these
  put kopf's finalizer on Lockspaces, which is the intended cleanup order.
* HostIds and DiskLeases: indexes and raw events (transition Events, the release clock, the
  DiskLease resource name); never kopf finalizers or timers — there are many of them.
* Node fencing (Lockspaces with ``spec.nodeFencing`` only): the Lockspace pass judges its
  HostIds (``node_fencing.assess``) and patches the Nodes whose taints must change, one merge
  patch with the Node's resourceVersion each, and one Event per taint change.
* VmleaseRemediations (NodeHealthCheck's, in the operator's namespace only): an index by node and
  raw events; each is judged (``remediation.judge``) when it changes, when its Node changes and on
  every pass of a Lockspace its node is in. A status patch only when the conditions change; no
  finalizer (NHC deletes them; nothing of ours needs cleaning up).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError
from vmlease_api import GROUP, VERSION, naming
from vmlease_api.allocation import HostIdRecord, LockspaceFull, ReleaseClock
from vmlease_api.conditions import now
from vmlease_api.errors import Conflict, NotFound, Refused
from vmlease_api.models import (
    FENCE_REQUEST_ANNOTATION,
    DiskLease,
    HostState,
    Lockspace,
    LockspaceSpec,
    VmleaseRemediation,
)
from vmlease_api.naming import disk_resource_name
from vmlease_api.selector import matches

from vmlease_operator import events, metrics, node_fencing, reconcile, remediation
from vmlease_operator.hostid_writes import Allocator, release
from vmlease_operator.kube import DISKLEASES, LOCKSPACES, REMEDIATIONS, Kube

#: How often each Lockspace is reconciled; also the granularity of id release.
RECONCILE_SECONDS = 10.0
#: Finalizer kopf puts on Lockspaces (its timer and delete handler need one).
OPERATOR_FINALIZER = f"{GROUP}/operator"


@dataclass
class Runtime:
    """The operator's process state, handed to handlers through kopf's memo."""

    kube: Kube
    allocator: Allocator
    workers: int = 16
    clock: ReleaseClock = field(default_factory=ReleaseClock)
    host_states: dict[str, HostState | None] = field(default_factory=dict)
    lease_views: dict[str, events.LeaseView] = field(default_factory=dict)
    #: HostId name -> the last reason a Dead report was not taken as proof (said once each)
    unproven: dict[str, str] = field(default_factory=dict)
    #: HostId name -> the last HoldersStopped message its agent wrote, "" for none yet (an
    #: Event per new one)
    holders_stopped: dict[str, str] = field(default_factory=dict)
    #: the namespace whose VmleaseRemediations this operator answers (the chart's, where it may
    #: post Events and write their status); None: every namespace
    remediation_namespace: str | None = None


def _rt(memo: Any) -> Runtime:
    return memo.runtime


def _post(body: Mapping[str, Any], event: events.Event, node: Mapping[str, Any] | None) -> None:
    targets = [body]
    if event.on_node and node is not None:
        targets.append(node)
    kopf.event(targets, type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]  # plain mappings


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.persistence.finalizer = OPERATOR_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Allocation blocks on API round trips in threads; size the pool for bursts of new nodes.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(_rt(memo).workers))


# --- indexes ---------------------------------------------------------------------------------
# KOPF_INDICES: kopf passes every index to a handler as a keyword argument named after it
# (``nodes_idx`` ...), which its callback protocols cannot list; handlers that take indices carry
# a ``type: ignore[arg-type]`` on the decorator for that reason only.


@kopf.index("", "v1", "nodes")
def nodes_idx(
    name: str, labels: Mapping[str, str], uid: str, body: kopf.Body, **_: Any
) -> dict[str, Any]:
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    fencing = (meta.get("annotations") or {}).get(node_fencing.FENCING_ANNOTATION)
    return {
        name: {
            "labels": dict(labels),
            "uid": uid,
            # what node fencing needs to patch taints without a read first
            "resourceVersion": meta.get("resourceVersion"),
            "fencing": fencing,
            "fence_request": (meta.get("annotations") or {}).get(FENCE_REQUEST_ANNOTATION),
            "taints": [dict(t) for t in spec.get("taints") or []],
        }
    }


@kopf.index(GROUP, VERSION, "lockspaces")
def lockspaces_idx(name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, LockspaceSpec]:
    try:
        return {name: LockspaceSpec.model_validate(dict(spec))}
    except ValidationError:
        return {}  # the CRD refuses such specs; an old object is left alone


@kopf.index(GROUP, VERSION, "hostids")
def hostids_idx(body: kopf.Body, **_: Any) -> dict[str, HostIdRecord]:
    record = HostIdRecord.from_body(body)
    return {record.lockspace: record}


def _answers_remediation(namespace: str | None, memo: Any, **_: Any) -> bool:
    wanted = _rt(memo).remediation_namespace
    return wanted is None or namespace == wanted


@kopf.index(GROUP, VERSION, "vmleaseremediations", when=_answers_remediation)
def remediations_idx(body: kopf.Body, **_: Any) -> dict[str, VmleaseRemediation]:
    try:
        found = VmleaseRemediation.model_validate(dict(body))
    except ValidationError:
        return {}  # the CRD refuses such objects
    return {found.node: found}


def _node_fencing_view(nodes: kopf.Index, name: str) -> dict[str, Any] | None:
    """The Node as node fencing reads it (taints, our annotation), from the index."""
    info = next(iter(nodes.get(name, [])), None)
    if info is None:
        return None
    annotations = {
        key: value
        for key, value in (
            (node_fencing.FENCING_ANNOTATION, info["fencing"]),
            (FENCE_REQUEST_ANNOTATION, info["fence_request"]),
        )
        if value
    }
    return {
        "metadata": {
            "name": name,
            "uid": info["uid"],
            "resourceVersion": info["resourceVersion"],
            "annotations": annotations,
        },
        "spec": {"taints": info["taints"]},
    }


def _node_body(nodes: kopf.Index, name: str) -> dict[str, Any] | None:
    for info in nodes.get(name, []):
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": info["uid"]}}
    return None


# --- allocation ------------------------------------------------------------------------------


async def _allocate(
    rt: Runtime,
    lockspace: str,
    spec: LockspaceSpec,
    node: str,
    known: list[HostIdRecord],
    logger: logging.Logger | kopf.Logger,
) -> None:
    started = time.monotonic()
    try:
        result = await asyncio.to_thread(
            rt.allocator.ensure, lockspace, node, spec.effective_max_hosts, known
        )
    except LockspaceFull as error:
        logger.warning(str(error))
        return
    if result.conflicts:
        metrics.CONFLICTS.labels(lockspace).inc(result.conflicts)
    if result.created and result.body is not None:
        metrics.ALLOCATIONS.labels(lockspace).inc()
        metrics.ALLOCATION_SECONDS.observe(time.monotonic() - started)
        _post(result.body, events.allocated(result.record, result.conflicts), None)


@kopf.on.event("", "v1", "nodes")  # type: ignore[arg-type]  # indices: see KOPF_INDICES
async def node_event(
    type: str | None,
    name: str,
    labels: Mapping[str, str],
    memo: Any,
    logger: kopf.Logger,
    lockspaces_idx: kopf.Index,
    hostids_idx: kopf.Index,
    nodes_idx: kopf.Index,
    remediations_idx: kopf.Index,
    **_: Any,
) -> None:
    rt = _rt(memo)
    for found in list(remediations_idx.get(name, [])):
        node = None if type == "DELETED" else _node_fencing_view(nodes_idx, name)
        await _remediate(rt, found, node, lockspaces_idx, hostids_idx, logger)
    if type == "DELETED":
        return  # ids stay until released by the Lockspace pass
    for lockspace, specs in list(lockspaces_idx.items()):
        for spec in list(specs):
            if not matches(spec.node_selector, labels):
                continue
            known = list(hostids_idx.get(lockspace, []))
            if any(r.node == name and not r.terminating for r in known):
                continue
            await _allocate(rt, lockspace, spec, name, known, logger)


# --- lockspaces ------------------------------------------------------------------------------


def _nodes(nodes_idx: kopf.Index) -> dict[str, dict[str, str]]:
    return {name: info["labels"] for name, infos in nodes_idx.items() for info in infos}


async def _run_plan(
    rt: Runtime,
    body: kopf.Body,
    lockspace: Lockspace,
    nodes_idx: kopf.Index,
    records: Iterable[HostIdRecord],
    logger: kopf.Logger,
) -> reconcile.Plan:
    name = lockspace.metadata.name
    records = list(records)
    plan = reconcile.plan(lockspace, _nodes(nodes_idx), records, rt.clock, time.monotonic(), now())
    gate = asyncio.Semaphore(rt.workers)

    async def allocate(node: str) -> None:
        async with gate:
            await _allocate(rt, name, lockspace.spec, node, records, logger)

    await asyncio.gather(*(allocate(node) for node in plan.allocate))
    for record, why in plan.release:
        if await asyncio.to_thread(release, rt.kube, record):
            metrics.RELEASES.labels(name).inc()
            rt.allocator.forget(name, record.host_id)
            _post(body, events.released(record, why), None)
    if plan.status_patch:
        await asyncio.to_thread(rt.kube.patch_status, LOCKSPACES, name, plan.status_patch)
    for event in plan.events:
        _post(body, event, None)
    _export(name, records, len(plan.allocate), reconcile.failover_seconds(lockspace.spec))
    return plan


async def _fence_nodes(
    rt: Runtime,
    lockspace: Lockspace,
    hosts: Iterable[HostIdRecord],
    nodes_idx: kopf.Index,
    logger: kopf.Logger,
) -> None:
    """Node fencing's pass over one Lockspace: taint the proven-dead, lift the recovered."""
    name = lockspace.metadata.name
    failover = reconcile.failover_seconds(lockspace.spec)
    hosts = list(hosts)
    verdicts = node_fencing.assess(name, failover, hosts, now())
    uids = {h.name: h.uid for h in hosts}
    for verdict in verdicts:
        for hostid in [h.name for h in hosts if h.node == verdict.node]:
            if not (verdict.unproven and hostid == verdict.hostid):
                rt.unproven.pop(hostid, None)
        if verdict.unproven and verdict.hostid and rt.unproven.get(verdict.hostid) != verdict.why:
            rt.unproven[verdict.hostid] = verdict.why
            logger.warning(verdict.why)
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "HostId",
                "metadata": {"name": verdict.hostid, "uid": uids.get(verdict.hostid)},
            }
            _post(body, events.fencing_unproven(verdict.why), None)
    await _apply_verdicts(rt, name, verdicts, nodes_idx, logger)


async def _apply_verdicts(
    rt: Runtime,
    lockspace: str,
    verdicts: Iterable[node_fencing.Verdict],
    nodes_idx: kopf.Index,
    logger: kopf.Logger,
) -> None:
    """Patch the Nodes whose taints the verdicts change, and post their Events."""
    for verdict in verdicts:
        node = _node_fencing_view(nodes_idx, verdict.node)
        if node is None:
            continue  # the Node is gone: nothing to taint
        change = node_fencing.node_change(node, [verdict])
        if change is None:
            continue
        try:
            await asyncio.to_thread(rt.kube.patch_node, verdict.node, change.patch)
        except (Conflict, NotFound):
            continue  # changed meanwhile: the next pass decides on the new Node
        except Refused as error:
            logger.error(
                f"lockspace {lockspace} has nodeFencing, but node {verdict.node}'s taints cannot "
                f"be changed: {error}. Install the chart with nodeFencing.enabled=true (it grants "
                f"the operator patch on Nodes)"
            )
            continue
        target = {"apiVersion": "v1", "kind": "Node", "metadata": node["metadata"]}
        for event in change.events:
            logger.warning(event.message)
            _post(target, event, None)


def _export(name: str, records: list[HostIdRecord], waiting: int, failover: int) -> None:
    for state in [*HostState, None]:
        count = sum(1 for r in records if r.state == state and not r.terminating)
        metrics.HOSTS.labels(name, str(state) if state else "Unclaimed").set(count)
    metrics.WAITING.labels(name).set(waiting)
    metrics.FAILOVER.labels(name).set(failover)


@kopf.timer(GROUP, VERSION, "lockspaces", interval=RECONCILE_SECONDS)  # type: ignore[arg-type]  # indices: see KOPF_INDICES
async def lockspace_pass(
    body: kopf.Body,
    name: str,
    memo: Any,
    logger: kopf.Logger,
    nodes_idx: kopf.Index,
    hostids_idx: kopf.Index,
    lockspaces_idx: kopf.Index,
    remediations_idx: kopf.Index,
    **_: Any,
) -> None:
    rt = _rt(memo)
    lockspace = Lockspace.model_validate(dict(body))
    await _run_plan(rt, body, lockspace, nodes_idx, hostids_idx.get(name, []), logger)
    if lockspace.spec.node_fencing:
        await _fence_nodes(rt, lockspace, hostids_idx.get(name, []), nodes_idx, logger)
        for node in sorted({r.node for r in hostids_idx.get(name, [])}):
            for found in list(remediations_idx.get(node, [])):
                view = _node_fencing_view(nodes_idx, node)
                await _remediate(rt, found, view, lockspaces_idx, hostids_idx, logger)


@kopf.on.delete(GROUP, VERSION, "lockspaces")  # type: ignore[arg-type]  # indices: see KOPF_INDICES
async def lockspace_deleted(
    body: kopf.Body,
    name: str,
    memo: Any,
    logger: kopf.Logger,
    nodes_idx: kopf.Index,
    hostids_idx: kopf.Index,
    **_: Any,
) -> None:
    """A Lockspace goes only after all its ids are released: its spec holds the safe time."""
    rt = _rt(memo)
    await asyncio.to_thread(rt.kube.delete_hostids_of, name)
    lockspace = Lockspace.model_validate(dict(body))
    await _run_plan(rt, body, lockspace, nodes_idx, hostids_idx.get(name, []), logger)
    left = [r.name for r in hostids_idx.get(name, [])]
    if left:
        raise kopf.TemporaryError(
            f"waiting for {len(left)} HostId(s) to be released (their leases Dead or Free for "
            f"the safe time): {', '.join(sorted(left)[:10])}",
            delay=RECONCILE_SECONDS,
        )
    if lockspace.spec.node_fencing:
        # No pass will judge its nodes again: lift its NoSchedule taints. An out-of-service
        # taint stays (its node may still be down: an id is released while Dead, too); the
        # README says how to remove it once the node is back.
        marks = {n: node_fencing.marks({node_fencing.FENCING_ANNOTATION: i["fencing"] or "{}"})[0]
                 for n, infos in nodes_idx.items() for i in infos}  # fmt: skip
        gone = [
            node_fencing.Verdict(n, name, None, False, f"lockspace {name} was deleted")
            for n, m in marks.items()
            if name in m["noSchedule"]
        ]
        await _apply_verdicts(rt, name, gone, nodes_idx, logger)
    metrics.forget_lockspace(name)


# --- host ids and disk leases ----------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "hostids")  # type: ignore[arg-type]  # indices: see KOPF_INDICES
async def hostid_event(
    type: str | None,
    body: kopf.Body,
    memo: Any,
    lockspaces_idx: kopf.Index,
    nodes_idx: kopf.Index,
    **_: Any,
) -> None:
    rt = _rt(memo)
    record = HostIdRecord.from_body(body)
    if type == "DELETED":
        rt.clock.forget(record.name)
        rt.allocator.forget(record.lockspace, record.host_id)
        rt.host_states.pop(record.name, None)
        rt.holders_stopped.pop(record.name, None)
        return
    await _holders_stopped(rt, body, record, nodes_idx)
    rt.clock.observe(record, time.monotonic())
    first_sight = record.name not in rt.host_states
    old = rt.host_states.get(record.name)
    rt.host_states[record.name] = record.state
    if first_sight:
        return
    specs = list(lockspaces_idx.get(record.lockspace, []))
    failover = reconcile.failover_seconds(specs[0]) if specs else None
    event = events.host_transition(old, record, failover)
    if event is not None:
        _post(body, event, _node_body(nodes_idx, record.node))


async def _holders_stopped(
    rt: Runtime, body: kopf.Body, record: HostIdRecord, nodes_idx: kopf.Index
) -> None:
    """An Event when the node's agent says it stopped every holder under a failed lockspace
    (a new HoldersStopped message: once per fencing, never on first sight after a restart)."""
    found = next(
        (c for c in (body.get("status") or {}).get("conditions") or []
         if c.get("type") == "HoldersStopped"),
        None,
    )  # fmt: skip
    stopped = found is not None and found.get("status") == "True"
    message = str(found.get("message", "")) if found is not None and stopped else ""
    first_sight = record.name not in rt.holders_stopped
    old = rt.holders_stopped.get(record.name)
    rt.holders_stopped[record.name] = message
    if message and not first_sight and old != message:
        _post(body, events.holders_stopped(record, message), _node_body(nodes_idx, record.node))


@kopf.on.event(GROUP, VERSION, "diskleases")  # type: ignore[arg-type]  # indices: see KOPF_INDICES
async def disklease_event(
    type: str | None,
    body: kopf.Body,
    name: str,
    memo: Any,
    logger: kopf.Logger,
    nodes_idx: kopf.Index,
    **_: Any,
) -> None:
    rt = _rt(memo)
    if type == "DELETED":
        if (gone := rt.lease_views.pop(name, None)) is not None:
            metrics.count_disklease(name, gone.phase, -1)
        return
    try:
        lease = DiskLease.model_validate(dict(body))
    except ValidationError as error:
        logger.warning(f"DiskLease {name} does not parse: {error}")
        return
    if lease.spec.resource is None and lease.spec.disk_path is not None:
        await _fill_resource(rt, body, lease)
    view = _lease_view(lease)
    old = rt.lease_views.get(name)
    rt.lease_views[name] = view
    if old is not None:
        metrics.count_disklease(name, old.phase, -1)
    metrics.count_disklease(name, view.phase, 1)
    if old is not None and (event := events.lease_transition(name, old, view)) is not None:
        _post(body, event, _node_body(nodes_idx, old.node) if old.node else None)


async def _fill_resource(rt: Runtime, body: kopf.Body, lease: DiskLease) -> None:
    """Derive ``spec.resource`` from ``spec.diskPath`` as libvirt names auto disk leases."""
    assert lease.spec.disk_path is not None and lease.metadata.resource_version is not None
    resource = disk_resource_name(lease.spec.disk_path)
    try:
        await asyncio.to_thread(
            rt.kube.patch_spec,
            DISKLEASES,
            lease.metadata.name,
            {"resource": resource},
            lease.metadata.resource_version,
        )
    except (Conflict, NotFound):
        return  # changed or gone meanwhile: the next event decides again
    except Refused as error:  # 422: the CRD's naming rule refuses the name with this resource
        expected = naming.disklease_name(lease.spec.lockspace, resource)
        message = (
            f"resource {resource} (MD5 of {lease.spec.disk_path}) cannot be set: this DiskLease "
            f"must be named {expected}; recreate it under that name ({error})"
        )
        _post(body, events.Event(events.WARNING, events.DISK_LEASE_INVALID, message), None)


def _lease_view(lease: DiskLease) -> events.LeaseView:
    holder = lease.status.holder
    return events.LeaseView(
        phase=lease.status.phase,
        node=holder.node if holder else None,
        host_id=holder.host_id if holder else None,
        owner=(holder.domain or holder.process) if holder else None,
    )


# --- NodeHealthCheck remediations ------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "vmleaseremediations", when=_answers_remediation)  # type: ignore[arg-type]  # indices: see KOPF_INDICES
async def remediation_event(
    type: str | None,
    body: kopf.Body,
    name: str,
    memo: Any,
    logger: kopf.Logger,
    nodes_idx: kopf.Index,
    lockspaces_idx: kopf.Index,
    hostids_idx: kopf.Index,
    **_: Any,
) -> None:
    try:
        found = VmleaseRemediation.model_validate(dict(body))
    except ValidationError as error:
        logger.warning(f"VmleaseRemediation {name} does not parse: {error}")
        return
    node = _node_fencing_view(nodes_idx, found.node)
    if type == "DELETED":
        if node is not None:  # NodeHealthCheck is done with it: lift its fence request
            await _fence_request(_rt(memo), found, node, None, logger)
        return
    await _remediate(_rt(memo), found, node, lockspaces_idx, hostids_idx, logger)


async def _fence_request(
    rt: Runtime,
    found: VmleaseRemediation,
    node: dict[str, Any],
    decision: remediation.Decision | None,
    logger: kopf.Logger,
) -> None:
    """Put or lift the remediation's selfFence request on its Node (``remediation``)."""
    patch = remediation.fence_request_patch(node, found, decision, now())
    if patch is None:
        return
    name = node["metadata"]["name"]
    try:
        await asyncio.to_thread(rt.kube.patch_node, name, patch)
    except NotFound:
        return
    except Refused as error:
        logger.error(f"node {name}: its fence request cannot be written ({error}); install the "
                     f"chart with nodeFencing.enabled=true")  # fmt: skip
        return
    asked = decision is not None and decision.self_fence is not None
    logger.warning(
        f"node {name}: {'asked its agent to fence itself' if asked else 'fence request lifted'}"
        f" (remediation {found.metadata.namespace}/{found.metadata.name})"
    )


async def _remediate(
    rt: Runtime,
    found: VmleaseRemediation,
    node: dict[str, Any] | None,
    lockspaces_idx: kopf.Index,
    hostids_idx: kopf.Index,
    logger: kopf.Logger,
) -> None:
    """Judge one remediation and write its conditions (and Events) if they change."""
    hosts = [
        remediation.FencingHost(record, reconcile.failover_seconds(spec))
        for lockspace, specs in list(lockspaces_idx.items())
        for spec in list(specs)[:1]
        if spec.node_fencing
        for record in list(hostids_idx.get(lockspace, []))
        if record.node == found.node and not record.terminating
    ]
    decision = remediation.judge(found, node, hosts)
    if node is not None:
        await _fence_request(rt, found, node, decision, logger)
    status = remediation.status_patch(found, decision, now())
    if status is None:
        return
    meta = found.metadata
    assert meta.namespace is not None
    try:
        await asyncio.to_thread(rt.kube.patch_namespaced_status, REMEDIATIONS, meta.namespace,
                                meta.name, status)  # fmt: skip
    except NotFound:
        return  # NodeHealthCheck deleted it meanwhile
    except Refused as error:
        logger.error(
            f"VmleaseRemediation {meta.namespace}/{meta.name}: its status cannot be written "
            f"({error}); the operator answers remediations in its own namespace only (the "
            f"chart's RBAC): create the VmleaseRemediationTemplate there"
        )
        return
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VmleaseRemediation",
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
    }
    for event in remediation.transition_events(found, decision):
        logger.info(event.message)
        target = None
        if node is not None:
            target = {"apiVersion": "v1", "kind": "Node", "metadata": node["metadata"]}
        _post(body, event, target)
