"""Objects for the agent's Kubernetes-mode tests, as the API server would return them."""

from __future__ import annotations

from typing import Any

from vmlease_api.models import HostIdStatus
from vmlease_operator.hostid_writes import hostid_body

NOW = "2026-01-01T00:00:00Z"


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def lockspace(
    name: str = "ls",
    path: str = "ls.img",
    selector: dict[str, str] | None = None,
    formatted: bool = False,
    request: tuple[str, int] | None = None,
    auto: bool = False,
    io_timeout: int = 1,
    fire_timeout: int = 10,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "path": path,
        "ioTimeoutSeconds": io_timeout,
        "watchdogFireTimeoutSeconds": fire_timeout,
    }
    if selector is not None:
        spec["nodeSelector"] = {"matchLabels": selector}
    if auto:
        spec["autoDiskLeases"] = {"enabled": True, "directory": "leases"}
    status: dict[str, Any] = {}
    if formatted:
        status.update(formatted=True, formattedBy="someone", formattedAt=NOW)
    if request is not None:
        status["formatRequest"] = {"node": request[0], "hostId": request[1], "requestedAt": NOW}
    return {
        "apiVersion": "vmlease.io/v1alpha1",
        "kind": "Lockspace",
        "metadata": {"name": name, "generation": 1},
        "spec": spec,
        "status": status,
    }


def hostid(lockspace: str, node: str, host_id: int, state: str | None = None) -> dict[str, Any]:
    body = hostid_body(lockspace, node, host_id)
    if state is not None:
        body["status"] = HostIdStatus(state=state, state_since=NOW, observed_by=node).to_api()
    return body


def disklease(lockspace: str, resource: str, path: str, offset: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "vmlease.io/v1alpha1",
        "kind": "DiskLease",
        "metadata": {"name": f"{lockspace}.{resource}"},
        "spec": {
            "lockspace": lockspace,
            "resource": resource,
            "lease": {"path": path, "offset": offset},
        },
    }


def lease(
    lockspace: str,
    resource: str,
    path: str,
    pid: int = 4242,
    shared: bool = False,
    lver: int = 1,
    host_id: int = 1,
    holder: str | None = None,
    owner: str = "vm1",
    since: float = 1767225600.0,
) -> dict[str, Any]:
    """One entry of ``Agent.status()["leases"]``."""
    return {
        "lease": f"{lockspace}:{resource}",
        "lockspace": lockspace,
        "resource": resource,
        "path": path,
        "offset": 0,
        "lver": lver,
        "shared": shared,
        "host_id": host_id,
        "generation": 1,
        "pid": pid,
        "process": "qemu",
        "holder": holder or f"pid:{pid}",
        "owner": owner,
        "since": since,
    }
