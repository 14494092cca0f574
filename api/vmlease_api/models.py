"""The vmlease API: Lockspace, HostId, DiskLease and the NodeHealthCheck remediation kinds, the one
source of truth for their shapes.

Field docstrings become the CRD descriptions (``kubectl explain``), pydantic constraints become
OpenAPI validation, and ``x-kubernetes-validations`` carry the CEL rules that need more than one
field or the old object (immutability). Every CEL rule has a pydantic twin here, so a program that
reads an object through these models applies the same rules the API server applied on write.

Who writes what:

* ``spec`` of Lockspace and DiskLease: users (DiskLease also: the agent, for automatic disk leases).
* ``spec`` of HostId, ``status.formatRequest`` and the conditions of a Lockspace: the operator.
* ``status`` of HostId and DiskLease, ``status.formatted*`` of a Lockspace: the node agents.
* VmleaseRemediationTemplate: users (the chart makes one); VmleaseRemediation: medik8s
  NodeHealthCheck creates and deletes it, the operator writes its ``status``.
"""

from __future__ import annotations

import datetime
import enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from vmlease_api import API_VERSION
from vmlease_api.naming import hostid_name

# --- names -----------------------------------------------------------------------------------

#: RFC 1123 label: what a Lockspace or resource name must be, because both are joined with a dot
#: into other object names (``<lockspace>.<hostId>``) and must not contain dots themselves.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: RFC 1123 subdomain: Kubernetes object names, e.g. Node names.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: sanlock keeps lockspace and resource names in ``char[48]`` on disk (``NAME_ID_SIZE``).
NAME_LEN = 48

# One path segment that is not "..": the agent resolves relative paths under its shared volume
# and must never be steered outside it.
_SEGMENT = r"(?:[^/.\x00][^/\x00]*|\.[^/.\x00][^/\x00]*|\.|\.\.[^/\x00]+)"
#: A lease area: relative to the agent's shared volume, or a shared block device under /dev/.
#: Anything else would let whoever may create a Lockspace make the privileged agent overwrite
#: an arbitrary file on every node.
LEASE_PATH = rf"^(?:/dev/)?{_SEGMENT}(?:/{_SEGMENT})*$"
#: A directory under the agent's shared volume (never absolute).
RELATIVE_PATH = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"

Name = Annotated[str, Field(min_length=1, max_length=NAME_LEN, pattern=DNS_LABEL)]
NodeName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
HostIdNumber = Annotated[int, Field(ge=1, le=2000)]

# --- lockspace geometry (src/sizeflags.c: size_to_max_hosts) ---------------------------------

MiB = 1024 * 1024
AlignSize = Literal["1M", "2M", "4M", "8M"]
ALIGN_BYTES: dict[str, int] = {"1M": 1 * MiB, "2M": 2 * MiB, "4M": 4 * MiB, "8M": 8 * MiB}
#: (sector size, align size) -> how many hosts the lease area has room for. Pairs that are not
#: here (512-byte sectors with more than 1M align) are refused by sanlock and by this API.
MAX_HOSTS: dict[tuple[int, str], int] = {
    (512, "1M"): 2000,
    (4096, "1M"): 250,
    (4096, "2M"): 500,
    (4096, "4M"): 1000,
    (4096, "8M"): 2000,
}


def max_hosts_for(sector_size: int, align_size: str) -> int:
    """How many host_ids fit in a lease area of this geometry."""
    return MAX_HOSTS[(sector_size, align_size)]


def _cel_choice(table: dict[Any, int], subject: str, fallback: str) -> str:
    """A CEL conditional chain mapping ``subject``'s values to numbers, generated from a table."""
    expr = fallback
    for key, value in reversed(table.items()):
        expr = f"({subject} == {key} ? {value} : {expr})"
    return expr


def _cel_max_hosts() -> str:
    by_align = {f"'{a}'": n for (s, a), n in MAX_HOSTS.items() if s == 4096}
    align_chain = _cel_choice(by_align, "self.alignSize", "0")
    return f"(self.sectorSize == 512 ? {MAX_HOSTS[(512, '1M')]} : {align_chain})"


