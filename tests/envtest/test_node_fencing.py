"""Node fencing against a real kube-apiserver: the operator taints a Node out of service only on
the whole proof of its reset, and lifts only its own taints when the node's agent is Live again.

No agents run here: the test writes the HostId status the agents would (the node's own agent
says Live with nodeFencing; the lockspace's reporter says Dead), and reads the Node's taints
and Events as a platform engineer would.
"""

from __future__ import annotations

import datetime
import json
import secrets
import time

import pytest
from kubernetes import client
from vmlease_api import GROUP, VERSION

from .apiserver import APIServer
from .operator_harness import Operator, apply_crds, hostids, lockspace_with_nodes, wait_for

pytestmark = pytest.mark.envtest

#: safe time 8 x 1 + 10 = 18 s
FAST = {"ioTimeoutSeconds": 1, "watchdogFireTimeoutSeconds": 10, "nodeFencing": True}
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
FAILING = "vmlease.io/lockspace-failing"
PASS_SECONDS = 12  # one Lockspace pass (10 s) and the patch


@pytest.fixture(scope="module")
def server(apiserver: APIServer) -> APIServer:
    apply_crds(apiserver)
    return apiserver


def _stamp(seconds_ago: float = 0) -> str:
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return at.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _status(api: client.ApiClient, name: str, **status: object) -> None:
    client.CustomObjectsApi(api).patch_cluster_custom_object_status(
        GROUP, VERSION, "hostids", name, {"status": status}
    )


def _taints(api: client.ApiClient, node: str) -> dict[str, str]:
    spec = client.CoreV1Api(api).read_node(node).spec
    return {t.key: t.effect for t in spec.taints or []}


def _events(server: APIServer, reason: str) -> list[str]:
    out = server.kubectl(
        "get", "events", "-A", "-o", "json", "--field-selector", f"reason={reason}"
    ).stdout
    return [e["message"] for e in json.loads(out)["items"]]


def _both_live(api: client.ApiClient, name: str, nodes: list[str], generation: int = 1) -> dict:
    """Node -> its HostId, once allocated, each written Live by its own agent with an armed
    watchdog for node fencing (what agents would write)."""
    ids = wait_for(
        lambda: (
            (h := {i["spec"]["nodeName"]: i["metadata"]["name"] for i in hostids(api, name)})
            and len(h) == len(nodes)
            and h
        ),
        30,
        "a HostId per node",
    )
    for node in nodes:
        _status(
            api, ids[node], state="Live", observedBy=node, stateSince=_stamp(),
            lastRenewal=_stamp(), nodeFencing=True, generation=generation,
        )  # fmt: skip
    return ids


def test_a_node_is_put_out_of_service_only_on_the_whole_proof_safety(server):
    name = f"ls-{secrets.token_hex(3)}"
    victim, observer = f"{name}-a", f"{name}-b"
    with (
        lockspace_with_nodes(server, name, [victim, observer], **FAST) as api,
        Operator(server, "--standalone") as operator,
    ):
        ids = _both_live(api, name, [victim, observer])

        # Failing on its own agent's view: no new pods, but never out of service
        _status(api, ids[victim], state="Failing", stateSince=_stamp())
        wait_for(lambda: FAILING in _taints(api, victim), 30, "the NoSchedule taint")
        assert _taints(api, victim)[FAILING] == "NoSchedule"
        time.sleep(PASS_SECONDS)
        assert OUT_OF_SERVICE not in _taints(api, victim), "tainted out of service while Failing"

        # Dead, read by an observer whose own renewals stopped long ago: a stale reader
        _status(api, ids[observer], lastRenewal=_stamp(600))
        _status(
            api, ids[victim], state="Dead", observedBy=observer, stateSince=_stamp(),
            lastRenewal=_stamp(60),
        )  # fmt: skip
        wait_for(lambda: any(victim in m for m in _events(server, "FencingUnproven")), 30,
                 "the FencingUnproven event")  # fmt: skip
        assert OUT_OF_SERVICE not in _taints(api, victim), "tainted on a stale reader's word"

        # the observer renews: now the proof is whole
        _status(api, ids[observer], lastRenewal=_stamp())
        tainted_at = wait_for(
            lambda: OUT_OF_SERVICE in _taints(api, victim) and time.monotonic(),
            PASS_SECONDS + 20,
            "the out-of-service taint",
        )
        assert _taints(api, victim)[OUT_OF_SERVICE] == "NoExecute"
        node = client.CoreV1Api(api).read_node(victim)
        oos = next(t for t in node.spec.taints if t.key == OUT_OF_SERVICE)
        assert oos.value == "nodeshutdown"
        assert json.loads(node.metadata.annotations["vmlease.io/fencing"])["outOfService"] == [name]
        assert any(victim in m and "was reset" in m for m in _events(server, "NodeOutOfService"))
        assert not {OUT_OF_SERVICE, FAILING} & set(_taints(api, observer))

        # the node came back and its agent rejoined: both taints lifted, an admin's kept
        core = client.CoreV1Api(api)
        taints = [api.sanitize_for_serialization(t) for t in core.read_node(victim).spec.taints]
        admin = {"key": "example.com/maintenance", "effect": "NoSchedule"}
        core.patch_node(
            victim,
            {"spec": {"taints": [*taints, admin]}},
            _content_type="application/merge-patch+json",
        )
        _status(api, ids[victim], state="Joining", observedBy=victim, stateSince=_stamp())
        time.sleep(PASS_SECONDS)
        assert OUT_OF_SERVICE in _taints(api, victim), "lifted before the agent was Live"
        _status(
            api, ids[victim], state="Live", observedBy=victim, stateSince=_stamp(),
            lastRenewal=_stamp(),
        )  # fmt: skip
        wait_for(
            lambda: not {OUT_OF_SERVICE, FAILING} & set(_taints(api, victim)),
            PASS_SECONDS + 20,
            "the taints lifted",
        )
        # the admin's taint and the API server's own (not-ready: no kubelet here) are kept
        assert {"example.com/maintenance", "node.kubernetes.io/not-ready"} <= set(
            _taints(api, victim)
        )
        assert time.monotonic() > tainted_at
        assert any(victim in m for m in _events(server, "NodeInService"))
        annotations = core.read_node(victim).metadata.annotations or {}
        assert "vmlease.io/fencing" not in annotations
        assert "Traceback" not in operator.log_tail(200)


