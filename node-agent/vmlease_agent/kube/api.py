"""The agent's Kubernetes API calls: a thin layer over the official client (the operator's).

Every call has a timeout and every failure becomes one of the shared ``vmlease_api.errors``
(the operator's too), so the sync loop can tell "re-read and decide again" (Conflict, NotFound)
from "the API server is away, back off" (Unavailable) and from "this will not work until someone
fixes something" (Refused: RBAC, an invalid object). Nothing here is on the lease path: the
agent renews and fences without it.

``KubeApi`` is the interface ``kube_sync`` uses; ``RealKubeApi`` speaks to a cluster,
``tests/unit/fake_kube_api.py`` is the in-memory stand-in for unit tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from vmlease_api import GROUP, VERSION, errors

# The errors the sync reasons about are the shared ones (``vmlease_api.errors``), named here too
# so the agent's kube modules import their API from one place.
from vmlease_api.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    Expired,
    NotFound,
    Refused,
    Unavailable,
)

__all__ = [
    "CUSTOM",
    "DISKLEASES",
    "FIELD_MANAGER",
    "HOSTIDS",
    "LOCKSPACES",
    "NODES",
    "AlreadyExists",
    "ApiError",
    "Conflict",
    "Expired",
    "KubeApi",
    "NotFound",
    "RealKubeApi",
    "Refused",
    "Unavailable",
    "translate",
]

NODES, LOCKSPACES, HOSTIDS, DISKLEASES = "nodes", "lockspaces", "hostids", "diskleases"
CUSTOM = (LOCKSPACES, HOSTIDS, DISKLEASES)
#: Shown in managedFields: ``kubectl get -o yaml`` tells the agent's writes from the operator's.
FIELD_MANAGER = "vmlease-agent"
#: (connect, read) seconds for one request. Short: a slow API server must not hold the sync
#: loop (it is only status), and the next pass retries anyway.
REQUEST_TIMEOUT = (5.0, 15.0)
#: A watch is closed by the server after this many seconds and reopened from its last
#: resourceVersion; the client-side read timeout is a bit longer so that a dead connection
#: (no bookmark, no event) is noticed too.
WATCH_SECONDS = 240
WATCH_READ_TIMEOUT = WATCH_SECONDS + 30
#: Added to a 401/403's message: what to fix.
FORBIDDEN_HINT = (
    "check the agent's ServiceAccount and its ClusterRole (lockspaces, hostids, diskleases, nodes)"
)


class KubeApi(Protocol):
    """What the agent's sync needs from the API server."""

    def list(
        self, kind: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Items and the list's resourceVersion."""

    def watch(
        self,
        kind: str,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) events after ``resource_version`` until the server ends the watch;
        BOOKMARK events carry only metadata.resourceVersion. Raises Expired on 410."""

    def get(self, kind: str, name: str) -> dict[str, Any]: ...

    def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def patch_status(
        self, kind: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        """JSON merge patch of ``status`` (the status subresource), with an optional
        resourceVersion precondition (Conflict when the object changed since)."""


def translate(error: Exception) -> ApiError:
    """The exception the sync loop reasons about, for a client or transport error."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(error, ApiException):
        return errors.from_response(error.status, error.body, error.reason, FORBIDDEN_HINT)
    return errors.unreachable(error)


def _selectors(label_selector: str | None, field_selector: str | None) -> dict[str, Any]:
    """The client's keyword arguments for the selectors that are set."""
    selectors = {"label_selector": label_selector, "field_selector": field_selector}
    return {k: v for k, v in selectors.items() if v}


class RealKubeApi:
    """``KubeApi`` over the official client, from the in-cluster ServiceAccount or KUBECONFIG."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client

        self._client = client
        self._api = api_client or self._default_client()
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)

    @staticmethod
    def _default_client() -> Any:
        from kubernetes import client, config

        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        # The client's own retries would hide an unreachable server for minutes behind one
        # call; the sync loop has its own backoff.
        configuration.retries = 1
        return client.ApiClient(configuration)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        try:
            return fn(*args, **kwargs)
        except ApiException as error:
            raise translate(error) from error
        except Exception as error:  # urllib3 / socket / ssl: the server is not reachable
            raise translate(error) from error

    def list(
        self, kind: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        selectors = _selectors(label_selector, field_selector)
        if kind == NODES:
            response = self._call(self._core.list_node, _preload_content=False, **selectors)
            data = json.loads(response.data)
        else:
            data = self._call(
                self._custom.list_cluster_custom_object, GROUP, VERSION, kind, **selectors
            )
        return list(data.get("items") or []), str(data["metadata"]["resourceVersion"])

    def watch(
        self,
        kind: str,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch

        kwargs: dict[str, Any] = _selectors(label_selector, field_selector)
        kwargs.update(
            resource_version=resource_version,
            timeout_seconds=WATCH_SECONDS,
            allow_watch_bookmarks=True,
            _request_timeout=(REQUEST_TIMEOUT[0], WATCH_READ_TIMEOUT),
        )
        fn: Callable[..., Any]
        args: tuple[str, ...]
        if kind == NODES:
            fn, args = self._core.list_node, ()
        else:
            fn, args = self._custom.list_cluster_custom_object, (GROUP, VERSION, kind)
        stream = watch.Watch().stream(fn, *args, **kwargs)
        while True:
            try:
                event = next(stream)
            except StopIteration:
                return
            except Exception as error:
                raise translate(error) from error
            yield event["type"], event["raw_object"]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        if kind == NODES:
            response = self._call(self._core.read_node, name, _preload_content=False)
            return json.loads(response.data)
        return self._call(self._custom.get_cluster_custom_object, GROUP, VERSION, kind, name)

    def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            self._custom.create_cluster_custom_object,
            GROUP,
            VERSION,
            kind,
            body,
            field_manager=FIELD_MANAGER,
        )

    def patch_status(
        self, kind: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        patch: dict[str, Any] = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        return self._call(
            self._custom.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            kind,
            name,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
        )
