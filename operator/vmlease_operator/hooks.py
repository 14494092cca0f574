"""What the chart's hook Jobs run, with the operator image: ``vmlease-operator --apply-crds``
(pre-upgrade) and ``--stop-agents`` (pre-delete).

**--apply-crds: serve this version's CRDs before this version runs.** Helm installs a chart's
``crds/`` directory once and never upgrades it, and templated CRDs cannot work here: the chart also
creates Lockspaces (``lockspaces`` in its values) and its kopf peering object, and Helm refuses a
release whose objects are of kinds the API server does not serve yet ("ensure CRDs are installed
first"). So the chart keeps ``crds/`` for the first install and runs this, from the operator image
of the new release, as a ``pre-upgrade`` hook Job (``templates/crds-upgrade.yaml``): before the new
operator and agents start writing a field, the API server has the schema that keeps it (an unknown
field is pruned on write, silently). The CRDs are generated from the models in this image
(``vmlease_api.crd``, the same code that writes ``crds/``), so they always match the operator that
will run. Server-side apply, field manager ``vmlease-crds``, forced (fields set by an earlier
``kubectl apply -f crds/`` are taken over). Existing objects are untouched: a new optional field is
simply absent from them. Nothing is ever deleted. Returns once every CRD is Established with its
names accepted.

**--stop-agents NAMESPACE/NAME: stop the agents while they may still say so.** ``helm uninstall``
deletes the agents' DaemonSet and, in the same breath, their ServiceAccount and RBAC; the agents
get SIGTERM only afterwards, when their last status write (their idle lockspaces left, HostIds
Free: ``Agent.leave_idle``) is refused. So a pre-delete hook deletes the DaemonSet first, with
foreground propagation, and waits until it is gone, i.e. until every agent pod has exited.
Nothing else changes: an agent that still holds leases keeps them and its node is reset W later,
as on any uninstall (README, Uninstall).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from vmlease_api.crd import all_crds

from vmlease_operator.kube import translate

log = logging.getLogger(__name__)

FIELD_MANAGER = "vmlease-crds"
#: Stopping agents: their grace period (the chart's default 30 s; an agent exits within seconds)
#: plus the time for the pods to go; the hook Job's activeDeadlineSeconds bounds it as well.
STOP_TIMEOUT = 120.0
#: An API server establishes a changed CRD within a second or two; a minute means it is stuck,
#: and the hook Job (activeDeadlineSeconds 300, two retries) fails the upgrade, saying which.
ESTABLISH_TIMEOUT = 60.0


def apply_crds(
    api: client.ApiClient,
    crds: dict[str, dict[str, Any]] | None = None,
    timeout: float = ESTABLISH_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Apply ``crds`` (default: this version's) and wait until served; returns their names."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for doc in (crds if crds is not None else all_crds()).values():
        name = doc["metadata"]["name"]
        try:
            ext.patch_custom_resource_definition(
                name,
                doc,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as error:
            raise translate(error) from error
        log.info("applied CustomResourceDefinition %s", name)
        names.append(name)
    deadline = time.monotonic() + timeout
    for name in names:
        while not _served(ext.read_custom_resource_definition(name)):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"CustomResourceDefinition {name} not Established after {timeout:.0f}s: "
                    f"see `kubectl describe crd {name}`"
                )
            sleep(0.5)
    return names


def _served(crd: client.V1CustomResourceDefinition) -> bool:
    conditions = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
    return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"


def stop_agents(
    api: client.ApiClient,
    namespace: str,
    name: str,
    timeout: float = STOP_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Delete DaemonSet ``namespace/name`` (foreground) and wait until it is gone with its pods.
    False when there was none (agent.enabled false, or already deleted)."""
    apps = client.AppsV1Api(api)
    try:
        apps.delete_namespaced_daemon_set(name, namespace, propagation_policy="Foreground")
    except ApiException as error:
        if error.status == 404:
            return False
        raise translate(error) from error
    log.info("deleted DaemonSet %s/%s: waiting for its agents to stop", namespace, name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            apps.read_namespaced_daemon_set(name, namespace)
        except ApiException as error:
            if error.status == 404:
                log.info("the agents of %s/%s have stopped", namespace, name)
                return True
            raise translate(error) from error
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"DaemonSet {namespace}/{name} still has pods after {timeout:.0f}s: see "
                f"`kubectl get pods -n {namespace}`; the uninstall goes on without them"
            )
        sleep(1.0)
