"""The kind cluster the e2e tests run against, as run.sh left it: kubectl and docker calls."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import waiting
from vmlease_agent.core.watchdog import read_state
from vmlease_agent.engine.clock import boottime
from vmlease_agent.sim.watchdog_harness import spawn_harness

T = TypeVar("T")
GROUP, VERSION = "vmlease.io", "v1alpha1"
#: The image the agent runs: it carries the ``vmlease`` command the "VM" pods use.
AGENT_IMAGE = "vmlease-agent:e2e"
#: Where the workers mount the shared directory (values-kind.yaml, kind-config.yaml).
SHARED = "/var/lib/vmlease/shared"


def pod(
    name: str, node: str, command: list[str], labels: dict[str, str], **spec: Any
) -> dict[str, Any]:
    """A one-container Pod pinned to ``node`` with the agent image (it carries ``vmlease``)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": AGENT_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "volumeMounts": spec.pop("mounts", []),
                }
            ],
            "volumes": spec.pop("volumes", []),
            **spec,
        },
    }


def holder(
    name: str, node: str, resource: str, labels: dict[str, str], retry: bool = False
) -> dict[str, Any]:
    """A "VM": acquire ``resource`` through the node's agent socket, then exec ``sleep``;
    ``retry``: until it gets it. hostPID, because the agent (hostPID itself) checks and signals
    holders by their host pid."""
    hold = ["vmlease", "client", "command", "-r", resource, "--owner", name, "-c", "sleep", "3600"]
    command = hold
    if retry:
        command = ["sh", "-c", "until " + " ".join(hold) + "; do sleep 1; done"]
    return pod(
        name,
        node,
        command,
        labels,
        hostPID=True,
        mounts=[{"name": "run", "mountPath": "/run/vmlease"}],
        volumes=[{"name": "run", "hostPath": {"path": "/run/vmlease", "type": "Directory"}}],
    )


def wait_for(check, timeout: float, what: str, every: float = 1.0, describe=None):
    """``waiting.wait_for``, 1 s apart by default: checks run kubectl on a kind cluster."""
    return waiting.wait_for(check, timeout, what, every, describe)