def _cel_align_bytes() -> str:
    return _cel_choice({f"'{a}'": b for a, b in ALIGN_BYTES.items()}, "self.alignSize", "1")


def _immutable(what: str) -> dict[str, Any]:
    """A CEL transition rule: the field keeps its first value (checked only once it is set)."""
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": what}]}


# --- base ------------------------------------------------------------------------------------


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are ignored when reading, so an
    older program can read objects written by a newer one (the API server prunes them anyway)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def to_api(self) -> dict[str, Any]:
        """The JSON-ready dict to send: aliases, no unset optionals (absent, never null)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One aspect of an object's state, as ``metav1.Condition`` defines it."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    """CamelCase aspect, e.g. Ready, Formatted, Joined, Held."""
    status: ConditionStatus
    """True, False or Unknown."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation the condition was computed from."""
    last_transition_time: datetime.datetime
    """When status last changed (not when the condition was last written)."""
    reason: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    """CamelCase machine-readable cause of the last transition."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details: names the thing, the cause and the next step."""


Conditions = Annotated[
    list[Condition],
    Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class ObjectMeta(ApiModel):
    """The part of ``metadata`` vmlease reads; the API server owns its schema."""

    name: str = ""
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    resource_version: str | None = None
    generation: int | None = None
    uid: str | None = None
    creation_timestamp: datetime.datetime | None = None
    deletion_timestamp: datetime.datetime | None = None


class PrinterColumn(BaseModel):
    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    priority: int = 0
    description: str = ""


class CrdInfo(BaseModel):
    """What a CRD needs beyond the schema: names, columns, and CEL rules over the whole object."""

    kind: str
    plural: str
    short_names: list[str]
    columns: list[PrinterColumn]
    root_rules: list[dict[str, str]] = Field(default_factory=list)
    status_rules: list[dict[str, str]] = Field(default_factory=list)
    #: fields ``kubectl get --field-selector`` may select by (Kubernetes 1.31+; older API
    #: servers ignore them): a person finds a lease from the node they know
    selectable_fields: list[str] = Field(default_factory=list)
    #: objects live in a namespace (the remediation kinds: NodeHealthCheck creates remediations
    #: in its template's namespace); vmlease's own kinds describe storage and are cluster-wide
    namespaced: bool = False


class Resource(ApiModel):
    """A kind served by a CustomResourceDefinition generated from the model (``crd.py``)."""

    crd: ClassVar[CrdInfo]


# --- Lockspace -------------------------------------------------------------------------------


class SelectorOperator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(ApiModel):
    """One ``matchExpressions`` entry, as in ``metav1.LabelSelectorRequirement``."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && "
                    "size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
                    "message": "In and NotIn need values; Exists and DoesNotExist take none",
                }
            ]
        }
    )

    key: str = Field(min_length=1, max_length=317)
    """The Node label key."""
    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""
    values: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=64)
    """Label values for In and NotIn; empty for Exists and DoesNotExist."""

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        needs_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if needs_values != bool(self.values):
            raise ValueError("In and NotIn need values; Exists and DoesNotExist take none")
        return self


class LabelSelector(ApiModel):
    """Which Nodes take part; an empty selector selects every Node (Kubernetes convention)."""

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict)
    """Labels a Node must carry with exactly these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Further requirements, all of which must hold."""


class AutoDiskLeases(ApiModel):
    """Leases the agent creates by itself for every disk of a libvirt domain (libvirt's
    ``auto_disk_leases``): one lease file per disk, named by the MD5 of the disk path."""

    enabled: bool = False
    """Create a DiskLease and its lease file for every disk of every domain started on a node."""
    directory: str = Field(default="leases", max_length=4096, pattern=RELATIVE_PATH)
    """Where the lease files live, relative to the agent's shared volume."""


class LockspaceSpec(ApiModel):
    """Where a lockspace lives on the shared storage and how its hosts must behave."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.sectorSize == 4096 || self.alignSize == '1M'",
                    "message": "512-byte sectors need alignSize 1M (sanlock refuses other pairs)",
                },
                {
                    "rule": f"!has(self.maxHosts) || self.maxHosts <= {_cel_max_hosts()}",
                    "message": "maxHosts exceeds what the sector and align size hold: "
                    "512/1M 2000, 4096/1M 250, 4096/2M 500, 4096/4M 1000, 4096/8M 2000",
                },
                {
                    "rule": f"self.offset % {_cel_align_bytes()} == 0",
                    "message": "offset must be a multiple of alignSize",
                },
            ]
        }
    )

    path: str = Field(
        min_length=1,
        max_length=4096,
        pattern=LEASE_PATH,
        json_schema_extra=_immutable("path is immutable: the lockspace was formatted there"),
    )
    """The lockspace's file (relative to the agent's shared volume) or shared block device
    (under /dev/)."""
    offset: int = Field(
        default=0, ge=0, json_schema_extra=_immutable("offset is immutable: formatted there")
    )
    """Byte offset of the lockspace area in ``path``; a multiple of alignSize."""
    sector_size: Literal[512, 4096] = Field(
        default=512, json_schema_extra=_immutable("sectorSize is immutable once formatted")
    )
    """Sector size of the lease area: 512, or 4096 for 4K-native storage."""
    align_size: AlignSize = Field(
        default="1M", json_schema_extra=_immutable("alignSize is immutable once formatted")
    )
    """Size of the lease area; with 4096-byte sectors it sets how many hosts fit."""
    max_hosts: int | None = Field(default=None, ge=1, le=2000)
    """Cap on allocated host_ids; at most what the geometry holds (the default)."""
    io_timeout_seconds: int = Field(
        default=10,
        ge=1,
        le=255,
        json_schema_extra=_immutable(
            "ioTimeoutSeconds is immutable: joined hosts are judged by it; create a new Lockspace"
        ),
    )
    """Longest a single lease I/O may take (sanlock's io_timeout, stored as u8 on renewal).
    Failover takes 8x this plus the watchdog fire timeout."""
    watchdog_fire_timeout_seconds: int = Field(
        default=60,
        ge=10,
        le=300,
        json_schema_extra=_immutable(
            "watchdogFireTimeoutSeconds is immutable: every host of a lockspace must agree"
        ),
    )
    """How long a node's watchdog runs after its last keepalive before it resets the node; all
    hosts of a lockspace must agree (sanlock 3.8 hosts use 60)."""
    node_fencing: bool = Field(
        default=False,
        json_schema_extra=_immutable(
            "nodeFencing is immutable: joined agents keep their watchdogs armed by it; create a "
            "new Lockspace"
        ),
    )
    """Node fencing for Kubernetes. Every joined agent keeps its watchdog armed while its delta
    lease is on disk, leases held or not, so a host_id read Dead (silent for 8N + W) proves the
    node was reset; the operator then taints that Node out of service
    (``node.kubernetes.io/out-of-service=nodeshutdown:NoExecute``) so Kubernetes deletes its
    pods and detaches their volumes, and lifts the taint when the node's agent is Live again.
    The price: a node whose lockspace fails is reset even with no lease held."""
    node_selector: LabelSelector | None = None
    """Nodes that join this lockspace; absent selects every Node."""
    auto_disk_leases: AutoDiskLeases | None = None
    """Automatic disk leases for libvirt domains."""

    @model_validator(mode="after")
    def _geometry(self) -> LockspaceSpec:
        if (self.sector_size, self.align_size) not in MAX_HOSTS:
            raise ValueError("512-byte sectors need alignSize 1M (sanlock refuses other pairs)")
        if self.max_hosts is not None and self.max_hosts > self.geometry_max_hosts:
            raise ValueError(
                f"maxHosts {self.max_hosts} exceeds the {self.geometry_max_hosts} hosts that "
                f"{self.sector_size}/{self.align_size} holds"
            )
        if self.offset % ALIGN_BYTES[self.align_size]:
            raise ValueError("offset must be a multiple of alignSize")
        return self

    @property
    def geometry_max_hosts(self) -> int:
        return max_hosts_for(self.sector_size, self.align_size)

    @property
    def effective_max_hosts(self) -> int:
        """The highest host_id the operator may allocate."""
        return self.max_hosts or self.geometry_max_hosts


class FormatRequest(ApiModel):
    """The operator's order to exactly one agent: format this lockspace."""

    node: NodeName
    """The only node whose agent may format the lockspace."""
    host_id: HostIdNumber
    """That node's host_id in this lockspace."""
    requested_at: datetime.datetime
    """When the operator chose this node."""


class LockspaceStatus(ApiModel):
    formatted: bool | None = None
    """True once an agent formatted (or found formatted) the lease area; it never goes back."""
    formatted_by: NodeName | None = None
    """The node whose agent formatted it."""
    formatted_at: datetime.datetime | None = None
    """When it was formatted."""
    format_request: FormatRequest | None = None
    """Set by the operator while the lockspace is unformatted; the named agent formats, then
    sets formatted and removes this field."""
    storage_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    """A random id the formatting agent wrote beside the area (in ``<path>.vmlease-id``).
    Every agent reads that file in its own shared directory before it joins and refuses to
    join where it finds another id or none: its shared directory is not the one the others
    use (a mount missing or pointing at a local directory), and leases taken there would
    protect nothing. Absent on lockspaces formatted before it existed: no check then."""
    allocated_hosts: int | None = Field(default=None, ge=0)
    """HostIds allocated in this lockspace."""
    live_hosts: int | None = Field(default=None, ge=0)
    """HostIds whose state is Live."""
    failover_seconds: int | None = Field(default=None, ge=0)
    """The safe time: how long after a host's last renewal others may take its leases
    (8 x ioTimeoutSeconds + watchdogFireTimeoutSeconds); also the wait before a host_id is
    reused."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this status was computed from."""
    conditions: Conditions
    """Formatted, Ready, Degraded."""


class Lockspace(Resource):
    """A sanlock lockspace on shared storage: the delta leases by which hosts prove liveness."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="Lockspace",
        plural="lockspaces",
        short_names=["ls"],
        columns=[
            PrinterColumn(name="Path", type="string", json_path=".spec.path"),
            PrinterColumn(name="Sector", type="integer", json_path=".spec.sectorSize"),
            PrinterColumn(name="IO-Timeout", type="integer", json_path=".spec.ioTimeoutSeconds"),
            PrinterColumn(name="Hosts", type="integer", json_path=".status.allocatedHosts"),
            PrinterColumn(name="Live-Hosts", type="integer", json_path=".status.liveHosts"),
            PrinterColumn(name="Failover(s)", type="integer", json_path=".status.failoverSeconds"),
            PrinterColumn(name="Formatted", type="boolean", json_path=".status.formatted"),
            PrinterColumn(
                name="Ready",
                type="string",
                json_path='.status.conditions[?(@.type=="Ready")].status',
            ),
            PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp"),
        ],
        root_rules=[
            {
                "rule": f"self.metadata.name.size() <= {NAME_LEN} && "
                f"self.metadata.name.matches('{DNS_LABEL}')",
                "message": f"a Lockspace name is its on-disk name: a DNS label of at most "
                f"{NAME_LEN} characters, no dots",
            }
        ],
        status_rules=[
            {
                "rule": "!has(oldSelf.formatted) || !oldSelf.formatted || "
                "(has(self.formatted) && self.formatted)",
                "message": "a formatted lockspace stays formatted",
            }
        ],
    )

    api_version: Literal["vmlease.io/v1alpha1"] = API_VERSION
    kind: Literal["Lockspace"] = "Lockspace"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: LockspaceSpec
    status: LockspaceStatus = Field(default_factory=LockspaceStatus)


# --- HostId ----------------------------------------------------------------------------------


class HostState(enum.StrEnum):
    """A host_id's delta lease as seen on disk (sanlock's host states, VDSM's names)."""

    JOINING = "Joining"  # claimed by its node's agent, which is acquiring the delta lease
    LIVE = "Live"  # renewed within 8 x io_timeout
    FAILING = "Failing"  # not renewed for 8 x io_timeout: its node is fencing itself
    DEAD = "Dead"  # not renewed for the safe time: its watchdog has fired
    FREE = "Free"  # released cleanly (timestamp 0) or never used


class HostIdSpec(ApiModel):
    lockspace: Name = Field(json_schema_extra=_immutable("lockspace is immutable"))
    """The Lockspace this host_id belongs to."""
    node_name: NodeName = Field(
        json_schema_extra=_immutable("nodeName is immutable: an id never moves between nodes")
    )
    """The Node that uses this host_id."""
    host_id: HostIdNumber = Field(
        json_schema_extra=_immutable(
            "hostId is immutable: delete the HostId and let the operator allocate another"
        )
    )
    """The sanlock host_id, 1..maxHosts; the object's name is <lockspace>.<hostId>."""


class HostIdStatus(ApiModel):
    """Written by agents. The node's own agent *claims* the HostId by writing state Joining (with
    a resourceVersion precondition) before it touches the disk, then keeps it Live with
    lastRenewal. Other hosts' states (Failing, Dead, Free) are reported by one agent of the
    lockspace, which sets stateSince to when it first saw that state."""

    state: HostState | None = None
    """Joining, Live, Failing, Dead or Free; absent until the node's agent claimed the id."""
    state_since: datetime.datetime | None = None
    """When this state was first observed; the id is reused only after Dead or Free has lasted
    the Lockspace's failoverSeconds."""
    observed_by: NodeName | None = None
    """The node whose agent observed the state."""
    generation: int | None = Field(default=None, ge=0)
    """The delta lease's owner generation, incremented on every join."""
    last_renewal: datetime.datetime | None = None
    """Wall-clock time of the last successful delta-lease renewal."""
    renewal_latency_ms: int | None = Field(default=None, ge=0)
    """How long the last renewal's I/O took."""
    node_fencing: bool | None = None
    """Written by the node's own agent: true while it holds a real watchdog device armed for
    this lockspace's node fencing (spec.nodeFencing), so that this host_id going Dead means the
    node was reset. The operator taints a Dead node out of service only if its agent said so."""
    conditions: Conditions
    """Joined, Renewing."""


class HostId(Resource):
    """One host_id of one Node in one Lockspace; named <lockspace>.<hostId> so that the API
    server itself refuses a second holder of the same id."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="HostId",
        plural="hostids",
        short_names=["hid"],
        selectable_fields=[".spec.lockspace", ".spec.nodeName", ".status.state"],
        columns=[
            PrinterColumn(name="Lockspace", type="string", json_path=".spec.lockspace"),
            PrinterColumn(name="Node", type="string", json_path=".spec.nodeName"),
            PrinterColumn(name="ID", type="integer", json_path=".spec.hostId"),
            PrinterColumn(name="State", type="string", json_path=".status.state"),
            PrinterColumn(name="Gen", type="integer", json_path=".status.generation", priority=1),
            PrinterColumn(name="Renewed", type="date", json_path=".status.lastRenewal"),
            PrinterColumn(
                name="Latency(ms)", type="integer", json_path=".status.renewalLatencyMs", priority=1
            ),
            PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp"),
        ],
        root_rules=[
            {
                # string(int) has no size bound for the CEL cost estimator: compare the other
                # way round, and refuse leading zeros so "ls.007" cannot alias "ls.7".
                "rule": "self.metadata.name.startsWith(self.spec.lockspace + '.') && "
                "self.metadata.name.substring(size(self.spec.lockspace) + 1)"
                ".matches('^[1-9][0-9]{0,3}$') && "
                "int(self.metadata.name.substring(size(self.spec.lockspace) + 1)) == "
                "self.spec.hostId",
                "message": "a HostId must be named <lockspace>.<hostId>: the name makes the id "
                "unique",
            }
        ],
    )

    api_version: Literal["vmlease.io/v1alpha1"] = API_VERSION
    kind: Literal["HostId"] = "HostId"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: HostIdSpec
    status: HostIdStatus = Field(default_factory=HostIdStatus)

    @model_validator(mode="after")
    def _named_by_id(self) -> HostId:
        expected = hostid_name(self.spec.lockspace, self.spec.host_id)
        if self.metadata.name and self.metadata.name != expected:
            raise ValueError(f"a HostId must be named <lockspace>.<hostId>: {expected}")
        return self


# --- DiskLease -------------------------------------------------------------------------------


class LeasePhase(enum.StrEnum):
    """What the lease area says about a disk (the agent reads it; this is a cache of the disk)."""

    FREE = "Free"  # nobody holds it
    HELD = "Held"  # one exclusive holder on a live host
    SHARED = "Shared"  # one or more shared holders
    CONTENDED = "Contended"  # a ballot is in progress or a request to release is pending
    ORPHANED = "Orphaned"  # the holder's host is failing or dead: free after the safe time


class LeaseLocation(ApiModel):
    path: str = Field(
        min_length=1,
        max_length=4096,
        pattern=LEASE_PATH,
        json_schema_extra=_immutable("lease.path is immutable"),
    )
    """The lease file (relative to the agent's shared volume) or shared block device (/dev/...)."""
    offset: int = Field(default=0, ge=0, json_schema_extra=_immutable("lease.offset is immutable"))
    """Byte offset of the lease area in path."""


class Holder(ApiModel):
    node: NodeName
    """The Node whose host holds the lease."""
    host_id: HostIdNumber
    """That host's host_id in the lease's lockspace."""
    generation: int | None = Field(default=None, ge=0)
    """The holder host's delta-lease generation when it acquired the lease."""
    pid: int | None = Field(default=None, ge=1)
    """The holding process on that node."""
    process: str | None = Field(default=None, max_length=256)
    """The holding process's name."""
    domain: str | None = Field(default=None, max_length=256)
    """The libvirt domain holding the lease, if a VM holds it."""
    since: datetime.datetime | None = None
    """When this holder acquired the lease."""


class DiskLeaseSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.resource) || has(self.diskPath)",
                    "message": "give resource, or diskPath to derive it from (MD5 of the path)",
                }
            ]
        }
    )

    lockspace: Name = Field(json_schema_extra=_immutable("lockspace is immutable"))
    """The Lockspace whose hosts contend for this lease."""
    resource: Name | None = Field(
        default=None, json_schema_extra=_immutable("resource is immutable once set")
    )
    """The sanlock resource name; when absent, the operator derives it from diskPath (lowercase
    MD5 hex, as libvirt does). The object's name is <lockspace>.<resource>."""
    disk_path: str | None = Field(
        default=None,
        min_length=2,
        max_length=4096,
        pattern=r"^/",
        json_schema_extra=_immutable("diskPath is immutable"),
    )
    """The protected disk's canonical path (symlinks resolved); only hashed into the resource
    name (``vmlease_api.naming.disk_resource_name``), never opened."""
    lease: LeaseLocation
    """Where the lease area lives."""

    @model_validator(mode="after")
    def _resource_or_path(self) -> DiskLeaseSpec:
        if self.resource is None and self.disk_path is None:
            raise ValueError("give resource, or diskPath to derive it from (MD5 of the path)")
        return self


