"""What the agent looks like at one moment: frozen values for everyone who only reads.

Readers (the socket API, /healthz and /metrics, the Kubernetes sync, the libvirt watcher) get one
``AgentSnapshot``, taken under the agent's lock, and never touch its dicts, clients or locks: a
reader that holds a lock the lease path needs can delay an acquisition or a fencing decision,
and one that walks a dict another thread changes sees a table that never existed.

``to_wire()`` renders each value exactly as the socket API has always answered ``status`` and
``events`` (keys, their order and their rounding): ``vmlease client status``, the interop tests
and anything scripted on the JSON read it byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: What a lease holder is: a process (key ``pid:<pid>``), a libvirt domain (key ``libvirt:<uuid>``,
#: bound to its QEMU pid once that runs), or another placeholder key given over the socket API.
HolderKind = Literal["process", "domain", "key"]

#: The key of a libvirt domain's placeholder, ``libvirt:<domain uuid>`` (``virt.plan.holder_key``).
DOMAIN_KEY_PREFIX = "libvirt:"


def holder_kind(key: str) -> HolderKind:
    """What the holder named by ``key`` is, decided here once for every reader."""
    if key.startswith("pid:"):
        return "process"
    if key.startswith(DOMAIN_KEY_PREFIX):
        return "domain"
    return "key"


@dataclass(frozen=True, slots=True)
class LockspaceSnapshot:
    """A joined (or joining, failed, stopped) lockspace, as ``JoinedLockspace`` saw itself."""

    name: str
    host_id: int
    path: str
    offset: int
    io_timeout: int
    generation: int
    state: str
    error: str
    last_renewal_ago: float | None  # seconds, rounded to 0.1 (None: never renewed)
    renewal_ms: float  # rounded to 0.01
    deadline_in: float | None  # seconds until T + 8N, rounded to 0.1 (None: never renewed)
    fence_node: bool = False  # nodeFencing: the watchdog stays armed while our lease is on disk

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host_id": self.host_id,
            "path": self.path,
            "offset": self.offset,
            "io_timeout": self.io_timeout,
            "generation": self.generation,
            "state": self.state,
            "error": self.error,
            "last_renewal_ago": self.last_renewal_ago,
            "renewal_ms": self.renewal_ms,
            "deadline_in": self.deadline_in,
            "fence_node": self.fence_node,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> LockspaceSnapshot:
        """Back from the wire form (what a client of the socket API, or a test, has)."""
        return cls(
            name=d["name"],
            host_id=d["host_id"],
            path=d.get("path", ""),
            offset=d.get("offset", 0),
            io_timeout=d.get("io_timeout", 0),
            generation=d.get("generation") or 0,
            state=d["state"],
            error=d.get("error") or "",
            last_renewal_ago=d.get("last_renewal_ago"),
            renewal_ms=d.get("renewal_ms") or 0.0,
            deadline_in=d.get("deadline_in"),
            fence_node=bool(d.get("fence_node")),
        )


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Who holds a lease on this node: what the agent knows of the holder, typed."""

    key: str
    kind: HolderKind
    pid: int  # 0 while a placeholder is not bound to a process yet
    process: str  # the process name (/proc/PID/comm), or a placeholder's name
    owner: str  # what the holder is for people (a VM name, a command), "" if not given

    @property
    def shown_as(self) -> str:
        """The name people see: the owner if given, else the process name."""
        return self.owner or self.process

    @property
    def domain(self) -> str | None:
        """The libvirt domain's name when the holder is one, else None."""
        return (self.shown_as or None) if self.kind == "domain" else None


@dataclass(frozen=True, slots=True)
class LeaseSnapshot:
    """One lease held on this node by one holder (a shared lease appears once per holder)."""

    lease: str  # the label, LOCKSPACE:RESOURCE
    lockspace: str
    resource: str
    path: str
    offset: int
    lver: int
    shared: bool
    host_id: int
    generation: int
    holder: LeaseHolder
    since: float  # wall clock, for people
    #: a pending request to give it up: (requested lver, force mode); None if there is none
    request: tuple[int, int] | None = None
    #: the disk an automatic disk lease protects, if the acquirer said (libvirt's hook does)
    disk_path: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "lease": self.lease,
            "lockspace": self.lockspace,
            "resource": self.resource,
            "path": self.path,
            "offset": self.offset,
            "lver": self.lver,
            "shared": self.shared,
            "host_id": self.host_id,
            "generation": self.generation,
            "pid": self.holder.pid,
            "process": self.holder.process,
            "holder": self.holder.key,
            "owner": self.holder.shown_as,
            "since": self.since,
            "request": (
                {"lver": self.request[0], "force_mode": self.request[1]} if self.request else None
            ),
            "disk_path": self.disk_path,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> LeaseSnapshot:
        """Back from the wire form (the owner shown there is the owner, or the process name)."""
        key = str(d["holder"])
        holder = LeaseHolder(key, holder_kind(key), d["pid"], d["process"], d["owner"])
        return cls(
            lease=d["lease"],
            lockspace=d["lockspace"],
            resource=d["resource"],
            path=d["path"],
            offset=d["offset"],
            lver=d["lver"],
            shared=d["shared"],
            host_id=d["host_id"],
            generation=d["generation"],
            holder=holder,
            since=d["since"],
            request=(r["lver"], r["force_mode"]) if (r := d.get("request")) else None,
            disk_path=d.get("disk_path"),
        )


