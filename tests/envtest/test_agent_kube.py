"""The agent's Kubernetes mode on a real kube-apiserver: three agents as nodes, one operator.

Real everything except the machines: ``vmlease-agent --kubernetes`` processes with their own
run directories and ``--watchdog none`` act as three Nodes (Node objects created here) sharing
one directory under /var/tmp as their "shared volume" (O_DIRECT needs a real file system, not
tmpfs); ``vmlease-operator`` runs as a subprocess; leases are held by ``vmlease client command``
processes. What must hold:

* every node gets a HostId, exactly one agent formats the lockspace, all join (HostId Live);
* ``kubectl get disklease`` names the holder (node, host_id, pid) while a process holds the
  lease, shows it Free once the holder is killed, and names the new node once another takes it;
* a lease in the Lockspace's automatic directory gets a DiskLease created by the agent;
* every agent also serves sanlock's client API (``--sanlock-api``): a python-sanlock holder's
  lease shows on its DiskLease like any other, and a refused client's node names the holder;
* deleting the Lockspace makes every agent leave (HostIds Free), and the operator lets it go
  after the safe time.

Timings: io_timeout N = 1 s and a 10 s watchdog promise (the schema's minimum) keep a join at
~2 s (write, wait 2N, re-read). The operator issues formatRequest on its reconcile pass (every
10 s), so all HostIds are Live 10-15 s after the Lockspace is created.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from vmlease_agent.rpc.client import AgentClient
from vmlease_api import GROUP, VERSION
from vmlease_api.naming import disk_resource_name

from .apiserver import APIServer
from .operator_harness import (
    Operator,
    api_client,
    apply_crds,
    create_nodes,
    delete_nodes,
    free_port,
    remove_lockspace,
    wait_for,
)

pytestmark = pytest.mark.envtest

N, W = 1, 10
#: Lockspace creation to every HostId Live: the operator's first pass allocates at once, its
#: next pass (10 s later) names the formatter, then format + join (2N) + a status write.
ALL_LIVE_TIMEOUT = 45
#: A DiskLease follows an acquire or release within the sync's 1 s poll plus two API calls.
LEASE_TIMEOUT = 15
#: The operator reuses an id only after its lease was Free or Dead for 8N + W.
SAFE_SECONDS = 8 * N + W


@dataclass
class AgentProc:
    node: str
    run_dir: Path
    shared: Path
    server: APIServer
    health_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.run_dir / "agent.log"

    @property
    def sanlock_run_dir(self) -> Path:
        """Where this node's sanlock clients find ``sanlock.sock`` (``$SANLOCK_RUN_DIR``)."""
        return self.run_dir / "sanlock"

    def start(self) -> AgentProc:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "vmlease_agent.daemon.main", "--kubernetes",
            "--node-name", self.node, "--run-dir", str(self.run_dir),
            "--watchdog", "none", "--watchdog-fire-timeout", str(W),
            "--shared-dir", str(self.shared), "--status-interval", "5",
            "--health-port", str(self.health_port),
            "--sanlock-api", "--sanlock-run-dir", str(self.sanlock_run_dir),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                env={**self.server.env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        """SIGTERM: the agent stops without harm (leases kept on disk, as for an upgrade)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
        except OSError:
            return 0, {}

    def hold(self, resource: str, owner: str) -> subprocess.Popen[bytes]:
        """A "VM": a process holding ``resource`` for as long as it runs (sanlock's
        ``client command``: acquire for our pid, then exec)."""
        argv = [
            sys.executable, "-m", "vmlease_agent.cli.main", "client",
            "--run-dir", str(self.run_dir), "command", "-r", resource, "--owner", owner,
            "-c", "sleep", "600",
        ]  # fmt: skip
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)

    def sanlock_hold(self, lockspace: str, resource: str, path: Path) -> subprocess.Popen[str]:
        """A VDSM-like holder: python-sanlock registers with this node's ``sanlock.sock`` and
        acquires ``resource`` (slkfd); it prints ``held`` or the SanlockException's errno,
        then keeps its lease until killed."""
        return subprocess.Popen(
            [sys.executable, "-c", SANLOCK_HOLDER, lockspace, resource, str(path)],
            env={"SANLOCK_RUN_DIR": str(self.sanlock_run_dir), "PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def events(self) -> list[dict[str, Any]]:
        return AgentClient(str(self.run_dir), timeout=10).call("events")


SANLOCK_HOLDER = """
import sys, time, sanlock
lockspace, resource, path = sys.argv[1:]
fd = sanlock.register()
try:
    sanlock.acquire(lockspace.encode(), resource.encode(), [(path, 0)], slkfd=fd)
except sanlock.SanlockException as e:
    print(e.errno, flush=True)
    sys.exit(1)
print("held", flush=True)
time.sleep(600)
"""


@dataclass
class Cluster:
    name: str
    server: APIServer
    api: client.ApiClient
    shared: Path
    agents: list[AgentProc]
    all_live_seconds: float = 0.0
    holders: list[subprocess.Popen[Any]] = field(default_factory=list)

    def objects(self, plural: str, label_selector: str = "") -> list[dict[str, Any]]:
        return client.CustomObjectsApi(self.api).list_cluster_custom_object(
            GROUP, VERSION, plural, label_selector=label_selector
        )["items"]

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return client.CustomObjectsApi(self.api).get_cluster_custom_object(
            GROUP, VERSION, plural, name
        )

    def hostids(self) -> dict[str, dict[str, Any]]:
        items = self.objects("hostids", f"{GROUP}/lockspace={self.name}")
        return {i["spec"]["nodeName"]: i for i in items}

    def vmlease(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "vmlease_agent.cli.main", *args], check=True)

    def resource_lease(self, resource: str, relative: str) -> str:
        """Create and initialise a resource lease file; returns its LS:RES:PATH:0 spec."""
        path = self.shared / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.truncate(1024 * 1024)
        spec = f"{self.name}:{resource}:{path}:0"
        self.vmlease("direct", "init", "-r", spec)
        return spec

    def disklease(self, resource: str, relative: str) -> str:
        """Create the DiskLease of ``resource`` (lease file ``relative`` to the shared
        volume); returns its name."""
        name = f"{self.name}.{resource}"
        client.CustomObjectsApi(self.api).create_cluster_custom_object(
            GROUP,
            VERSION,
            "diskleases",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DiskLease",
                "metadata": {"name": name},
                "spec": {"lockspace": self.name, "resource": resource, "lease": {"path": relative}},
            },
        )
        return name

    def kill(self, holder: subprocess.Popen[Any]) -> None:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def _all_live(cluster: Cluster):
    def check() -> dict[str, int] | None:
        ids = cluster.hostids()
        live = {
            node: obj["spec"]["hostId"]
            for node, obj in ids.items()
            if (obj.get("status") or {}).get("state") == "Live"
        }
        return live if set(live) == {a.node for a in cluster.agents} else None

    return check


@pytest.fixture(scope="module")
def cluster(apiserver: APIServer) -> Iterator[Cluster]:
    apply_crds(apiserver)
    name = f"kag-{secrets.token_hex(3)}"
    nodes = [f"{name}-n{i}" for i in (1, 2, 3)]
    selector = {f"envtest.vmlease.io/{name}": "yes"}
    shared = Path(tempfile.mkdtemp(prefix="vmlease-kube-", dir="/var/tmp"))
    work = Path(tempfile.mkdtemp(prefix="vmlease-kube-run-"))
    api = api_client(apiserver)
    agents = [AgentProc(n, work / n, shared, apiserver) for n in nodes]
    cluster = Cluster(name, apiserver, api, shared, agents)
    failed = True
    with Operator(apiserver, "--standalone") as operator:
        try:
            create_nodes(api, nodes, selector)
            for agent in agents:
                agent.start()
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Lockspace",
                "metadata": {"name": name},
                "spec": {
                    "path": f"lockspaces/{name}",
                    "ioTimeoutSeconds": N,
                    "watchdogFireTimeoutSeconds": W,
                    "nodeSelector": {"matchLabels": selector},
                    "autoDiskLeases": {"enabled": True, "directory": "leases"},
                },
            }
            started = time.monotonic()
            client.CustomObjectsApi(api).create_cluster_custom_object(
                GROUP, VERSION, "lockspaces", body
            )
            wait_for(
                _all_live(cluster),
                ALL_LIVE_TIMEOUT,
                "every node's HostId Live",
                describe=lambda: {n: o.get("status") for n, o in cluster.hostids().items()},
            )
            cluster.all_live_seconds = time.monotonic() - started
            print(f"\nall 3 HostIds Live {cluster.all_live_seconds:.1f} s after Lockspace creation")
            yield cluster
            failed = False
        finally:
            for holder in cluster.holders:
                with contextlib.suppress(ProcessLookupError):
                    holder.kill()
                holder.wait()
            for agent in agents:
                agent.stop()
                if failed:
                    print(f"--- agent {agent.node} ---\n{agent.log()[-4000:]}")
            for item in cluster.objects("diskleases"):
                if item["spec"]["lockspace"] == name:
                    with contextlib.suppress(client.exceptions.ApiException):
                        client.CustomObjectsApi(api).delete_cluster_custom_object(
                            GROUP, VERSION, "diskleases", item["metadata"]["name"]
                        )
            operator.stop()
            delete_nodes(api, nodes)
            remove_lockspace(api, name)
            shutil.rmtree(shared, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


def test_each_node_gets_an_id_exactly_one_formats_and_all_join(cluster: Cluster):
    ids = {node: obj["spec"]["hostId"] for node, obj in cluster.hostids().items()}
    assert sorted(ids.values()) == [1, 2, 3]
    status = cluster.get("lockspaces", cluster.name)["status"]
    assert status["formatted"] is True and status["formattedBy"] in ids
    assert "formatRequest" not in status
    formatters = [a.node for a in cluster.agents if "formatted lockspace" in a.log()]
    assert formatters == [status["formattedBy"]]
    assert not any("found already formatted" in a.log() for a in cluster.agents)
    for agent in cluster.agents:
        hid = cluster.hostids()[agent.node]["status"]
        assert hid["generation"] >= 1 and hid["observedBy"] == agent.node and hid["lastRenewal"]
        joined = next(c for c in hid["conditions"] if c["type"] == "Joined")
        assert joined["status"] == "True"
        assert agent.get("/readyz") == (200, {"ready": True, "waiting": []})
    assert cluster.all_live_seconds < ALL_LIVE_TIMEOUT


def _holder(cluster: Cluster, lease: str):
    def check() -> dict[str, Any] | None:
        status = cluster.get("diskleases", lease).get("status") or {}
        return status if status.get("phase") else None

    return check


def test_disklease_shows_the_holder_and_follows_the_lease(cluster: Cluster):
    a, b = cluster.agents[0], cluster.agents[1]
    ids = {node: obj["spec"]["hostId"] for node, obj in cluster.hostids().items()}
    spec = cluster.resource_lease("vm1-disk", "vm1-disk.lease")
    lease = cluster.disklease("vm1-disk", "vm1-disk.lease")

    t = time.monotonic()
    first = a.hold(spec, "vm1")
    cluster.holders.append(first)
    held = wait_for(
        lambda: (s := _holder(cluster, lease)()) and s.get("phase") == "Held" and s,
        LEASE_TIMEOUT,
        f"{lease} held by {a.node}",
        describe=lambda: cluster.get("diskleases", lease).get("status"),
    )
    timings = {"acquired": time.monotonic() - t}
    assert held["holder"]["node"] == a.node
    assert held["holder"]["hostId"] == ids[a.node]
    assert held["holder"]["pid"] == first.pid
    assert held["holder"]["process"] == "vm1"
    table = cluster.server.kubectl("get", "disklease", lease).stdout
    print(f"\n{table}")
    assert a.node in table and "Held" in table

    t = time.monotonic()
    cluster.kill(first)
    wait_for(
        lambda: (s := _holder(cluster, lease)()) and s.get("phase") == "Free",
        LEASE_TIMEOUT,
        f"{lease} released after its holder was killed",
    )

    timings["released"] = time.monotonic() - t
    t = time.monotonic()
    second = b.hold(spec, "vm1")
    cluster.holders.append(second)
    moved = wait_for(
        lambda: (s := _holder(cluster, lease)()) and s.get("phase") == "Held" and s,
        LEASE_TIMEOUT,
        f"{lease} held by {b.node}",
        describe=lambda: cluster.get("diskleases", lease).get("status"),
    )
    timings["moved"] = time.monotonic() - t
    print(
        "\nDiskLease status caught up (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )
    assert moved["holder"]["node"] == b.node and moved["holder"]["hostId"] == ids[b.node]
    assert moved["holder"]["pid"] == second.pid
    assert moved["lver"] > held["lver"]
    table = cluster.server.kubectl("get", "disklease", lease, "-o", "wide").stdout
    print(f"\n{table}")
    assert b.node in table and a.node not in table
    cluster.kill(second)


def test_a_sanlock_client_lease_is_shown_and_a_refusal_names_its_holder(cluster: Cluster):
    """Leases taken through ``--sanlock-api`` (python-sanlock, as VDSM or libvirt's lock driver
    take them) are the agent's leases like any other: the DiskLease names node, host_id and
    the client's pid, and goes Free when the client exits. A client on another node gets only
    sanlock's -243; that node's agent says who holds the lease (events and log)."""
    a, c = cluster.agents[0], cluster.agents[2]
    ids = {node: obj["spec"]["hostId"] for node, obj in cluster.hostids().items()}
    cluster.resource_lease("vdsm-disk", "vdsm-disk.lease")
    path = cluster.shared / "vdsm-disk.lease"
    lease = cluster.disklease("vdsm-disk", "vdsm-disk.lease")

    first = a.sanlock_hold(cluster.name, "vdsm-disk", path)
    cluster.holders.append(first)
    assert first.stdout is not None and first.stdout.readline().strip() == "held"
    held = wait_for(
        lambda: (s := _holder(cluster, lease)()) and s.get("phase") == "Held" and s,
        LEASE_TIMEOUT,
        f"{lease} held by {a.node} through its sanlock API",
        describe=lambda: cluster.get("diskleases", lease).get("status"),
    )
    assert held["holder"]["node"] == a.node and held["holder"]["hostId"] == ids[a.node]
    assert held["holder"]["pid"] == first.pid

    second = c.sanlock_hold(cluster.name, "vdsm-disk", path)
    cluster.holders.append(second)
    out, _ = second.communicate(timeout=60)
    assert out.strip() == "-243"  # SANLK_ACQUIRE_IDLIVE (python-sanlock keeps the sign)
    [refused] = [e for e in c.events() if e["event"] == "refused"]
    assert refused["lease"] == f"{cluster.name}:vdsm-disk" and refused["code"] == -243
    assert f"held by host {ids[a.node]}" in refused["reason"]
    assert f"held by host {ids[a.node]}" in c.log()

    cluster.kill(first)
    wait_for(
        lambda: (s := _holder(cluster, lease)()) and s.get("phase") == "Free",
        LEASE_TIMEOUT,
        f"{lease} Free after its sanlock client was killed",
    )


def test_an_automatic_disk_lease_gets_its_disklease(cluster: Cluster):
    c = cluster.agents[2]
    resource = disk_resource_name("/var/lib/libvirt/images/web1.qcow2")
    spec = cluster.resource_lease(resource, f"leases/{resource}")
    holder = c.hold(spec, "web1")
    cluster.holders.append(holder)
    lease = f"{cluster.name}.{resource}"

    def created() -> dict[str, Any] | None:
        items = [i for i in cluster.objects("diskleases") if i["metadata"]["name"] == lease]
        return items[0] if items and (items[0].get("status") or {}).get("phase") else None

    obj = wait_for(created, LEASE_TIMEOUT, f"the automatic DiskLease {lease}")
    assert obj["metadata"]["labels"][f"{GROUP}/auto"] == "true"
    assert obj["spec"]["lease"] == {"path": f"leases/{resource}", "offset": 0}
    assert obj["status"]["holder"]["node"] == c.node
    cluster.kill(holder)


def test_deleting_the_lockspace_makes_every_agent_leave_then_it_goes(cluster: Cluster):
    """Runs last (it ends the module's lockspace): the agents leave once no lease is held and
    say Free; the operator then frees the ids after the safe time (8N + W = 18 s) and lets the
    Lockspace go."""
    for holder in cluster.holders:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        holder.wait()
    started = time.monotonic()
    client.CustomObjectsApi(cluster.api).delete_cluster_custom_object(
        GROUP, VERSION, "lockspaces", cluster.name
    )
    wait_for(
        lambda: all(
            (o.get("status") or {}).get("state") == "Free" for o in cluster.hostids().values()
        ),
        LEASE_TIMEOUT,
        "every HostId Free after the agents left",
        describe=lambda: {
            n: (o.get("status") or {}).get("state") for n, o in cluster.hostids().items()
        },
    )
    left = time.monotonic() - started
    for agent in cluster.agents:
        assert agent.get("/readyz")[0] == 200  # nothing wanted, nothing missing
        assert "left lockspace" in agent.log()

    def gone() -> bool:
        try:
            cluster.get("lockspaces", cluster.name)
        except client.exceptions.ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, SAFE_SECONDS + 30, "the Lockspace to be deleted once its ids were released")
    print(
        f"\nagents left {left:.1f} s after the delete; Lockspace gone after "
        f"{time.monotonic() - started:.1f} s"
    )
