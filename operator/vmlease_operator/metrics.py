"""Prometheus metrics of the operator (``vmlease_`` prefix, base units, ``_total`` counters).

Labelled by lockspace only: never by node or disk, whose numbers grow with the cluster.
"""

from __future__ import annotations

import contextlib
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Counter, Gauge, Histogram, start_http_server

ALLOCATIONS = Counter(
    "vmlease_hostid_allocations_total", "HostIds created for nodes", ["lockspace"]
)
CONFLICTS = Counter(
    "vmlease_hostid_allocation_conflicts_total",
    "Creates refused with 409 because another writer took the id first",
    ["lockspace"],
)
RELEASES = Counter("vmlease_hostid_releases_total", "host_ids made reusable", ["lockspace"])
ALLOCATION_SECONDS = Histogram(
    "vmlease_hostid_allocation_duration_seconds",
    "Time to give one node its HostId, API round trips included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HOSTS = Gauge(
    "vmlease_lockspace_hosts", "HostIds per lockspace and delta-lease state", ["lockspace", "state"]
)
WAITING = Gauge(
    "vmlease_lockspace_nodes_waiting", "Selected nodes without a host_id", ["lockspace"]
)
FAILOVER = Gauge(
    "vmlease_failover_seconds", "The safe time of a lockspace (8 x io_timeout + W)", ["lockspace"]
)
BUILD = Gauge("vmlease_build_info", "vmlease version of this operator", ["version"])
DISKLEASES = Gauge(
    "vmlease_diskleases", "DiskLeases per lockspace and phase (Orphaned: holder's host failing)",
    ["lockspace", "phase"],
)  # fmt: skip


def count_disklease(name: str, phase: str | None, delta: int) -> None:
    """One DiskLease (named ``<lockspace>.<resource>``) entering (+1) or leaving (-1) a phase:
    counted as the watch reports it, never by re-counting them all."""
    DISKLEASES.labels(name.partition(".")[0], phase or "Unknown").inc(delta)


def start(port: int) -> None:
    """Serve /metrics on ``port`` (0: disabled), apart from kopf's liveness endpoint."""
    try:
        BUILD.labels(version=version("vmlease")).set(1)
    except PackageNotFoundError:
        BUILD.labels(version="unknown").set(1)
    if port:
        start_http_server(port)


def forget_lockspace(name: str) -> None:
    """Drop a deleted lockspace's series, so dashboards do not show it forever."""
    for metric in (ALLOCATIONS, CONFLICTS, RELEASES, WAITING, FAILOVER):
        with contextlib.suppress(KeyError):
            metric.remove(name)
    for labels in [s.labels for m in HOSTS.collect() for s in m.samples]:
        if labels.get("lockspace") == name:
            HOSTS.remove(name, labels["state"])