@dataclass(frozen=True, slots=True)
class HolderSnapshot:
    """One registered holder with what it holds; ``exiting``: its process is gone and its
    leases are being released (they are still its own until the release is on disk)."""

    holder: LeaseHolder
    kill_command: tuple[str, ...] | None
    exiting: bool
    leases: tuple[LeaseSnapshot, ...]

    @property
    def key(self) -> str:
        return self.holder.key

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(x.lease for x in self.leases)


@dataclass(frozen=True, slots=True)
class WatchdogSnapshot:
    fire_timeout: int  # the configured W
    device_timeout: int  # the W the device runs with (never more than any delta lease advertises)
    armed: bool
    last_feed_ago: float | None  # None while disarmed
    on_sigterm: str  # what stopping the agent now would do to this node
    new_leases_wait: str  # why new leases are refused for now (the device may not open), or ""
    condemned: str = ""  # why this node is being reset (node fencing), or ""
    enforced: bool = True  # a device that resets the node (not ``--watchdog none``)

    def to_wire(self) -> dict[str, Any]:
        return {
            "fire_timeout": self.fire_timeout,
            "device_timeout": self.device_timeout,
            "armed": self.armed,
            "last_feed_ago": self.last_feed_ago,
            "on_sigterm": self.on_sigterm,
            "new_leases_wait": self.new_leases_wait,
            "condemned": self.condemned,
            "enforced": self.enforced,
        }


@dataclass(frozen=True, slots=True)
class FencedSnapshot:
    """The last failure of one of our lockspaces with holders in it: whom the agent stopped and
    how, for the node's HostId (and so for Kubernetes Events: "holders killed")."""

    lockspace: str
    since: float  # wall clock when the fencing began
    error: str  # why the lockspace failed
    holders: tuple[str, ...]  # one line each: "vm1 (pid 4242): SIGTERM, SIGKILL"
    done: bool  # every holder is gone: nothing of this node writes under the lockspace


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """Something that happened (a join, a lease, a fencing step), kept for status and people."""

    kind: str
    at: float  # the agent's monotonic clock
    time: float  # wall clock
    fields: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"event": self.kind, "at": self.at, "time": self.time, **self.fields}


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    node: str
    taken_at: float  # the agent's monotonic clock when the snapshot was taken
    #: the main loop: whether its thread runs, and when (monotonic) it last passed
    loop_running: bool
    last_tick: float
    watchdog: WatchdogSnapshot
    lockspaces: tuple[LockspaceSnapshot, ...]
    #: registered holders first, then exiting ones (the order ``status`` lists leases in)
    holders: tuple[HolderSnapshot, ...]
    events: tuple[AgentEvent, ...]
    #: per lockspace, its last failure with holders of ours in it (``FencingDriver``)
    fenced: tuple[FencedSnapshot, ...] = ()

    @property
    def leases(self) -> tuple[LeaseSnapshot, ...]:
        return tuple(lease for h in self.holders for lease in h.leases)

    def lockspace(self, name: str) -> LockspaceSnapshot | None:
        return next((x for x in self.lockspaces if x.name == name), None)

    def holder(self, key: str) -> HolderSnapshot | None:
        """A registered holder (not an exiting one) by key."""
        return next((h for h in self.holders if h.key == key and not h.exiting), None)

    def to_wire(self) -> dict[str, Any]:
        """The ``status`` op's result."""
        return {
            "node": self.node,
            "watchdog": self.watchdog.to_wire(),
            "lockspaces": [x.to_wire() for x in self.lockspaces],
            "leases": [x.to_wire() for x in self.leases],
            "fenced": [
                {
                    "lockspace": f.lockspace,
                    "since": f.since,
                    "error": f.error,
                    "holders": list(f.holders),
                    "done": f.done,
                }
                for f in self.fenced
            ],
        }