class DiskLeaseStatus(ApiModel):
    """Written by the agent of the holding node (a cache of the disk, rebuilt from it)."""

    phase: LeasePhase | None = None
    """Free, Held, Shared, Contended or Orphaned."""
    holder: Holder | None = None
    """The exclusive holder, or the last one while Orphaned."""
    shared_holders: list[Holder] = Field(default_factory=list, max_length=2000)
    """Holders of a shared lease."""
    lver: int | None = Field(default=None, ge=0)
    """The paxos lease version, incremented on every acquisition."""
    free_after: datetime.datetime | None = None
    """While Orphaned: when another host may take the lease (the holder host's last renewal
    plus the safe time, as the lockspace's reporting node reads the disk)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this status was computed from."""
    conditions: Conditions
    """Held, Synced."""


class DiskLease(Resource):
    """A paxos lease protecting one disk (or any resource): who holds it, on which node."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="DiskLease",
        plural="diskleases",
        short_names=["dl"],
        selectable_fields=[
            ".spec.lockspace",
            ".spec.diskPath",
            ".status.phase",
            ".status.holder.node",
        ],
        columns=[
            PrinterColumn(name="Lockspace", type="string", json_path=".spec.lockspace"),
            PrinterColumn(name="Resource", type="string", json_path=".spec.resource"),
            PrinterColumn(name="Phase", type="string", json_path=".status.phase"),
            PrinterColumn(name="Holder", type="string", json_path=".status.holder.node"),
            PrinterColumn(name="Host-ID", type="integer", json_path=".status.holder.hostId"),
            PrinterColumn(
                name="Domain", type="string", json_path=".status.holder.domain", priority=1
            ),
            PrinterColumn(name="PID", type="integer", json_path=".status.holder.pid", priority=1),
            PrinterColumn(name="Lver", type="integer", json_path=".status.lver", priority=1),
            PrinterColumn(name="Disk", type="string", json_path=".spec.diskPath", priority=1),
            PrinterColumn(name="Since", type="date", json_path=".status.holder.since"),
        ],
        root_rules=[
            {
                "rule": "self.metadata.name.startsWith(self.spec.lockspace + '.') && "
                "(!has(self.spec.resource) || "
                "self.metadata.name == self.spec.lockspace + '.' + self.spec.resource)",
                "message": "a DiskLease must be named <lockspace>.<resource>: one object per lease",
            }
        ],
    )

    api_version: Literal["vmlease.io/v1alpha1"] = API_VERSION
    kind: Literal["DiskLease"] = "DiskLease"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: DiskLeaseSpec
    status: DiskLeaseStatus = Field(default_factory=DiskLeaseStatus)


# --- NodeHealthCheck remediation (medik8s) ---------------------------------------------------
#
# medik8s NodeHealthCheck (NHC) calls an external remediator through two kinds the remediator
# defines: a template (kind ending in "Template", ``spec.template.spec``) that a NodeHealthCheck
# names, and the remediation NHC creates from it for each unhealthy node, in the template's
# namespace, with the template's inner spec copied into its ``spec``. The remediator reports in
# ``status.conditions``: Processing, Succeeded, PermanentNodeDeletionExpected. NHC deletes the
# remediation when the node is healthy again. (NHC's docs/configuration.md, "Remediation
# Resources"; the annotations below are NHC's, from its common package.)

#: On a remediation NHC created under a generated name: the node to remediate (otherwise the
#: remediation is named after the node).
REMEDIATION_NODE_ANNOTATION = "remediation.medik8s.io/node-name"
#: Set by NHC when the remediation ran longer than its escalation timeout: stop trying.
NHC_TIMED_OUT_ANNOTATION = "remediation.medik8s.io/nhc-timed-out"
#: On a template: its remediator tells NHC it copes with several templates of one kind (and
#: therefore with remediations named not after the node but annotated with it).
MULTIPLE_TEMPLATES_ANNOTATION = "remediation.medik8s.io/multiple-templates-support"


#: On a Node, written by the operator for a remediation with ``selfFence``: JSON
#: ``{"remediation": "NS/NAME", "lockspace": L, "generation": G, "requestedAt": T}``. The node's
#: agent, joined to L at delta-lease generation G, stops feeding its watchdog. A rejoin (after
#: the reset) has another generation, so a request never resets a node twice.
FENCE_REQUEST_ANNOTATION = "vmlease.io/fence-request"


class RemediationSpec(ApiModel):
    """How to remediate. vmlease waits for the storage proof that the node's watchdog reset it
    (its host_id Dead for the safe time in a Lockspace with nodeFencing), then taints it out of
    service; it never powers a node off through another channel."""

    self_fence: bool = False
    """Also ask the node's agent to fence itself when it still renews (Kubernetes finds the node
    unhealthy, the storage does not): it stops feeding its watchdog, which resets the node within
    W; the proof and the taint follow. Works only while the agent reaches the API server;
    otherwise NodeHealthCheck's timeout escalates to its next remediator."""


