"""host_id allocation rules as pure functions: which id, which object a node keeps, when an id may
be reused. No I/O here; the operator's ``hostid_writes`` applies these rules through the API server.

The rules (oVirt's lowest-free allocation, VDSM's host states, sanlock's safe time):

* a node gets the lowest id in 1..maxHosts not held by any HostId object of the lockspace,
  including objects that are being deleted (their id is still blocked);
* a node keeps its id while it exists and is selected, whatever the delta lease says, so that a
  rebooted node rejoins with the same id;
* an id is reused only after its HostId is released, and a HostId is released only when its
  node no longer wants it *and* either no agent ever claimed it (so nothing was written to disk
  with it) or the operator itself has seen its delta lease Dead or Free, continuously, for the
  safe time (``host_dead_seconds``). The operator counts that time on its own monotonic clock
  from its own first observation: agents' and operator's wall clocks may disagree, and the
  operator observes a state only after the agent that saw it on disk, so the disk state has
  lasted at least as long. An operator restart restarts the count (slower, never unsafe).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmlease_api.models import HostState

#: Delta-lease states in which nobody renews the id any more.
RELEASED_STATES = frozenset({HostState.DEAD, HostState.FREE})


@dataclass(frozen=True)
class HostIdRecord:
    """What allocation and node fencing need to know about one HostId object."""

    name: str
    lockspace: str
    node: str
    host_id: int
    state: HostState | None = None
    resource_version: str | None = None
    terminating: bool = False
    finalizers: tuple[str, ...] = ()
    state_since: datetime.datetime | None = None
    generation: int | None = None
    #: node fencing's evidence (``vmlease_operator.node_fencing``)
    observed_by: str | None = None
    last_renewal: datetime.datetime | None = None
    node_fencing: bool = False  # only a real true: the node's own agent armed its watchdog
    uid: str | None = None  # for Events about the HostId

    @property
    def claimed(self) -> bool:
        """An agent claimed the id (wrote a state): it may have written the disk with it."""
        return self.state is not None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> HostIdRecord:
        meta, spec = body["metadata"], body["spec"]
        status = body.get("status") or {}
        state, since = status.get("state"), status.get("stateSince")
        renewal = status.get("lastRenewal")
        return cls(
            name=meta["name"],
            lockspace=spec["lockspace"],
            node=spec["nodeName"],
            host_id=int(spec["hostId"]),
            state=HostState(state) if state else None,
            resource_version=meta.get("resourceVersion"),
            terminating=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            state_since=datetime.datetime.fromisoformat(since) if since else None,
            generation=status.get("generation"),
            observed_by=status.get("observedBy"),
            last_renewal=datetime.datetime.fromisoformat(renewal) if renewal else None,
            node_fencing=status.get("nodeFencing") is True,
            uid=meta.get("uid"),
        )


class LockspaceFull(Exception):
    """Every id in 1..maxHosts is held: the node waits until an id is released."""

    def __init__(self, lockspace: str, max_hosts: int) -> None:
        super().__init__(
            f"lockspace {lockspace} has no free host_id: all {max_hosts} are held by HostIds; "
            f"a node joins when an id is released (its node gone and its lease Dead or Free for "
            f"the safe time) or when maxHosts is raised"
        )


def lowest_free(taken: Iterable[int], max_hosts: int) -> int | None:
    """The lowest id in 1..max_hosts that is not taken, or None when all are."""
    held = set(taken)
    return next((i for i in range(1, max_hosts + 1) if i not in held), None)


def keeper(records: Iterable[HostIdRecord]) -> HostIdRecord | None:
    """The one HostId a node keeps when it has several in a lockspace (two operators raced).

    A claimed one wins (its agent may already use it on disk), else the lowest id; objects being
    deleted never count.
    """
    candidates = [r for r in records if not r.terminating]
    if not candidates:
        return None
    return min(candidates, key=lambda r: (not r.claimed, r.host_id))


def release_reason(
    record: HostIdRecord, wanted: bool, released_for: float, safe_seconds: float
) -> str | None:
    """Why ``record``'s id may be reused now, or None while it must stay blocked.

    ``wanted``: the record is its node's keeper and the node exists and is selected.
    ``released_for``: seconds the operator has seen the record Dead or Free without a break.
    """
    if wanted and not record.terminating:
        return None
    if not record.claimed:
        return "no agent ever claimed it, so its delta lease was never written"
    if record.state in RELEASED_STATES and released_for >= safe_seconds:
        return (
            f"its delta lease has been {record.state} for {released_for:.0f} s, "
            f"at least the safe time of {safe_seconds:.0f} s"
        )
    return None


class ReleaseClock:
    """Since when (operator monotonic time) each HostId has been seen Dead or Free without a
    break. In memory on purpose: see the module docstring.

    A watch that restarts may skip intermediate states (Dead, Live again, Dead): the agent's
    stateSince and the lease generation change on every such episode, so a change of either
    restarts the count too.
    """

    def __init__(self) -> None:
        self._since: dict[str, tuple[tuple[object, ...], float]] = {}

    def observe(self, record: HostIdRecord, now: float) -> None:
        if record.state not in RELEASED_STATES:
            self._since.pop(record.name, None)
            return
        episode = (record.state, record.state_since, record.generation)
        seen = self._since.get(record.name)
        if seen is None or seen[0] != episode:
            self._since[record.name] = (episode, now)

    def forget(self, name: str) -> None:
        self._since.pop(name, None)

    def released_for(self, name: str, now: float) -> float:
        seen = self._since.get(name)
        return 0.0 if seen is None else now - seen[1]
