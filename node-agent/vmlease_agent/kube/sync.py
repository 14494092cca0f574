"""The agent's Kubernetes mode (``vmlease-agent --kubernetes``): Lockspaces in, status out.

One thread, best effort, never on the lease path. The agent's renewals, fencing and watchdog run
in their own threads and never wait for this one; this thread only *calls* the agent (join,
leave, read status) and the API server. When the API server is away, the watches keep their
last known state, writes back off (1 s doubling to 30 s, jittered) and everything is caught up
when it returns; leases and renewals are not touched by any of it.

What it watches (three list+watch caches, ``informer``):
  * every Lockspace (few objects): which ones select this Node;
  * this Node (field selector on its name): its labels;
  * this node's HostIds (label ``vmlease.io/node``): the ids the operator allocated.

What it writes, and when (rates are per node):
  * its HostIds' ``status``: the claim (once, with a resourceVersion precondition); then on
    every change of state, generation or Joined reason, else every ``--status-interval``
    (30 s) to refresh lastRenewal and renewalLatencyMs — never once per renewal;
  * other nodes' HostId ``status`` (Failing, Dead, Free, as read on disk), by one agent per
    lockspace (``kube_logic.is_reporter``), checked every ``--status-interval``;
  * a Lockspace's ``status.formatted*`` once, if the operator asked this node to format it;
  * DiskLease ``status`` when a lease this node holds is acquired or released (read-modify-
    write with resourceVersion preconditions, so a slow release never hides the next holder),
    plus a full check every ``DISKLEASE_RESYNC_SECONDS``; DiskLeases for automatic disk leases
    are created when first held.

The decisions are plain functions in ``kube_logic``; this module is the loop that feeds them.
Joining and leaving lockspaces (membership) is ``membership``; status is written from here and
by the publishers (``hostid_publisher``, ``lease_publisher``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pydantic import ValidationError
from vmlease_api import naming
from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import (
    HostState,
    Lockspace,
)

from vmlease_agent.core import lockspace as local_ls
from vmlease_agent.core.agent import Agent
from vmlease_agent.core.snapshot import FencedSnapshot
from vmlease_agent.engine import errors
from vmlease_agent.engine.timeouts import host_dead_seconds
from vmlease_agent.kube import decisions as kube_logic
from vmlease_agent.kube.api import (
    HOSTIDS,
    LOCKSPACES,
    NODES,
    KubeApi,
    Unavailable,
)
from vmlease_agent.kube.decisions import Local, Step
from vmlease_agent.kube.hostid_publisher import HostIdPublisher
from vmlease_agent.kube.informer import Backoff, Informer
from vmlease_agent.kube.lease_publisher import LeasePublisher
from vmlease_agent.kube.membership import LockspaceMembership, local_condition

log = logging.getLogger(__name__)

#: Default for ``--status-interval``: how stale lastRenewal may get in a HostId. With the
#: default io_timeout 10 a renewal happens every 2N = 20 s, so the published lastRenewal lags
#: by at most 30 s + 20 s, well inside the 8N = 80 s in which a silent host is still Live; a
#: 1,000-node cluster then costs ~33 HostId writes per second per lockspace.
STATUS_INTERVAL = 30.0
#: How often the loop looks at the local agent even without a watch event: lease acquisitions
#: and releases are local and reach DiskLease status within this time.
POLL_SECONDS = 1.0
#: A full check of every DiskLease naming this node (one list), to clear ones whose release
#: happened while the agent or the API server was down.
DISKLEASE_RESYNC_SECONDS = 600.0
#: Joined reasons that say more than the local lockspace state does.
_STICKY = ("LeaveBlocked", Step.CONFLICT.value)


@dataclass
class KubeConfig:
    node: str
    shared_dir: str
    run_dir: str
    fire_timeout: int
    status_interval: float = STATUS_INTERVAL
    poll_seconds: float = POLL_SECONDS
    disklease_resync: float = DISKLEASE_RESYNC_SECONDS


class KubeSync:
    """The sync thread. ``pass_once`` is one full round and can be driven by tests."""

    def __init__(
        self,
        agent: Agent,
        api: KubeApi,
        cfg: KubeConfig,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.agent, self.api, self.cfg = agent, api, cfg
        self.monotonic, self.wall = monotonic, wall
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        wake = self._wake.set
        self.lockspaces = Informer(api, LOCKSPACES, on_change=wake)
        self.node = Informer(api, NODES, field_selector=f"metadata.name={cfg.node}", on_change=wake)
        self.hostids = Informer(
            api,
            HOSTIDS,
            label_selector=f"{naming.LABEL_NODE}={naming.node_label_value(cfg.node)}",
            on_change=wake,
        )
        self.wanted_names: set[str] | None = None
        self.last_pass = 0.0
        self.api_errors = 0
        self._backoff = Backoff()
        self._api_retry_at = 0.0
        self._report_at: dict[str, float] = {}
        self._said: set[str] = set()
        self.membership = LockspaceMembership(
            agent,
            api,
            cfg.node,
            cfg.shared_dir,
            cfg.run_dir,
            self.lockspaces,
            wall,
            self._say_once,
            api_ready=lambda mono: mono >= self._api_retry_at,
        )
        self.hostid_status = HostIdPublisher(
            api, cfg.node, self.hostids, wall, cfg.status_interval, self._say_once
        )
        self.leases = LeasePublisher(
            api,
            cfg.node,
            cfg.shared_dir,
            wall,
            cfg.status_interval,
            cfg.disklease_resync,
            self._say_once,
        )

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def informers(self) -> tuple[Informer, ...]:
        return (self.lockspaces, self.node, self.hostids)

    def start(self) -> None:
        for informer in self.informers:
            informer.start()
        self._thread = threading.Thread(target=self._run, name="kube-sync", daemon=True)
        self._thread.start()

    def stop(self, left: dict[str, int] | None = None) -> None:
        """End the loop. ``left``: lockspaces the stopping agent just left (``leave_idle``),
        name -> host_id; their HostIds are written Free once more before the watches end, so
        ``kubectl get hostids`` says at once what the disk says (nobody else may report them:
        the reporter is one of the lockspace's agents, and after an uninstall none is left)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if left:
            self._publish_left(left)
        for informer in self.informers:
            informer.stop()

    def _publish_left(self, left: dict[str, int]) -> None:
        mono, records = self.monotonic(), self._records()
        for name, host_id in sorted(left.items()):
            record = self._record_for(records, name, host_id)
            if record is None or not record.claimed:
                continue
            condition = (
                False,
                "AgentStopped",
                f"the agent on node {self.cfg.node} stopped with no leases held in lockspace "
                f"{name}: host_id {host_id} released",
            )
            try:
                self.hostid_status.write(record, HostState.FREE, None, condition, mono)
            except Unavailable as error:
                log.warning("HostId %s not written Free (%s): peers read it on disk", name, error)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.pass_once()
            except Exception:  # a bug here must never end the thread (or touch leases)
                log.exception("kubernetes sync pass failed")

    def refresh(self) -> None:
        """List every watched kind once, synchronously (tests drive passes without watches)."""
        for informer in self.informers:
            informer.relist()

    # ---- one pass -------------------------------------------------------------------------------

    def pass_once(self) -> None:
        mono = self.monotonic()
        self.last_pass = mono
        snap = self.agent.snapshot()
        local = {ls.name: Local.of(ls, snap.watchdog) for ls in snap.lockspaces}
        self._honour_fence_request(local)
        leases = snap.leases
        records = self._records()
        synced = all(i.synced.is_set() for i in self.informers)
        wanted: dict[str, Lockspace] = {}
        self.membership.new_pass()
        if synced:
            wanted = kube_logic.wanted(self._lockspace_models(), self._node_labels())
            self.wanted_names = set(wanted)
            for name, ls in wanted.items():
                hostid = kube_logic.my_hostid(records, name, self.cfg.node)
                decision = kube_logic.decide(
                    ls, hostid, local.get(name), self.cfg.node, self.cfg.fire_timeout
                )
                self.membership.act(ls, decision, local.get(name), mono)
            self.membership.leave(wanted, local, leases)
            snap = self.agent.snapshot()
            local = {ls.name: Local.of(ls, snap.watchdog) for ls in snap.lockspaces}
        if mono < self._api_retry_at:
            return
        try:
            fenced = {f.lockspace: f for f in snap.fenced}
            self._write_own_status(wanted, local, records, mono, fenced)
            self._report_peers(local, mono)
            self.leases.publish(leases, self._lockspace, mono)
        except Unavailable as error:
            self.api_errors += 1
            delay = self._backoff.next()
            self._api_retry_at = mono + delay
            log.warning("API server unavailable (%s); status writes resume in %.1fs", error, delay)
        else:
            self._backoff.reset()

    def _honour_fence_request(self, local: Mapping[str, Local]) -> None:
        node = self.node.get(self.cfg.node)
        why = kube_logic.fence_request(node["metadata"].get("annotations") if node else None, local)
        if why:
            self.agent.fence_self(why)

    def _records(self) -> list[HostIdRecord]:
        out = []
        for obj in self.hostids.objects():
            try:
                out.append(HostIdRecord.from_body(obj))
            except (KeyError, ValueError):
                continue
        return out

    def _lockspace_models(self) -> list[Lockspace]:
        out = []
        for obj in self.lockspaces.objects():
            try:
                out.append(Lockspace.model_validate(obj))
            except ValidationError as error:
                self._say_once(
                    f"invalid:{obj['metadata'].get('name')}",
                    f"Lockspace {obj['metadata'].get('name')} does not parse, ignored: {error}",
                )
        return out

    def _node_labels(self) -> dict[str, str] | None:
        node = self.node.get(self.cfg.node)
        if node is None:
            self._say_once(
                "no-node",
                f"no Node named {self.cfg.node}: the agent joins nothing until it exists "
                f"(set NODE_NAME from the downward API: fieldRef spec.nodeName)",
            )
            return None
        return dict(node["metadata"].get("labels") or {})

    def _say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("%s", message)

    # ---- HostId status --------------------------------------------------------------------------

    def _write_own_status(
        self,
        wanted: dict[str, Lockspace],
        local: dict[str, Local],
        records: list[HostIdRecord],
        mono: float,
        fenced: Mapping[str, FencedSnapshot],
    ) -> None:
        joins = self.membership
        names = set(wanted) | (joins.managed & set(local)) | set(joins.left)
        for name in sorted(names):
            item = local.get(name)
            left = joins.left.get(name)
            host_id = item.host_id if item is not None else left
            record = self._record_for(records, name, host_id)
            if record is None:
                if left is not None:
                    joins.forget_left(name)  # nothing to tell: the HostId is gone
                continue
            condition = self._condition(name, item)
            if not record.claimed:
                # claim only when the decision says so: a node that refuses the lockspace (its
                # watchdog is too slow) must not be chosen to format it
                if name in joins.claims:
                    self.hostid_status.claim(record, condition, mono)
                elif name in wanted:
                    self.hostid_status.note(record, condition, mono)
                continue
            if left is not None and item is None:
                state = HostState.FREE
            elif item is not None:
                state = kube_logic.LOCAL_TO_HOST_STATE[item.state]
            else:
                state = HostState.JOINING
            if self.hostid_status.write(
                record, state, item, condition, mono, fenced.get(name)
            ) and (state == HostState.FREE):
                joins.forget_left(name)

    def _condition(self, name: str, item: Local | None) -> tuple[bool, str, str]:
        """The Joined condition: the local lockspace's own state once there is one (it changes
        between passes), unless the decision has more to say (a blocked leave, a conflict)."""
        decided = self.membership.conditions.get(name)
        if decided is not None and (item is None or decided[1] in _STICKY):
            return decided
        return local_condition(item)

    def _record_for(
        self, records: Iterable[HostIdRecord], name: str, host_id: int | None
    ) -> HostIdRecord | None:
        mine = [r for r in records if r.lockspace == name and r.node == self.cfg.node]
        if host_id is not None:
            exact = [r for r in mine if r.host_id == host_id]
            if exact:
                return exact[0]
        return kube_logic.my_hostid(mine, name, self.cfg.node)

    # ---- other hosts ----------------------------------------------------------------------------

    def _report_peers(self, local: dict[str, Local], mono: float) -> None:
        for name, item in local.items():
            if name not in self.membership.managed or item.state != local_ls.LIVE:
                continue
            if mono < self._report_at.get(name, 0.0):
                continue
            try:
                rows = self.agent.host_status(name)
            except errors.LeaseError:
                continue
            if not kube_logic.is_reporter(rows, item.host_id):
                continue
            self._report_at[name] = mono + self.cfg.status_interval
            self.hostid_status.report_peers(name, rows)
            ls = self._lockspace(name)
            if ls is not None:
                failover = host_dead_seconds(
                    ls.spec.io_timeout_seconds, ls.spec.watchdog_fire_timeout_seconds
                )
                self.leases.report_orphans(name, rows, failover)

    # ---- disk leases ----------------------------------------------------------------------------

    def _lockspace(self, name: str) -> Lockspace | None:
        obj = self.lockspaces.get(name)
        try:
            return Lockspace.model_validate(obj) if obj else None
        except ValidationError:
            return None

    # ---- health -------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when every Lockspace that selects this node is joined and live."""
        if self.wanted_names is None:
            return False, ["waiting for the first list of Lockspaces, this Node and its HostIds"]
        snap = self.agent.snapshot()
        missing = []
        for name in sorted(self.wanted_names):
            joined = snap.lockspace(name)
            state = joined.state if joined is not None else None
            if state != local_ls.LIVE:
                _, reason, message = self.membership.conditions.get(name, (False, "NotJoined", ""))
                missing.append(f"lockspace {name}: {state or 'not joined'} ({reason}: {message})")
        return not missing, missing