class RemediationTemplateSpecTemplate(ApiModel):
    spec: RemediationSpec = Field(default_factory=RemediationSpec)
    """Copied by NodeHealthCheck into each VmleaseRemediation's spec."""


class VmleaseRemediationTemplateSpec(ApiModel):
    template: RemediationTemplateSpecTemplate = Field(
        default_factory=RemediationTemplateSpecTemplate
    )
    """The remediation NodeHealthCheck creates for an unhealthy node."""


class VmleaseRemediationTemplate(Resource):
    """What a NodeHealthCheck names (spec.remediationTemplate, or one of its
    escalatingRemediations) to have vmlease remediate its unhealthy nodes."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="VmleaseRemediationTemplate",
        plural="vmleaseremediationtemplates",
        short_names=["vrmt"],
        namespaced=True,
        columns=[PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")],
    )

    api_version: Literal["vmlease.io/v1alpha1"] = API_VERSION
    kind: Literal["VmleaseRemediationTemplate"] = "VmleaseRemediationTemplate"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: VmleaseRemediationTemplateSpec = Field(default_factory=VmleaseRemediationTemplateSpec)


class VmleaseRemediationStatus(ApiModel):
    """Written by the operator, read by NodeHealthCheck."""

    conditions: Conditions
    """Processing (True while waiting for the proof), Succeeded (True once the node is tainted
    out of service on the proof, False when vmlease cannot prove it was reset: NodeHealthCheck
    then escalates to its next remediator) and PermanentNodeDeletionExpected (always False:
    vmlease never deletes a Node)."""


def _condition_column(type_: str) -> PrinterColumn:
    return PrinterColumn(
        name=type_, type="string", json_path=f'.status.conditions[?(@.type=="{type_}")].status'
    )


class VmleaseRemediation(Resource):
    """One unhealthy node NodeHealthCheck asks vmlease to remediate: named after the node, or
    annotated with it (remediation.medik8s.io/node-name)."""

    crd: ClassVar[CrdInfo] = CrdInfo(
        kind="VmleaseRemediation",
        plural="vmleaseremediations",
        short_names=["vrm"],
        namespaced=True,
        columns=[
            _condition_column("Processing"),
            _condition_column("Succeeded"),
            PrinterColumn(
                name="Reason",
                type="string",
                json_path='.status.conditions[?(@.type=="Succeeded")].reason',
            ),
            PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp"),
        ],
    )

    api_version: Literal["vmlease.io/v1alpha1"] = API_VERSION
    kind: Literal["VmleaseRemediation"] = "VmleaseRemediation"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RemediationSpec = Field(default_factory=RemediationSpec)
    status: VmleaseRemediationStatus = Field(default_factory=VmleaseRemediationStatus)

    @property
    def node(self) -> str:
        """The node to remediate."""
        return self.metadata.annotations.get(REMEDIATION_NODE_ANNOTATION) or self.metadata.name


RESOURCES: tuple[type[Resource], ...] = (
    Lockspace,
    HostId,
    DiskLease,
    VmleaseRemediationTemplate,
    VmleaseRemediation,
)
"""Every kind with a generated CRD, in the order ``make crds`` writes them."""