@dataclass
class Kind:
    """The running kind cluster: kubectl, docker, and the names run.sh chose."""

    cluster: str
    namespace: str
    kubectl_path: str
    shared_dir: str
    helm_path: str = "helm"
    release: str = "vmlease"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, *args], input=input, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def helm(self, command: str, *args: str) -> None:
        """``helm COMMAND`` on the release run.sh installed (``upgrade``: from this checkout's
        chart, keeping the values it was installed with, plus ``args``)."""
        chart = Path(__file__).resolve().parents[2] / "charts" / "vmlease"
        extra = [str(chart), "--reuse-values"] if command == "upgrade" else []
        result = subprocess.run(
            [self.helm_path, command, self.release, *extra, "-n", self.namespace, *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"helm {command} {' '.join(args)}: {result.stderr.strip()}")

    def run_pod(self, body: dict[str, Any]) -> str:
        """Create ``body`` in the release's namespace; returns its name."""
        body["metadata"]["namespace"] = self.namespace
        self.apply(body)
        return body["metadata"]["name"]

    def init_lease(self, node: str, lockspace: str, name: str, labels: dict[str, str]) -> str:
        """Create and format lease file ``leases/NAME.lease`` of ``lockspace`` from a pod on
        ``node``; returns the resource string ``LOCKSPACE:NAME:PATH:0``."""
        path = f"{SHARED}/leases/{name}.lease"
        resource = f"{lockspace}:{name}:{path}:0"
        init = pod(
            f"init-{name}-{secrets.token_hex(2)}",
            node,
            ["sh", "-c", f"mkdir -p {SHARED}/leases && truncate -s 1M {path} && "
             f"vmlease direct init -r {resource}"],
            labels,
            mounts=[{"name": "shared", "mountPath": SHARED}],
            volumes=[{"name": "shared", "hostPath": {"path": SHARED, "type": "Directory"}}],
        )  # fmt: skip
        pod_name = self.run_pod(init)
        wait_for(lambda: self.pod_phase(pod_name) == "Succeeded", 120, f"{name} init")
        return resource

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, body: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def docker(self, *args: str, check: bool = True) -> None:
        subprocess.run(["docker", *args], check=check, capture_output=True, timeout=120)

    def running(self, node: str) -> bool:
        out = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", node],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return out.stdout.strip() == "true"

    def workers(self) -> list[str]:
        nodes = self.get("nodes", "-l", "vmlease.io/vm-host=true")["items"]
        return sorted(n["metadata"]["name"] for n in nodes)

    def lockspace_exists(self, name: str) -> bool:
        result = self.kubectl("get", "lockspace", name, "--ignore-not-found", "-o", "name")
        return bool(result.stdout.strip())

    def hostids(self, lockspace: str) -> dict[str, dict[str, Any]]:
        items = self.get("hostids", "-l", f"{GROUP}/lockspace={lockspace}")["items"]
        return {i["spec"]["nodeName"]: i for i in items}

    def pod_phase(self, name: str) -> str | None:
        result = self.kubectl(
            "get", "pod", name, "-n", self.namespace, "-o", "jsonpath={.status.phase}", check=False
        )
        return result.stdout or None

    def logs(self, pod: str) -> str:
        return self.kubectl("logs", pod, "-n", self.namespace, check=False).stdout


def lease_dump(path: str) -> list[dict[str, Any]]:
    """``vmlease direct dump PATH`` from the host, parsed: one dict per record, with the
    ``name``, ``timestamp`` (the writer's monotonic seconds; kind nodes share the host's kernel,
    so it is this clock too), ``owner`` and ``generation``."""
    vmlease = Path(sys.executable).parent / "vmlease"
    out = subprocess.run(
        [str(vmlease), "direct", "dump", path], capture_output=True, text=True, timeout=30
    )
    rows = []
    for line in out.stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 6:
            rows.append(
                {"name": parts[2], "timestamp": int(parts[3]), "owner": int(parts[4]),
                 "generation": int(parts[5]), "lver": int(parts[6]) if len(parts) > 6 else None}
            )  # fmt: skip
    return rows


class Watchdogs:
    """The workers' watchdog "hardware": for each worker, a harness on the host supervising the
    file-backed device the agent feeds (the worker's own host directory, mounted into the node,
    values-kind.yaml), which resets the node with ``docker kill`` once it is starved. A harness
    exits after it fired; ``start`` gives a restarted node a new one."""

    def __init__(self, cluster: str, root: str) -> None:
        self.cluster, self.root = cluster, Path(root)
        self.harnesses: dict[str, subprocess.Popen] = {}

    def dir(self, node: str) -> Path:
        return self.root / node.removeprefix(f"{self.cluster}-")

    def start(self, node: str, reboot: bool = False) -> None:
        """Supervise ``node``'s device. ``reboot``: the node was reset and boots again, and a
        reset disarms a watchdog (a device file still armed from before would fire at once)."""
        if reboot:
            (self.dir(node) / "device").unlink(missing_ok=True)
        self.harnesses[node] = spawn_harness(
            self.dir(node) / "device", [], self.dir(node) / "events", f"docker kill {node}"
        )

    def armed(self, node: str) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return read_state(str(self.dir(node) / "device")).armed
        return False

    @contextlib.contextmanager
    def feed_gaps(self, nodes: list[str]) -> Iterator[dict[str, float]]:
        """While inside: each node's longest time without a feed of its armed device, read from
        its device file every 0.2 s (the map is filled in as it goes)."""
        gaps = {node: 0.0 for node in nodes}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                for node in nodes:
                    with contextlib.suppress(OSError, ValueError):
                        state = read_state(str(self.dir(node) / "device"))
                        if state.armed:
                            gaps[node] = max(gaps[node], boottime() - state.fed_at)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield gaps
        finally:
            stop.set()
            sampler.join()

    def fired(self, node: str) -> list[dict[str, Any]]:
        events = self.dir(node) / "events"
        if not events.exists():
            return []
        return [json.loads(line) for line in events.read_text().splitlines()]

    def stop(self) -> None:
        for harness in self.harnesses.values():
            harness.terminate()
            harness.wait()
