"""Lockspace membership for Kubernetes: join and leave lockspaces as the Lockspace CRs say.

The sync loop (``sync``) decides once per pass, with ``decisions``, what each Lockspace
selecting this node needs (claim, format, join, nothing) and hands the decision here; this
module carries it out against the local agent (join, leave, format the area) and remembers what
it did: the Joined condition per lockspace, which lockspaces were joined for Kubernetes (across
agent restarts, ``MANAGED_FILE``), which ones it just left (their HostId is then written Free)
and which ones it claims this pass. Status publishing stays in ``sync`` and the publishers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence

from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import ALIGN_BYTES, Lockspace

from vmlease_agent.core import lockspace as local_ls
from vmlease_agent.core.agent import Agent
from vmlease_agent.core.lockspace import LockspaceConfig
from vmlease_agent.core.snapshot import LeaseSnapshot
from vmlease_agent.engine import errors
from vmlease_agent.kube import decisions as kube_logic
from vmlease_agent.kube import formatting as kube_format
from vmlease_agent.kube.api import LOCKSPACES, Conflict, KubeApi, Refused, Unavailable
from vmlease_agent.kube.decisions import Decision, Local, Step
from vmlease_agent.kube.informer import Informer

log = logging.getLogger(__name__)

#: First and longest pause between join attempts of one lockspace after a failed join.
JOIN_RETRY_SECONDS, JOIN_RETRY_MAX_SECONDS = 5.0, 60.0
#: Pause after a failed format before the next attempt (the area or the path needs fixing).
FORMAT_RETRY_SECONDS = 30.0
#: How many read-modify-write rounds the formatted mark tries before leaving it to the next pass.
CONFLICT_ROUNDS = 3
MANAGED_FILE = "kube-lockspaces.json"


class LockspaceMembership:
    """Joins and leaves for one node; ``act`` and ``leave`` are called by the sync pass."""

    def __init__(
        self,
        agent: Agent,
        api: KubeApi,
        node: str,
        shared_dir: str,
        run_dir: str,
        lockspaces: Informer,
        wall: Callable[[], float],
        say_once: Callable[[str, str], None],
        api_ready: Callable[[float], bool],
    ) -> None:
        self.agent, self.api = agent, api
        self.node, self.shared_dir, self.run_dir = node, shared_dir, run_dir
        self.lockspaces, self.wall, self.say_once = lockspaces, wall, say_once
        #: is the API server worth a write now (the sync's backoff)?
        self.api_ready = api_ready
        self.managed: set[str] = self._load_managed()
        #: the Joined condition decided per lockspace: (status, reason, message)
        self.conditions: dict[str, tuple[bool, str, str]] = {}
        #: lockspaces just left: name -> the host_id we had (its HostId is to be written Free)
        self.left: dict[str, int] = {}
        #: lockspaces whose HostId this node claims this pass
        self.claims: set[str] = set()
        self._join_at: dict[str, float] = {}
        self._join_delay: dict[str, float] = {}
        self._format_at: dict[str, float] = {}

    def new_pass(self) -> None:
        """A sync pass begins: claims are decided afresh."""
        self.claims.clear()

    def forget_left(self, name: str) -> None:
        """The HostId of a lockspace we left has been written Free (or is gone)."""
        self.left.pop(name, None)

    def act(self, ls: Lockspace, d: Decision, local: Local | None, mono: float) -> None:
        name = ls.metadata.name
        if d.step == Step.JOINED:
            if d.hostid is not None and name not in self.managed:
                self._manage(name, True)
            self.left.pop(name, None)
            self.conditions[name] = local_condition(local)
            if local is not None and local.state == local_ls.LIVE:
                self._join_delay.pop(name, None)
        elif d.step == Step.JOIN:
            self._join(ls, d.hostid, local, mono)
        elif d.step == Step.FORMAT:
            self._format(ls, d.hostid, mono)
        elif d.step == Step.CLAIM:
            self.claims.add(name)
            self.conditions[name] = (False, "Claimed", "claimed; waiting for the format")
        else:
            self.conditions[name] = (False, d.step.value, d.message)
            if d.step in (Step.REFUSED, Step.CONFLICT):
                self.say_once(f"{d.step}:{name}", d.message)

    def _join(
        self, ls: Lockspace, hostid: HostIdRecord | None, local: Local | None, mono: float
    ) -> None:
        assert hostid is not None
        name = ls.metadata.name
        if local is not None and local.state == local_ls.STOPPED:
            self.conditions[name] = local_condition(local)
        if mono < self._join_at.get(name, 0.0):
            return
        delay = self._join_delay.get(name, JOIN_RETRY_SECONDS / 2) * 2
        self._join_delay[name] = min(JOIN_RETRY_MAX_SECONDS, delay)
        self._join_at[name] = mono + self._join_delay[name]
        spec = ls.spec
        path = kube_logic.resolve_path(self.shared_dir, spec.path)
        problem = self._not_shared(ls, path)
        if problem:
            self.conditions[name] = (False, "StorageNotShared", problem)
            self.say_once(f"not-shared:{name}", problem)
            return
        cfg = LockspaceConfig(
            name,
            hostid.host_id,
            path,
            spec.offset,
            spec.io_timeout_seconds,
            # every host of a Kubernetes Lockspace agrees to judge us by its promise
            promised_fire_timeout=spec.watchdog_fire_timeout_seconds,
            fence_node=spec.node_fencing,
        )
        self._manage(name, True)
        self.left.pop(name, None)
        try:
            self.agent.add_lockspace(cfg, wait=False)
        except errors.LeaseError as error:
            self.conditions[name] = (False, "JoinFailed", str(error))
            log.error("joining lockspace %s failed: %s", name, error)
            return
        self.conditions[name] = local_condition(Local(name, hostid.host_id, local_ls.JOINING, 0))
        log.info("joining lockspace %s with host_id %d (%s)", name, hostid.host_id, cfg.spec)

    def _format(self, ls: Lockspace, hostid: HostIdRecord | None, mono: float) -> None:
        assert hostid is not None
        name, spec = ls.metadata.name, ls.spec
        if mono < self._format_at.get(name, 0.0):
            return
        geometry = kube_format.Geometry(
            name=name,
            path=kube_logic.resolve_path(self.shared_dir, spec.path),
            offset=spec.offset,
            sector_size=spec.sector_size,
            align_bytes=ALIGN_BYTES[spec.align_size],
            io_timeout=spec.io_timeout_seconds,
        )
        try:
            outcome = kube_format.format_or_adopt(geometry)
            storage_id = kube_format.ensure_storage_id(geometry.path, name)
        except (errors.LeaseError, OSError) as error:
            self._format_at[name] = mono + FORMAT_RETRY_SECONDS
            self.conditions[name] = (False, "FormatFailed", f"formatting {geometry.path}: {error}")
            log.error("formatting lockspace %s at %s failed: %s", name, geometry.path, error)
            return
        verb = "formatted" if outcome == kube_format.FORMATTED else "found already formatted"
        log.info(
            "%s lockspace %s at %s:%d (host_id %d)",
            verb,
            name,
            geometry.path,
            geometry.offset,
            hostid.host_id,
        )
        self.conditions[name] = (False, "Formatted", f"{verb} by this node; joining next")
        if self.api_ready(mono):
            with contextlib.suppress(Unavailable, Refused):
                self._mark_formatted(name, storage_id)

    def _not_shared(self, ls: Lockspace, path: str) -> str:
        """Why this node's copy of the area is not the one the formatting node wrote, or ""."""
        expected = ls.status.storage_id if ls.status else None
        marker = kube_format.storage_id_path(path, ls.metadata.name)
        if expected is None or marker is None:
            return ""  # formatted before storage ids existed, or on a block device
        seen = kube_format.read_storage_id(path, ls.metadata.name)
        if seen == expected:
            return ""
        formatter = ls.status.formatted_by if ls.status else None
        found = f"finds storage id {seen}" if seen else f"finds no storage id in {marker}"
        return (
            f"node {self.node} {found}, but lockspace {ls.metadata.name} was formatted with "
            f"{expected} (by node {formatter}): {self.shared_dir} on this node is not the shared "
            f"directory the other nodes use (is the shared volume mounted here?). This node "
            f"holds no leases in it until the file matches"
        )

    def _mark_formatted(self, name: str, storage_id: str | None) -> None:
        """Set status.formatted and storageId (and drop the request), re-reading on conflicts."""
        for _ in range(CONFLICT_ROUNDS):
            obj = self.api.get(LOCKSPACES, name)
            status = obj.get("status") or {}
            if status.get("formatted"):
                return
            patch = {
                "formatted": True,
                "formattedBy": self.node,
                "formattedAt": _iso(self.wall()),
                "formatRequest": None,
                "storageId": storage_id,
            }
            try:
                new = self.api.patch_status(
                    LOCKSPACES, name, patch, obj["metadata"]["resourceVersion"]
                )
            except Conflict:
                continue
            self.lockspaces.apply("MODIFIED", new)
            return

    def leave(
        self,
        wanted: dict[str, Lockspace],
        local: dict[str, Local],
        leases: Sequence[LeaseSnapshot],
    ) -> None:
        joined = [n for n, item in local.items() if item.active]
        for name in kube_logic.to_leave(self.managed, joined, wanted):
            users = sorted({x.holder.key for x in leases if x.lockspace == name})
            if users:
                self.conditions[name] = (
                    True,
                    "LeaveBlocked",
                    f"no Lockspace selects node {self.node} any more, but "
                    f"{', '.join(users)} hold leases in it: the agent leaves once they are "
                    f"released",
                )
                continue
            host_id = local[name].host_id
            try:
                self.agent.rem_lockspace(name)
            except errors.LeaseError as error:
                log.warning("leaving lockspace %s failed: %s", name, error)
                continue
            log.info("left lockspace %s (host_id %d): no longer selected", name, host_id)
            self._manage(name, False)
            self.left[name] = host_id
            self.conditions[name] = (False, "Left", f"node {self.node} is no longer selected")
        for name in list(self.managed):
            if name not in local and name not in wanted:
                self._manage(name, False)

    def _load_managed(self) -> set[str]:
        try:
            with open(os.path.join(self.run_dir, MANAGED_FILE)) as f:
                return set(json.load(f)["lockspaces"])
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def _manage(self, name: str, on: bool) -> None:
        """Remember which lockspaces were joined for Kubernetes, across agent restarts: one
        whose Lockspace was deleted while the agent was down must still be left."""
        before = set(self.managed)
        (self.managed.add if on else self.managed.discard)(name)
        if self.managed == before:
            return
        path = os.path.join(self.run_dir, MANAGED_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"lockspaces": sorted(self.managed)}, f)
        os.replace(tmp, path)


def local_condition(local: Local | None) -> tuple[bool, str, str]:
    """The Joined condition the local lockspace's own state gives."""
    if local is None:
        return (False, "NotJoined", "not joined")
    if local.state == local_ls.LIVE:
        return (True, "Joined", f"host_id {local.host_id}, generation {local.generation}")
    if local.state == local_ls.FAILED:
        return (False, "Failed", local.error or "renewals failed")
    if local.state == local_ls.STOPPED:
        return (False, "JoinFailed", f"{local.error}; the agent retries")
    return (
        False,
        "Joining",
        "acquiring the delta lease (2N; 8N+W when another host name held it)",
    )


def _iso(ts: float) -> str:
    return kube_logic.utc(ts).isoformat().replace("+00:00", "Z")
