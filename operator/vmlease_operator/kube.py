"""The operator's own API calls (kopf does the watching): a thin layer over the official client
that maps HTTP status codes to the exceptions allocation reasons about.

Synchronous on purpose: the allocator holds threading locks across a read and a write, and the
handlers run it in worker threads (``asyncio.to_thread``), off kopf's event loop.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from vmlease_api import GROUP, VERSION, naming
from vmlease_api.allocation import HostIdRecord

from vmlease_operator.allocator import AlreadyExists, Conflict, NotFound

HOSTIDS, LOCKSPACES, DISKLEASES = "hostids", "lockspaces", "diskleases"
#: Shown in managedFields, so ``kubectl get -o yaml`` tells which writes are the operator's.
FIELD_MANAGER = "vmlease-operator"


def api_client(pool_size: int) -> client.ApiClient:
    """A client from the in-cluster service account, else from KUBECONFIG / ~/.kube/config."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def _translate(error: ApiException) -> Exception:
    if error.status == 404:
        return NotFound(error.body)
    if error.status == 409:
        try:
            reason = json.loads(error.body or "{}").get("reason")
        except ValueError:
            reason = None
        return AlreadyExists(error.body) if reason == "AlreadyExists" else Conflict(error.body)
    return error


def _body(value: object) -> dict[str, Any]:
    """A JSON object the client decoded (typed ``object`` there), checked rather than cast."""
    if not isinstance(value, dict):
        raise TypeError(f"the API server answered {type(value).__name__}, not an object")
    return value


class Kube:
    """Implements ``allocator.HostIdStore`` and the few other writes the operator makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self._objects = client.CustomObjectsApi(api)

    def list_for_node(self, lockspace: str, node: str) -> list[HostIdRecord]:
        try:
            items = _body(
                self._objects.list_cluster_custom_object(
                    GROUP, VERSION, HOSTIDS, label_selector=naming.node_selector(lockspace, node)
                )
            )["items"]
        except ApiException as error:
            raise _translate(error) from error
        # The node label may be a digest of a long name: compare the exact name too.
        return [HostIdRecord.from_body(i) for i in items if i["spec"]["nodeName"] == node]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return _body(
                self._objects.create_cluster_custom_object(
                    GROUP, VERSION, HOSTIDS, body, field_manager=FIELD_MANAGER
                )
            )
        except ApiException as error:
            raise _translate(error) from error

    def delete(self, name: str, resource_version: str) -> dict[str, Any] | None:
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=resource_version)
        )
        try:
            body = _body(
                self._objects.delete_cluster_custom_object(
                    GROUP, VERSION, HOSTIDS, name, body=options
                )
            )
        except ApiException as error:
            raise _translate(error) from error
        # A finalizer keeps the object (returned, terminating); otherwise a Status comes back.
        return body if body.get("kind") == "HostId" else None

    def set_finalizers(self, name: str, finalizers: list[str], resource_version: str) -> None:
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        try:
            self._objects.patch_cluster_custom_object(
                GROUP, VERSION, HOSTIDS, name, patch, field_manager=FIELD_MANAGER
            )
        except ApiException as error:
            raise _translate(error) from error

    def delete_hostids_of(self, lockspace: str) -> int:
        """Mark every HostId of a deleted lockspace for deletion; their reuse finalizers keep
        them until the operator releases them. Returns how many were marked now."""
        try:
            items = _body(
                self._objects.list_cluster_custom_object(
                    GROUP, VERSION, HOSTIDS, label_selector=f"{naming.LABEL_LOCKSPACE}={lockspace}"
                )
            )["items"]
        except ApiException as error:
            raise _translate(error) from error
        marked = 0
        for item in items:
            if item["metadata"].get("deletionTimestamp"):
                continue
            try:
                self._objects.delete_cluster_custom_object(
                    GROUP, VERSION, HOSTIDS, item["metadata"]["name"]
                )
            except ApiException as error:
                if error.status != 404:
                    raise _translate(error) from error
            marked += 1
        return marked

    def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        try:
            self._objects.patch_cluster_custom_object_status(
                GROUP, VERSION, plural, name, {"status": status}, field_manager=FIELD_MANAGER
            )
        except ApiException as error:
            raise _translate(error) from error

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any], rv: str) -> None:
        patch = {"metadata": {"resourceVersion": rv}, "spec": spec}
        try:
            self._objects.patch_cluster_custom_object(
                GROUP, VERSION, plural, name, patch, field_manager=FIELD_MANAGER
            )
        except ApiException as error:
            raise _translate(error) from error