def test_deleting_a_fencing_lockspace_lifts_its_no_schedule_taints(server):
    """No pass judges a deleted Lockspace's nodes again: its NoSchedule taints must not be
    left behind for ever."""
    name = f"ls-{secrets.token_hex(3)}"
    node = f"{name}-a"
    with (
        lockspace_with_nodes(server, name, [node], **FAST) as api,
        Operator(server, "--standalone"),
    ):
        (hid,) = wait_for(lambda: [i["metadata"]["name"] for i in hostids(api, name)], 30, "id")
        _status(api, hid, state="Live", observedBy=node, stateSince=_stamp(), lastRenewal=_stamp())
        _status(api, hid, state="Dead", observedBy="someone", stateSince=_stamp())
        wait_for(lambda: FAILING in _taints(api, node), 30, "the NoSchedule taint")
        server.kubectl("delete", "lockspace", name, "--wait=false")

        def gone() -> bool:
            items = client.CustomObjectsApi(api).list_cluster_custom_object(
                GROUP, VERSION, "lockspaces"
            )["items"]
            return all(i["metadata"]["name"] != name for i in items)

        wait_for(gone, 18 + 40, "the Lockspace deleted (its Dead id released)", 0.5)
        assert FAILING not in _taints(api, node), "a deleted Lockspace's taint stayed"


# --- medik8s NodeHealthCheck remediation -----------------------------------------------------


def _remediation(api: client.ApiClient, namespace: str, name: str, node: str | None = None,
                 **annotations: str) -> None:  # fmt: skip
    """What NodeHealthCheck creates: the template's inner spec, named after the node or (for a
    remediator with multiple-templates-support) generated and annotated with it."""
    if node is not None:
        annotations["remediation.medik8s.io/node-name"] = node
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VmleaseRemediation",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {},
    }  # fmt: skip
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "vmleaseremediations", body
    )


def _conditions(api: client.ApiClient, namespace: str, name: str) -> dict[str, tuple[str, str]]:
    """type -> (status, reason)"""
    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "vmleaseremediations", name
    )
    found = (obj.get("status") or {}).get("conditions") or []
    return {c["type"]: (c["status"], c["reason"]) for c in found}


