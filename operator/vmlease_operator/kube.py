"""The operator's own API calls (kopf does the watching): a thin layer over the official client
whose failures are the shared ``vmlease_api.errors`` (the agent's too), the exceptions
allocation reasons about.

Synchronous on purpose: the allocator holds threading locks across a read and a write, and the
handlers run it in worker threads (``asyncio.to_thread``), off kopf's event loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from vmlease_api import GROUP, VERSION, errors, naming
from vmlease_api.allocation import HostIdRecord
from vmlease_api.errors import ApiError, NotFound

HOSTIDS, LOCKSPACES, DISKLEASES = "hostids", "lockspaces", "diskleases"
REMEDIATIONS = "vmleaseremediations"
#: Shown in managedFields, so ``kubectl get -o yaml`` tells which writes are the operator's.
FIELD_MANAGER = "vmlease-operator"
#: Added to a 401/403's message: what to fix.
FORBIDDEN_HINT = "check the operator's ServiceAccount and its ClusterRole (the chart's RBAC)"


def api_client(pool_size: int) -> client.ApiClient:
    """A client from the in-cluster service account, else from KUBECONFIG / ~/.kube/config."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def translate(error: ApiException) -> ApiError:
    """The shared error for the client's exception (the agent's ``kube.api`` does the same)."""
    return errors.from_response(error.status, error.body, error.reason, FORBIDDEN_HINT)


def _call(fn: Callable[..., object], *args: Any, **kwargs: Any) -> object:
    """One API call, its ``ApiException`` raised as the shared ``vmlease_api.errors`` class."""
    try:
        return fn(*args, **kwargs)
    except ApiException as error:
        raise translate(error) from error


def _body(value: object) -> dict[str, Any]:
    """A JSON object the client decoded (typed ``object`` there), checked rather than cast."""
    if not isinstance(value, dict):
        raise TypeError(f"the API server answered {type(value).__name__}, not an object")
    return value


class Kube:
    """Implements ``hostid_writes.HostIdStore`` and the few other writes the operator makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    def _list_hostids(self, label_selector: str) -> list[dict[str, Any]]:
        """A fresh (quorum) list of the HostIds with these labels."""
        return list(
            _body(
                _call(
                    self._objects.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    HOSTIDS,
                    label_selector=label_selector,
                )
            )["items"]
        )

    def list_for_node(self, lockspace: str, node: str) -> list[HostIdRecord]:
        items = self._list_hostids(naming.node_selector(lockspace, node))
        # The node label may be a digest of a long name: compare the exact name too.
        return [HostIdRecord.from_body(i) for i in items if i["spec"]["nodeName"] == node]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return _body(
            _call(
                self._objects.create_cluster_custom_object,
                GROUP,
                VERSION,
                HOSTIDS,
                body,
                field_manager=FIELD_MANAGER,
            )
        )

    def delete(self, name: str, resource_version: str) -> dict[str, Any] | None:
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=resource_version)
        )
        body = _body(
            _call(
                self._objects.delete_cluster_custom_object,
                GROUP,
                VERSION,
                HOSTIDS,
                name,
                body=options,
            )
        )
        # A finalizer keeps the object (returned, terminating); otherwise a Status comes back.
        return body if body.get("kind") == "HostId" else None

    def set_finalizers(self, name: str, finalizers: list[str], resource_version: str) -> None:
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        _call(
            self._objects.patch_cluster_custom_object,
            GROUP,
            VERSION,
            HOSTIDS,
            name,
            patch,
            field_manager=FIELD_MANAGER,
        )

    def delete_hostids_of(self, lockspace: str) -> int:
        """Mark every HostId of a deleted lockspace for deletion; their reuse finalizers keep
        them until the operator releases them. Returns how many were marked now."""
        marked = 0
        for item in self._list_hostids(f"{naming.LABEL_LOCKSPACE}={lockspace}"):
            if item["metadata"].get("deletionTimestamp"):
                continue
            with contextlib.suppress(NotFound):  # gone meanwhile: marked all the same
                _call(
                    self._objects.delete_cluster_custom_object,
                    GROUP,
                    VERSION,
                    HOSTIDS,
                    item["metadata"]["name"],
                )
            marked += 1
        return marked

    def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        _call(
            self._objects.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            plural,
            name,
            {"status": status},
            field_manager=FIELD_MANAGER,
        )

    def patch_namespaced_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        _call(
            self._objects.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": status},
            field_manager=FIELD_MANAGER,
        )

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any], rv: str) -> None:
        patch = {"metadata": {"resourceVersion": rv}, "spec": spec}
        _call(
            self._objects.patch_cluster_custom_object,
            GROUP,
            VERSION,
            plural,
            name,
            patch,
            field_manager=FIELD_MANAGER,
        )

    def patch_node(self, name: str, patch: dict[str, Any]) -> None:
        """A JSON merge patch of a Node (node fencing's taints; the patch carries the Node's
        resourceVersion, so a concurrent change is a ``Conflict``)."""
        _call(
            self._core.patch_node,
            name,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )
