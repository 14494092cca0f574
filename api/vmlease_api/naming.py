"""Object names and labels: how uniqueness is delegated to the API server.

An object name is unique per kind (cluster-scoped), so a name that encodes the thing that must be
unique turns "two writers picked the same value" into a 409 AlreadyExists from the API server —
the pattern Kubernetes itself uses for Service IPAddress objects. The CRDs enforce the naming
with CEL rules, so no writer can bypass it by choosing another name.
"""

from __future__ import annotations

import hashlib
import os
import re

from vmlease_api import GROUP

LABEL_LOCKSPACE = f"{GROUP}/lockspace"
LABEL_NODE = f"{GROUP}/node"
#: Keeps a HostId until its id may be reused; removed only by the operator (see ``reclaim``).
HOSTID_FINALIZER = f"{GROUP}/host-id-reuse"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def hostid_name(lockspace: str, host_id: int) -> str:
    """``<lockspace>.<hostId>``: a second HostId for the same id cannot exist."""
    return f"{lockspace}.{host_id}"


def disk_resource_name(path_or_identity: str) -> str:
    """libvirt's automatic disk lease name (``auto_disk_leases``), which the agent's libvirt
    integration and the operator's DiskLease checks both use: lowercase hex MD5 of the string's
    bytes (32 characters)."""
    return hashlib.md5(os.fsencode(path_or_identity), usedforsecurity=False).hexdigest()


def disklease_name(lockspace: str, resource: str) -> str:
    """``<lockspace>.<resource>``: two agents creating the same automatic lease get one object."""
    return f"{lockspace}.{resource}"


def node_label_value(node_name: str) -> str:
    """A label value that finds a node's HostIds. Node names are DNS subdomains of up to 253
    characters, label values at most 63: longer names are replaced by a digest (the exact name
    stays in ``spec.nodeName``, which readers compare after selecting by label)."""
    if len(node_name) <= 63 and _LABEL_VALUE.match(node_name):
        return node_name
    return "sha256-" + hashlib.sha256(node_name.encode()).hexdigest()[:56]


def hostid_labels(lockspace: str, node_name: str) -> dict[str, str]:
    return {LABEL_LOCKSPACE: lockspace, LABEL_NODE: node_label_value(node_name)}


def node_selector(lockspace: str, node_name: str) -> str:
    """The label selector that lists one node's HostIds in one lockspace."""
    return f"{LABEL_LOCKSPACE}={lockspace},{LABEL_NODE}={node_label_value(node_name)}"
