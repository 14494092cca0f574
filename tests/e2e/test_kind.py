"""vmlease installed by its chart on a kind cluster: the whole path a user takes, for real.

The cluster (tests/e2e/run.sh): three workers sharing one host directory as the shared volume,
the images built from the Dockerfile, the chart installed with values-kind.yaml, which creates
Lockspace ``e2e`` (io_timeout N = 2 s, watchdog W = 10 s, so the safe time is 8N + W = 26 s).
Kind nodes are containers: each worker's watchdog is a file-backed device that a harness on the
host supervises (``Watchdogs``); when it is starved, the harness ``docker kill``s that node (a
reset: every process of the node dies at once). ``docker stop`` would not do: it shuts the node
down gracefully, its holders exit and release their leases.

In order (the tests share the cluster and build on each other):
1. every worker gets a host_id, one agent formats the lockspace, all three join (HostId Live);
2. a "VM" (a Pod running ``vmlease client command -r ... -c sleep`` through its node's agent
   socket, with hostPID so the agent sees its pid) holds a lease on worker 1; the same on
   worker 2 is refused with the holder named, and exits 243 (SANLK_ACQUIRE_IDLIVE);
3. worker 1 freezes (docker pause); the watchdog harness on the host resets it (docker kill)
   W after its last keepalive; a retrying "VM" on worker 3 gets the lease after that reset and
   not before the safe time; the DiskLease names worker 3; worker 1's HostId is reported Dead;
4. worker 1 starts again and rejoins;
5. a rolling ``helm upgrade`` with a holder on every worker disturbs none of them;
6. a ``helm upgrade`` over the previous version's Lockspace CRD (no status.storageId) brings it
   up to date through the chart's hook Job; every object keeps working;
7. worker 1 with a local directory where the shared one should be refuses to join, saying why,
   and joins again once the shared directory is back;
8. node fencing: a Lockspace with nodeFencing on workers 1 and 2 keeps worker 1's watchdog
   armed with nothing held; worker 1 freezes, is reset, read Dead by worker 2, and only then
   tainted out of service (Event NodeOutOfService); it boots, rejoins, and the taint is lifted;
9. ``helm uninstall`` stops the agents first (its pre-delete hook): the nodes that hold nothing
   end with their HostIds Free, and only the node whose holder still runs is reset.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from vmlease_agent.engine.clock import boottime

from .cluster import GROUP, SHARED, VERSION, Kind, Watchdogs, holder, lease_dump, wait_for

pytestmark = pytest.mark.e2e

LOCKSPACE = "e2e"
N, W = 2, 10
SAFE_SECONDS = 8 * N + W
LEASE_FILE = f"{SHARED}/leases/vm1.lease"
RESOURCE = f"{LOCKSPACE}:vm1:{LEASE_FILE}:0"
DISKLEASE = f"{LOCKSPACE}.vm1"
RUN = f"run-{secrets.token_hex(2)}"


def vm(name: str, node: str, retry: bool = False, resource: str = RESOURCE) -> dict[str, Any]:
    """A lease holder of this run (``cluster.holder``), for ``Kind.run_pod``."""
    return holder(name, node, resource, {"vmlease.io/e2e": RUN}, retry)


def lease_owner(path: str) -> int | None:
    """The owner host_id of the lease at ``path`` (host side), None before it is formatted."""
    rows = lease_dump(path)
    return rows[0]["owner"] if rows else None


def hostid(kind: Kind, node: str) -> int:
    return kind.hostids(LOCKSPACE)[node]["spec"]["hostId"]


def disklease_status(kind: Kind) -> dict[str, Any]:
    return kind.get("disklease", DISKLEASE).get("status") or {}


def held_by(kind: Kind, node: str):
    def check() -> dict[str, Any] | None:
        status = disklease_status(kind)
        holder = status.get("holder") or {}
        return status if status.get("phase") == "Held" and holder.get("node") == node else None

    return check


@pytest.fixture(scope="module")
def workers(kind: Kind, watchdogs: Watchdogs):
    nodes = kind.workers()
    assert len(nodes) == 3, nodes
    yield nodes
    kind.kubectl("delete", "pods", "-n", kind.namespace, "-l", f"vmlease.io/e2e={RUN}",
                 "--wait=false", check=False)  # fmt: skip
    for node in nodes:  # a reset node comes back, so a kept cluster is whole again
        kind.docker("unpause", node, check=False)
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
    marker = Path(kind.shared_dir) / f"lockspaces/{LOCKSPACE}.{LOCKSPACE}.vmlease-id"
    assert marker.read_text() == status["storageId"] + "\n"  # what every agent checked
    assert status["failoverSeconds"] == SAFE_SECONDS

    def ready() -> list[str]:
        agents = kind.get("pods", "-n", kind.namespace, "-l", "app.kubernetes.io/component=agent")
        return sorted(
            p["spec"]["nodeName"]
            for p in agents["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]
            )
        )

    # helm's --wait counts a DaemonSet ready with maxUnavailable (1) pods not Ready, and the
    # readiness probe (every 5 s) follows the join a little later
    wait_for(lambda: ready() == workers, 60, "every agent Ready", describe=ready)
    print("\n" + kind.kubectl("get", "lockspaces,hostids").stdout)


def init_lease(kind: Kind, node: str, name: str) -> str:
    """Lease file ``leases/NAME.lease`` of lockspace e2e, formatted from a pod on ``node``."""
    return kind.init_lease(node, LOCKSPACE, name, {"vmlease.io/e2e": RUN})


def test_a_lease_holder_runs_on_one_node_and_is_refused_on_another(kind: Kind, workers: list[str]):
    first, second = workers[0], workers[1]
    assert init_lease(kind, first, "vm1") == RESOURCE
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

    running = kind.run_pod(vm(f"vm1-a-{RUN}", first))
    status = wait_for(held_by(kind, first), 120, f"{DISKLEASE} held on {first}")
    # the lease is held by the pod's process; the kubelet may report Running a moment later
    wait_for(lambda: kind.pod_phase(running) == "Running", 30, f"{running} Running")
    print("\n" + kind.kubectl("get", "disklease", DISKLEASE, "-o", "wide").stdout)

    name = kind.run_pod(vm(f"vm1-b-{RUN}", second))
    wait_for(lambda: kind.pod_phase(name) == "Failed", 120, f"{name} refused")
    body = kind.get("pod", name, "-n", kind.namespace)
    (state,) = body["status"]["containerStatuses"]
    assert state["state"]["terminated"]["exitCode"] == 243  # SANLK_ACQUIRE_IDLIVE
    log = kind.logs(name)
    assert "is held by host" in log and first in log, log
    assert disklease_status(kind)["holder"] == status["holder"]  # still the first node's


def test_a_frozen_node_is_reset_by_its_watchdog_before_its_lease_moves_safety(
    kind: Kind, workers: list[str], watchdogs: Watchdogs
):
    """Worker 1 freezes (``docker pause``: its agent neither renews nor feeds). Its watchdog's
    harness resets it (``docker kill``) W after the last keepalive; the lease moves to worker 3
    only after that, and no earlier than 8N + W after worker 1's last renewal. The timeline is
    read on one clock: the host's (nodes share its kernel, so the delta leases' timestamps are
    its monotonic seconds too; the harness records CLOCK_BOOTTIME, converted here)."""
    first, third = workers[0], workers[2]
    ids = {node: o["spec"]["hostId"] for node, o in kind.hostids(LOCKSPACE).items()}
    lockspace_file = f"{kind.shared_dir}/lockspaces/{LOCKSPACE}"
    lease_file = f"{kind.shared_dir}/leases/vm1.lease"
    assert lease_dump(lease_file)[0]["owner"] == ids[first]
    kind.docker("pause", first)
    paused = time.monotonic()
    kind.run_pod(vm(f"vm1-c-{RUN}", third, retry=True))

    def taken() -> float | None:
        rows = lease_dump(lease_file)
        return time.monotonic() if rows and rows[0]["owner"] == ids[third] else None

    taken_at = wait_for(taken, SAFE_SECONDS + 120, f"the lease taken by {third}", every=0.2)
    last_renewal = next(r["timestamp"] for r in lease_dump(lockspace_file) if r["name"] == first)
    (fired,) = watchdogs.fired(first)
    to_monotonic = time.monotonic() - boottime()
    fed_at, reset_at = fired["fed_at"] + to_monotonic, fired["reset_done_at"] + to_monotonic
    print(
        f"\ntimeline (s after {first} froze): last renewal {last_renewal - paused:+.1f}, "
        f"last keepalive {fed_at - paused:+.1f}, "
        f"reset (docker kill done) {reset_at - paused:+.1f}, "
        f"lease taken on {third} {taken_at - paused:+.1f}; safe time 8N+W = {SAFE_SECONDS} s"
    )
    assert fired["status"] == 0, fired
    assert W < reset_at - fed_at <= W + 3, "the harness did not reset the node W after its feed"
    assert reset_at < taken_at, "the lease moved while the frozen node could still run"
    assert taken_at >= last_renewal + SAFE_SECONDS, "the lease moved before the safe time"
    assert not kind.running(first)
    wait_for(held_by(kind, third), 60, f"{DISKLEASE} reported held on {third}")
    # between the holder host's failure and the takeover, the reporter said Orphaned
    orphaned = [e["message"] for e in events(kind, "LeaseOrphaned")]
    assert any(DISKLEASE in m and first in m for m in orphaned), orphaned
    # and the Node it was taken from says by whom
    moved = [e for e in events(kind, "LeaseMoved") if e["involvedObject"]["kind"] == "Node"]
    assert any(e["involvedObject"]["name"] == first and third in e["message"] for e in moved), moved
    wait_for(
        lambda: (kind.hostids(LOCKSPACE)[first].get("status") or {}).get("state") == "Dead",
        120,
        f"{first}'s HostId reported Dead",
    )
    print("\n" + kind.kubectl("get", "hostids,diskleases", "-o", "wide").stdout)


def test_a_reset_node_rejoins_when_it_starts_again(
    kind: Kind, workers: list[str], watchdogs: Watchdogs
):
    """The reset node boots (a kind node makes a new machine id at every start, as a reinstalled
    node would): its agent waits out the old record for 8N + W, then rejoins with host_id 1."""
    first = workers[0]
    watchdogs.start(first, reboot=True)
    kind.docker("start", first)

    def live() -> bool:
        status = kind.hostids(LOCKSPACE)[first].get("status") or {}
        return status.get("state") == "Live"

    wait_for(live, 180 + SAFE_SECONDS, f"{first}'s HostId Live again")


def test_a_rolling_upgrade_with_holders_on_every_worker_disturbs_none_safety(
    kind: Kind, workers: list[str], watchdogs: Watchdogs
):
    """``helm upgrade`` with a changed agent value while a holder runs on every worker: the
    DaemonSet replaces the agents one node at a time; every holder keeps running and keeps its
    lease (same lver), no node is reset, and each node's window without a feeding agent (read
    from its device file on the host every 0.2 s) stays below W."""
    first, second, third = workers
    on_host = kind.shared_dir + "/leases/{}.lease"  # the shared directory, seen from the host
    holders = {third: (f"vm1-c-{RUN}", on_host.format("vm1"))}  # taken over by worker 3 above
    for node, name in ((first, "vm2"), (second, "vm3")):
        resource = init_lease(kind, node, name)
        # retrying: worker 1's agent, just rejoined, refuses new leases until its earlier
        # incarnation's deadline + W has passed (it cannot open the watchdog before)
        pod_name = kind.run_pod(vm(f"{name}-a-{RUN}", node, retry=True, resource=resource))
        holders[node] = (pod_name, on_host.format(name))
    for node, (name, path) in holders.items():
        wait_for(lambda p=path, n=node: lease_owner(p) == hostid(kind, n), 120,
                 f"{name} to hold its lease on {node}")  # fmt: skip
        wait_for(lambda n=name: kind.pod_phase(n) == "Running", 60, f"{name} running")
    before = {node: lease_dump(path)[0] for node, (_, path) in holders.items()}
    generation = kind.get("daemonset", "vmlease-agent", "-n", kind.namespace)["metadata"]

    started = time.monotonic()
    with watchdogs.feed_gaps(workers) as windows:
        kind.helm("upgrade", "--set", "agent.logLevel=DEBUG")
        kind.kubectl("rollout", "status", "daemonset/vmlease-agent", "-n", kind.namespace,
                     "--timeout=600s")  # fmt: skip
    took = time.monotonic() - started
    after = kind.get("daemonset", "vmlease-agent", "-n", kind.namespace)["metadata"]
    assert after["generation"] > generation["generation"], "the upgrade replaced no agent"
    print(f"\nrolling upgrade of 3 agents took {took:.0f} s; each node's longest time without "
          f"a feeding agent: " + ", ".join(f"{n} {w:.1f} s" for n, w in windows.items())
          + f" (W = {W} s)")  # fmt: skip
    for node, (name, path) in holders.items():
        body = kind.get("pod", name, "-n", kind.namespace)
        (state,) = body["status"]["containerStatuses"]
        assert "running" in state["state"] and state["restartCount"] == 0, (node, state)
        now = lease_dump(path)[0]
        assert (now["owner"], now["lver"]) == (before[node]["owner"], before[node]["lver"]), node
    assert all(watchdogs.fired(n) == [] for n in (second, third)), "a node was reset"
    assert len(watchdogs.fired(first)) == 1  # only the reset of the fencing test above
    assert all(w < W for w in windows.values()), windows


def test_helm_upgrade_brings_a_crd_up_to_date_and_existing_objects_keep_working(
    kind: Kind, workers: list[str]
):
    """The cluster serves the previous version's Lockspace CRD (without status.storageId, the
    field this version added); ``helm upgrade`` runs the chart's pre-upgrade hook Job, which
    applies this image's CRDs: the field is served again, the hook's objects are gone, and the
    Lockspace, HostIds, DiskLease and holders are untouched."""
    crd = kind.get("crd", "lockspaces.vmlease.io")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["status"]["properties"]["storageId"]
    crd["metadata"] = {"name": crd["metadata"]["name"]}
    crd.pop("status", None)
    kind.kubectl("replace", "-f", "-", input=json.dumps(crd))

    def served() -> dict[str, Any]:
        return kind.get("crd", "lockspaces.vmlease.io")["spec"]["versions"][0]["schema"][
            "openAPIV3Schema"
        ]["properties"]["status"]["properties"]

    assert "storageId" not in served()
    holders = sorted(
        p["metadata"]["name"]
        for p in kind.get("pods", "-n", kind.namespace, "-l", f"vmlease.io/e2e={RUN}")["items"]
        if p["status"]["phase"] == "Running"
    )
    kind.helm("upgrade", "--wait", "--timeout", "300s")
    assert "storageId" in served()
    crd = kind.get("crd", "lockspaces.vmlease.io", "--show-managed-fields")
    managers = [m["manager"] for m in crd["metadata"]["managedFields"]]
    assert "vmlease-crds" in managers
    hook = kind.kubectl("get", "job,serviceaccount", "-n", kind.namespace, "-o", "name").stdout
    assert "vmlease-crds" not in hook  # deleted once it succeeded
    states = {n: (o.get("status") or {}).get("state") for n, o in kind.hostids(LOCKSPACE).items()}
    assert set(states.values()) == {"Live"}, states
    status = kind.get("lockspace", LOCKSPACE)["status"]
    assert status["formatted"] is True and len(status["storageId"]) == 32
    running = sorted(
        p["metadata"]["name"]
        for p in kind.get("pods", "-n", kind.namespace, "-l", f"vmlease.io/e2e={RUN}")["items"]
        if p["status"]["phase"] == "Running"
    )
    assert running == holders and len(holders) == 3
    assert disklease_status(kind)["phase"] == "Held"


def agent_pod(kind: Kind, node: str) -> dict[str, Any]:
    pods = kind.get("pods", "-n", kind.namespace, "-l", "app.kubernetes.io/component=agent",
                    "--field-selector", f"spec.nodeName={node}")["items"]  # fmt: skip
    (one,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return one


def restart_agent(kind: Kind, node: str) -> None:
    old = agent_pod(kind, node)["metadata"]["name"]
    kind.kubectl("delete", "pod", old, "-n", kind.namespace, "--wait=true")
    wait_for(lambda: agent_pod(kind, node)["metadata"]["name"] != old, 60, f"a new agent on {node}")


def joined_condition(kind: Kind, node: str) -> dict[str, Any]:
    conditions = (kind.hostids(LOCKSPACE)[node].get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Joined"), {})


def test_a_node_whose_shared_directory_is_not_shared_refuses_to_join_safety(
    kind: Kind, workers: list[str], watchdogs: Watchdogs
):
    """Worker 1's shared directory is replaced by a local one (a bind mount over it inside the
    node, as a missing NFS mount would leave the mount point): its restarted agent finds no
    storage id there and refuses to join, with a condition naming the cause, and its pod is
    not Ready; with the shared directory back, it joins again."""
    first = workers[0]
    kind.kubectl("delete", "pod", f"vm2-a-{RUN}", "-n", kind.namespace, "--grace-period=1")
    wait_for(lambda: not watchdogs.armed(first), 60, f"{first} holding nothing")
    kind.docker(
        "exec",
        first,
        "sh",
        "-c",
        f"mkdir -p /var/lib/vmlease-local && mount --bind /var/lib/vmlease-local {SHARED}",
    )
    try:
        restart_agent(kind, first)

        def refused() -> dict[str, Any] | None:
            joined = joined_condition(kind, first)
            return joined if joined.get("reason") == "StorageNotShared" else None

        joined = wait_for(refused, 120, f"{first} to refuse the lockspace",
                          describe=lambda: joined_condition(kind, first))  # fmt: skip
        print(f"\n{first}: {joined['message']}")
        assert "not the shared directory" in joined["message"], joined
        assert (kind.hostids(LOCKSPACE)[first].get("status") or {}).get("state") != "Live"
        ready = [
            c
            for c in agent_pod(kind, first)["status"].get("conditions", [])
            if c["type"] == "Ready"
        ]
        assert ready and ready[0]["status"] == "False"
    finally:
        kind.docker("exec", first, "umount", SHARED, check=False)
    restart_agent(kind, first)
    wait_for(lambda: (kind.hostids(LOCKSPACE)[first].get("status") or {}).get("state") == "Live",
             120, f"{first} Live again")  # fmt: skip


FENCE = "fence"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


def taints(kind: Kind, node: str) -> dict[str, str]:
    return {t["key"]: t["effect"] for t in kind.get("node", node)["spec"].get("taints") or []}


def events(kind: Kind, reason: str) -> list[dict[str, Any]]:
    return kind.get("events", "-A", "--field-selector", f"reason={reason}")["items"]


def fence_state(kind: Kind, node: str) -> dict[str, Any]:
    return kind.hostids(FENCE).get(node, {}).get("status") or {}


def test_node_fencing_puts_a_reset_node_out_of_service_only_after_its_death_safety(
    kind: Kind, workers: list[str], watchdogs: Watchdogs
):
    """A Lockspace with nodeFencing (the chart installed with nodeFencing.enabled) on workers 1
    and 2. Worker 1 holds nothing, yet its watchdog is armed: that is what makes its death on
    disk a proof that it was reset. It freezes; the harness resets it W after its last
    keepalive; worker 2 reads its host_id Dead after 8N + W; only then does the operator taint
    it node.kubernetes.io/out-of-service, with an Event. It boots and rejoins: the taint goes."""
    first, second = workers[0], workers[1]
    assert not watchdogs.armed(first), f"{first} should hold nothing here"
    kind.apply({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Lockspace", "metadata": {"name": FENCE},
        "spec": {
            "path": f"lockspaces/{FENCE}", "ioTimeoutSeconds": N, "watchdogFireTimeoutSeconds": W,
            "nodeFencing": True,
            "nodeSelector": {"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [first, second]},
            ]},
        },
    })  # fmt: skip
    for node in (first, second):
        wait_for(lambda n=node: fence_state(kind, n).get("state") == "Live"
                 and fence_state(kind, n).get("nodeFencing") is True,
                 120, f"{node} Live in {FENCE} with node fencing")  # fmt: skip
    assert watchdogs.armed(first), "node fencing: the watchdog must be armed with nothing held"
    assert OUT_OF_SERVICE not in taints(kind, first)

    resets_before = len(watchdogs.fired(first))  # scenario 3 reset it once already
    kind.docker("pause", first)
    paused = time.monotonic()
    tainted_at = wait_for(
        lambda: OUT_OF_SERVICE in taints(kind, first) and time.monotonic(),
        SAFE_SECONDS + 120,
        f"{first} tainted out of service",
        describe=lambda: fence_state(kind, first),
    )
    (fired,) = watchdogs.fired(first)[resets_before:]
    to_monotonic = time.monotonic() - boottime()
    reset_at = fired["reset_done_at"] + to_monotonic
    last_renewal = next(
        r["timestamp"]
        for r in lease_dump(f"{kind.shared_dir}/lockspaces/{FENCE}")
        if r["name"] == first
    )
    state = fence_state(kind, first)
    print(
        f"\nnode fencing timeline (s after {first} froze): last renewal "
        f"{last_renewal - paused:+.1f}, reset {reset_at - paused:+.1f}, out-of-service taint "
        f"{tainted_at - paused:+.1f} (safe time {SAFE_SECONDS} s); Dead read by "
        f"{state.get('observedBy')}"
    )
    assert state.get("state") == "Dead" and state.get("observedBy") == second, state
    assert reset_at < tainted_at, "tainted out of service while the node could still run"
    assert tainted_at >= last_renewal + SAFE_SECONDS, "tainted before the safe time"
    assert taints(kind, first)[OUT_OF_SERVICE] == "NoExecute"
    messages = [e["message"] for e in events(kind, "NodeOutOfService")]
    assert any(first in m and "was reset" in m for m in messages), messages
    assert OUT_OF_SERVICE not in taints(kind, second)

    watchdogs.start(first, reboot=True)
    kind.docker("start", first)
    wait_for(lambda: fence_state(kind, first).get("state") == "Live", 180 + SAFE_SECONDS,
             f"{first} Live again in {FENCE}")  # fmt: skip
    wait_for(lambda: OUT_OF_SERVICE not in taints(kind, first), 60, "the taint lifted")
    assert any(first in e["message"] for e in events(kind, "NodeInService"))
    wait_for(lambda: (kind.hostids(LOCKSPACE)[first].get("status") or {}).get("state") == "Live",
             120, f"{first} Live again in {LOCKSPACE}")  # fmt: skip


def test_a_self_fence_remediation_resets_a_running_node_then_succeeds_safety(
    kind: Kind, workers: list[str], watchdogs: Watchdogs
):
    """medik8s NodeHealthCheck's remediation with selfFence, as NHC would create it for a node
    it finds unhealthy while its agent still renews: the operator asks that agent (Node
    annotation), which stops feeding its watchdog; the harness resets the node W after the last
    keepalive; the proof and the out-of-service taint follow, and the remediation Succeeded.
    The node boots and rejoins at a new generation: the request does not reset it again."""
    first = workers[0]
    assert fence_state(kind, first).get("state") == "Live"  # left so by the node fencing test
    generation = fence_state(kind, first).get("generation")
    resets_before = len(watchdogs.fired(first))
    kind.apply({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VmleaseRemediation",
        "metadata": {"name": first, "namespace": kind.namespace}, "spec": {"selfFence": True},
    })  # fmt: skip
    asked = time.monotonic()

    def remediation() -> dict[str, Any]:
        found = kind.get("vmleaseremediation", first, "-n", kind.namespace)
        return {c["type"]: c for c in (found.get("status") or {}).get("conditions") or []}

    wait_for(lambda: watchdogs.fired(first)[resets_before:], W + 60, f"{first} reset")
    (fired,) = watchdogs.fired(first)[resets_before:]
    reset_at = fired["reset_done_at"] + time.monotonic() - boottime()
    wait_for(lambda: remediation().get("Succeeded", {}).get("status") == "True",
             SAFE_SECONDS + 120, "the remediation Succeeded",
             describe=lambda: (remediation(), fence_state(kind, first)))  # fmt: skip
    succeeded = time.monotonic()
    print(f"\nselfFence timeline (s after the remediation was created): reset "
          f"{reset_at - asked:+.1f}, Succeeded {succeeded - asked:+.1f} (W = {W} s, safe time "
          f"{SAFE_SECONDS} s)")  # fmt: skip
    assert remediation()["Succeeded"]["reason"] == "OutOfService"
    assert OUT_OF_SERVICE in taints(kind, first) and reset_at < succeeded
    annotations = kind.get("node", first)["metadata"].get("annotations") or {}
    assert "vmlease.io/fence-request" not in annotations, "the request was not lifted"
    assert any(first in e["message"] for e in events(kind, "RemediationFinished"))

    watchdogs.start(first, reboot=True)
    kind.docker("start", first)
    wait_for(lambda: fence_state(kind, first).get("state") == "Live", 180 + SAFE_SECONDS,
             f"{first} Live again in {FENCE}")  # fmt: skip
    assert fence_state(kind, first).get("generation") != generation
    wait_for(lambda: OUT_OF_SERVICE not in taints(kind, first), 60, "the taint lifted")
    time.sleep(W + 5)  # an honoured stale request would have reset it again by now
    assert len(watchdogs.fired(first)) == resets_before + 1, "reset twice by one request"
    kind.kubectl("delete", "vmleaseremediation", first, "-n", kind.namespace)
    wait_for(lambda: (kind.hostids(LOCKSPACE)[first].get("status") or {}).get("state") == "Live",
             120, f"{first} Live again in {LOCKSPACE}")  # fmt: skip

    # leave it as the next test expects: the fence Lockspace gone, worker 1's device disarmed
    kind.kubectl("delete", "lockspace", FENCE, "--wait=false")
    wait_for(lambda: not kind.lockspace_exists(FENCE), SAFE_SECONDS + 120, f"{FENCE} deleted")
    wait_for(lambda: not watchdogs.armed(first), 60, f"{first}'s watchdog disarmed")


def test_uninstall_resets_only_the_node_that_still_holds_a_lease_safety(
    kind: Kind, workers: list[str], watchdogs: Watchdogs
):
    """What the README says ``helm uninstall`` does to nodes (Install on Kubernetes, Uninstall):
    its pre-delete hook stops the agents while their RBAC still exists; an agent that holds no
    lease releases its host_id (HostId Free) and disarms its watchdog, so its node is not reset;
    one that still holds a lease leaves its holder running and its watchdog counting, and with no
    new agent to adopt them the node is reset W later. The last test: it removes the release."""
    first, second, third = workers
    kind.kubectl("delete", "pod", f"vm1-c-{RUN}", f"vm2-a-{RUN}", "-n", kind.namespace,
                 "--grace-period=1", "--ignore-not-found")  # fmt: skip
    for node in (first, third):
        wait_for(lambda n=node: not watchdogs.armed(n), 60, f"{node}'s watchdog disarmed")
    assert watchdogs.armed(second), f"{second} still holds vm3: its watchdog counts"
    resets_before = {node: len(watchdogs.fired(node)) for node in workers}
    kind.helm("uninstall", "--wait", "--timeout", "120s")
    uninstalled = time.monotonic()
    wait_for(lambda: watchdogs.fired(second), W + 60, f"{second} reset after its agent left")
    print(f"\n{second} (holding vm3) reset {time.monotonic() - uninstalled:.1f} s after the "
          f"uninstall returned (W = {W} s)")  # fmt: skip
    time.sleep(W + 2)  # a device left counting would have fired by now
    for node in (first, third):
        assert len(watchdogs.fired(node)) == resets_before[node], f"{node} was reset"
        assert not watchdogs.armed(node)
    states = {n: (o.get("status") or {}).get("state") for n, o in kind.hostids(LOCKSPACE).items()}
    print(f"HostIds after the uninstall: {states}")
    # the agents that held nothing left the lockspace as they stopped, while the pre-delete
    # hook kept their RBAC: Free. The holder's node kept its host_id (its holder ran on).
    assert states[first] == states[third] == "Free", states
    assert states[second] == "Live", states
    assert lease_dump(kind.shared_dir + "/leases/vm3.lease")[0]["owner"] == hostid(kind, second)