def test_nhc_remediation_succeeds_only_on_the_proof_and_fails_fast_without_one_safety(server):
    """NodeHealthCheck's contract, against a real API server: Processing while the node's
    proof is incomplete, Succeeded once node fencing tainted it out of service on the proof,
    Succeeded False at once where no proof can come (so NHC escalates), TimedOut when NHC says
    so, and nothing written in a namespace the operator does not answer."""
    name = f"ls-{secrets.token_hex(3)}"
    victim, observer, outsider = f"{name}-a", f"{name}-b", f"{name}-c"
    ns, other = f"rem-{secrets.token_hex(3)}", f"rem-{secrets.token_hex(3)}"
    for namespace in (ns, other):
        server.kubectl("create", "namespace", namespace)
    with (
        lockspace_with_nodes(server, name, [victim, observer], **FAST) as api,
        Operator(server, "--standalone", "--remediation-namespace", ns) as operator,
    ):
        client.CoreV1Api(api).create_node({"metadata": {"name": outsider}})
        ids = _both_live(api, name, [victim, observer])
        _remediation(api, ns, victim)
        _remediation(api, ns, "nhc-x7k2p", node=outsider)
        _remediation(api, ns, observer, **{"remediation.medik8s.io/nhc-timed-out": _stamp()})
        _remediation(api, other, victim)

        # a running node (its agent renews) is never fenced: the remediation waits
        wait_for(lambda: _conditions(api, ns, victim).get("Processing") == ("True",
                 "WaitingForProof"), 30, "Processing")  # fmt: skip
        conditions = _conditions(api, ns, victim)
        assert conditions["Succeeded"][0] == "Unknown"
        assert conditions["PermanentNodeDeletionExpected"][0] == "False"
        # no host_id in a fencing lockspace: Succeeded False at once, NHC escalates
        wait_for(lambda: _conditions(api, ns, "nhc-x7k2p").get("Succeeded") == ("False",
                 "NoFencingLockspace"), 30, "NoFencingLockspace")  # fmt: skip
        # NHC timed it out: Succeeded False (handled in its own event, in no given order)
        wait_for(lambda: _conditions(api, ns, observer).get("Succeeded") == ("False",
                 "TimedOut"), 30, "TimedOut")  # fmt: skip

        # the node is reset: Dead, read by a fresh observer, silent for the safe time
        _status(
            api, ids[victim], state="Dead", observedBy=observer, stateSince=_stamp(),
            lastRenewal=_stamp(60),
        )  # fmt: skip
        wait_for(lambda: _conditions(api, ns, victim).get("Succeeded") == ("True",
                 "OutOfService"), PASS_SECONDS + 20, "Succeeded")  # fmt: skip
        assert OUT_OF_SERVICE in _taints(api, victim)
        assert _conditions(api, ns, victim)["Processing"] == ("False", "OutOfService")
        for reason in ("RemediationStarted", "RemediationFinished"):
            assert any(victim in m for m in _events(server, reason)), reason
        assert any(outsider in m for m in _events(server, "RemediationFailed"))
        assert _conditions(api, other, victim) == {}, "answered outside its namespace"
        assert "Traceback" not in operator.log_tail(200)
    for namespace in (ns, other):
        server.kubectl("delete", "namespace", namespace, "--wait=false")
    server.kubectl("delete", "node", outsider, "--ignore-not-found")


def test_self_fence_asks_a_renewing_nodes_agent_once_and_lifts_the_request(server):
    """selfFence: NodeHealthCheck finds a node unhealthy whose agent still renews; the operator
    asks that agent, on its Node, to fence itself at the generation it renews; once the node
    stops renewing (it is being reset) the request is lifted, and Succeeded follows the proof."""
    name = f"ls-{secrets.token_hex(3)}"
    victim, observer = f"{name}-a", f"{name}-b"
    ns = f"rem-{secrets.token_hex(3)}"
    server.kubectl("create", "namespace", ns)
    with (
        lockspace_with_nodes(server, name, [victim, observer], **FAST) as api,
        Operator(server, "--standalone", "--remediation-namespace", ns) as operator,
    ):
        ids = _both_live(api, name, [victim, observer], generation=5)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "VmleaseRemediation",
            "metadata": {"name": victim, "namespace": ns}, "spec": {"selfFence": True},
        }  # fmt: skip
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, ns, "vmleaseremediations", body
        )

        def request() -> dict | None:
            meta = client.CoreV1Api(api).read_node(victim).metadata
            raw = (meta.annotations or {}).get("vmlease.io/fence-request")
            return json.loads(raw) if raw else None

        asked = wait_for(request, 30, "the fence request on the Node")
        assert (asked["remediation"], asked["lockspace"], asked["generation"]) == (
            f"{ns}/{victim}", name, 5,
        )  # fmt: skip
        # the agent stopped feeding; its renewals stop at the reset: Failing, then Dead
        _status(api, ids[victim], state="Failing", observedBy=victim, stateSince=_stamp())
        wait_for(lambda: request() is None, PASS_SECONDS + 20, "the request lifted")
        _status(
            api, ids[victim], state="Dead", observedBy=observer, stateSince=_stamp(),
            lastRenewal=_stamp(60),
        )  # fmt: skip
        wait_for(lambda: _conditions(api, ns, victim).get("Succeeded") == ("True",
                 "OutOfService"), PASS_SECONDS + 20, "Succeeded")  # fmt: skip
        assert request() is None
        assert "Traceback" not in operator.log_tail(200)
    server.kubectl("delete", "namespace", ns, "--wait=false")
