"""vmlease installed by its chart on a kind cluster: the whole path a user takes, for real.

The cluster (tests/e2e/run.sh): three workers sharing one host directory as the shared volume,
the images built from the Dockerfile, the chart installed with values-kind.yaml, which creates
Lockspace ``e2e`` (io_timeout N = 2 s, watchdog W = 10 s, so the safe time is 8N + W = 26 s).
Kind nodes are containers, so there is no watchdog (``--watchdog none``); ``docker stop`` of a
node container is the reset.

In order (the tests share the cluster and build on each other):
1. every worker gets a host_id, one agent formats the lockspace, all three join (HostId Live);
2. a "VM" (a Pod running ``vmlease client command -r ... -c sleep`` through its node's agent
   socket, with hostPID so the agent sees its pid) holds a lease on worker 1; the same on
   worker 2 is refused with the holder named, and exits 243 (SANLK_ACQUIRE_IDLIVE);
3. worker 1 is stopped; a retrying "VM" on worker 3 gets the lease, not before the safe time,
   and the DiskLease names worker 3; worker 1's HostId is reported Dead.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from .cluster import GROUP, VERSION, Kind, wait_for

pytestmark = pytest.mark.e2e

LOCKSPACE = "e2e"
N, W = 2, 10
SAFE_SECONDS = 8 * N + W
SHARED = "/var/lib/vmlease/shared"
LEASE_FILE = f"{SHARED}/leases/vm1.lease"
RESOURCE = f"{LOCKSPACE}:vm1:{LEASE_FILE}:0"
DISKLEASE = f"{LOCKSPACE}.vm1"
IMAGE = "vmlease-agent:e2e"
RUN = f"run-{secrets.token_hex(2)}"


def pod(name: str, node: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A one-container Pod pinned to ``node`` with the agent image (it carries ``vmlease``)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"vmlease.io/e2e": RUN}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "volumeMounts": spec.pop("mounts", []),
                }
            ],
            "volumes": spec.pop("volumes", []),
            **spec,
        },
    }


def vm(name: str, node: str, retry: bool = False) -> dict[str, Any]:
    """A lease holder: acquire through the node's agent socket, then exec ``sleep``. hostPID,
    because the agent (hostPID itself) checks and signals holders by their host pid."""
    hold = ["vmlease", "client", "command", "-r", RESOURCE, "--owner", name, "-c", "sleep", "3600"]
    command = hold
    if retry:
        command = ["sh", "-c", "until " + " ".join(hold) + "; do sleep 1; done"]
    return pod(
        name,
        node,
        command,
        hostPID=True,
        mounts=[{"name": "run", "mountPath": "/run/vmlease"}],
        volumes=[{"name": "run", "hostPath": {"path": "/run/vmlease", "type": "Directory"}}],
    )


def disklease_status(kind: Kind) -> dict[str, Any]:
    return kind.get("disklease", DISKLEASE).get("status") or {}


def held_by(kind: Kind, node: str):
    def check() -> dict[str, Any] | None:
        status = disklease_status(kind)
        holder = status.get("holder") or {}
        return status if status.get("phase") == "Held" and holder.get("node") == node else None

    return check


@pytest.fixture(scope="module")
def workers(kind: Kind):
    nodes = kind.workers()
    assert len(nodes) == 3, nodes
    yield nodes
    kind.kubectl("delete", "pods", "-n", kind.namespace, "-l", f"vmlease.io/e2e={RUN}",
                 "--wait=false", check=False)  # fmt: skip
    for node in nodes:  # a stopped node comes back, so a kept cluster is whole again
        kind.docker("start", node)


def test_every_worker_gets_a_host_id_and_joins(kind: Kind, workers: list[str]):
    def all_live() -> dict[str, dict[str, Any]] | None:
        ids = kind.hostids(LOCKSPACE)
        states = {n: (o.get("status") or {}).get("state") for n, o in ids.items()}
        return ids if set(ids) == set(workers) and set(states.values()) == {"Live"} else None

    ids = wait_for(all_live, 180, "a Live HostId for every worker")
    assert sorted(o["spec"]["hostId"] for o in ids.values()) == [1, 2, 3]
    status = kind.get("lockspace", LOCKSPACE)["status"]
    assert status["formatted"] is True and status["formattedBy"] in workers
    assert status["failoverSeconds"] == SAFE_SECONDS
    agents = kind.get("pods", "-n", kind.namespace, "-l", "app.kubernetes.io/component=agent")
    ready = [
        p["spec"]["nodeName"]
        for p in agents["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
    ]
    assert sorted(ready) == workers
    print("\n" + kind.kubectl("get", "lockspaces,hostids").stdout)


def test_a_lease_holder_runs_on_one_node_and_is_refused_on_another(kind: Kind, workers: list[str]):
    first, second = workers[0], workers[1]
    init = pod(
        f"init-vm1-{RUN}",
        first,
        ["sh", "-c", f"mkdir -p {SHARED}/leases && truncate -s 1M {LEASE_FILE} && "
         f"vmlease direct init -r {RESOURCE}"],
        mounts=[{"name": "shared", "mountPath": SHARED}],
        volumes=[{"name": "shared", "hostPath": {"path": SHARED, "type": "Directory"}}],
    )  # fmt: skip
    init["metadata"]["namespace"] = kind.namespace
    kind.apply(init)
    wait_for(lambda: kind.pod_phase(init["metadata"]["name"]) == "Succeeded", 120, "lease init")
    kind.apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DiskLease",
            "metadata": {"name": DISKLEASE},
            "spec": {
                "lockspace": LOCKSPACE,
                "resource": "vm1",
                "lease": {"path": "leases/vm1.lease"},
            },
        }
    )

    holder = vm(f"vm1-a-{RUN}", first)
    holder["metadata"]["namespace"] = kind.namespace
    kind.apply(holder)
    status = wait_for(held_by(kind, first), 120, f"{DISKLEASE} held on {first}")
    assert kind.pod_phase(holder["metadata"]["name"]) == "Running"
    print("\n" + kind.kubectl("get", "disklease", DISKLEASE, "-o", "wide").stdout)

    refused = vm(f"vm1-b-{RUN}", second)
    refused["metadata"]["namespace"] = kind.namespace
    kind.apply(refused)
    name = refused["metadata"]["name"]
    wait_for(lambda: kind.pod_phase(name) == "Failed", 120, f"{name} refused")
    body = kind.get("pod", name, "-n", kind.namespace)
    (state,) = body["status"]["containerStatuses"]
    assert state["state"]["terminated"]["exitCode"] == 243  # SANLK_ACQUIRE_IDLIVE
    log = kind.logs(name)
    assert "is held by host" in log and first in log, log
    assert disklease_status(kind)["holder"] == status["holder"]  # still the first node's


def test_the_lease_moves_after_the_safe_time_when_its_node_stops(kind: Kind, workers: list[str]):
    first, third = workers[0], workers[2]
    stopped = time.monotonic()
    kind.docker("stop", first)  # kind node = container: this is the node's reset
    taker = vm(f"vm1-c-{RUN}", third, retry=True)
    taker["metadata"]["namespace"] = kind.namespace
    kind.apply(taker)
    status = wait_for(held_by(kind, third), SAFE_SECONDS + 150, f"{DISKLEASE} taken on {third}")
    moved = time.monotonic() - stopped
    print(f"\nlease moved {moved:.0f} s after {first} stopped (safe time {SAFE_SECONDS} s)")
    # Never before the safe time after the holder's last renewal, which was at most one renewal
    # interval (2N) before the stop.
    assert moved >= SAFE_SECONDS - 2 * N
    assert status["holder"]["hostId"] == kind.hostids(LOCKSPACE)[third]["spec"]["hostId"]
    wait_for(
        lambda: (kind.hostids(LOCKSPACE)[first].get("status") or {}).get("state") == "Dead",
        120,
        f"{first}'s HostId reported Dead",
    )
    print("\n" + kind.kubectl("get", "hostids,diskleases", "-o", "wide").stdout)
