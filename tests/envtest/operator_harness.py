"""Driving vmlease-operator against the envtest API server: CRDs, Nodes, operator processes.

Shared by ``test_operator.py`` and ``bench/operator_alloc.py``. The operator runs as a real
subprocess (``python -m vmlease_operator.main``) with the server's KUBECONFIG: the way it runs in
a pod, and immune to in-process runner hangs (nolar/kopf#865).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import waiting
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from vmlease_api import GROUP, VERSION

from .apiserver import REPO, APIServer

T = TypeVar("T")
CRDS = REPO / "crds"


def apply_crds(server: APIServer) -> None:
    """kubectl apply the generated CRDs and wait until the server serves them."""
    server.kubectl("apply", "-f", str(CRDS))
    server.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/lockspaces.vmlease.io", "crd/hostids.vmlease.io", "crd/diskleases.vmlease.io",
        "crd/vmleaseremediationtemplates.vmlease.io", "crd/vmleaseremediations.vmlease.io",
        "crd/clusterkopfpeerings.kopf.dev",
    )  # fmt: skip


def api_client(server: APIServer, pool: int = 32) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(server.kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool
    return client.ApiClient(configuration)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, every: float = 0.25, describe=None):
    """``waiting.wait_for``, 0.25 s apart by default: checks read the API server."""
    return waiting.wait_for(check, timeout, what, every, describe)


class Operator:
    """One ``vmlease-operator`` process; a context manager that always stops it."""

    def __init__(self, server: APIServer, *args: str, name: str = "operator") -> None:
        self.server = server
        self.liveness_port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix=f"vmlease-{name}-", suffix=".log")[1])
        self.argv = [
            sys.executable, "-m", "vmlease_operator.main", "--metrics-port", "0",
            "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz", *args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env={**self.server.env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def healthy(self) -> bool:
        code, _ = _http_get(f"http://127.0.0.1:{self.liveness_port}/healthz")
        return code == 200

    def wait_healthy(self, timeout: float = 60) -> None:
        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log_tail()}")
            return self.healthy()

        wait_for(check, timeout, "the operator's liveness endpoint")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Operator:
        self.start()
        self.wait_healthy()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if exc[0] is not None:
            print(f"--- operator log ({self.log_path}) ---\n{self.log_tail(80)}")
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)


def _http_get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def create_nodes(
    api: client.ApiClient, names: Iterable[str], labels: dict[str, str], workers: int = 20
) -> None:
    """Create Node objects concurrently (no kubelet: they are just API objects)."""
    core = client.CoreV1Api(api)

    def create(name: str) -> None:
        core.create_node(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(create, names))


def delete_nodes(api: client.ApiClient, names: Iterable[str], workers: int = 20) -> None:
    core = client.CoreV1Api(api)

    def delete(name: str) -> None:
        with contextlib.suppress(ApiException):
            core.delete_node(name)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(delete, names))


def create_lockspace(
    api: client.ApiClient, name: str, selector: dict[str, str], **spec: Any
) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Lockspace",
        "metadata": {"name": name},
        "spec": {"path": f"lockspaces/{name}", "nodeSelector": {"matchLabels": selector}, **spec},
    }
    client.CustomObjectsApi(api).create_cluster_custom_object(GROUP, VERSION, "lockspaces", body)


def hostids(api: client.ApiClient, lockspace: str) -> list[dict[str, Any]]:
    return client.CustomObjectsApi(api).list_cluster_custom_object(
        GROUP, VERSION, "hostids", label_selector=f"{GROUP}/lockspace={lockspace}"
    )["items"]


def ids_by_node(api: client.ApiClient, lockspace: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for item in hostids(api, lockspace):
        if not item["metadata"].get("deletionTimestamp"):
            out.setdefault(item["spec"]["nodeName"], []).append(item["spec"]["hostId"])
    return {node: sorted(ids) for node, ids in out.items()}


def remove_lockspace(api: client.ApiClient, name: str) -> None:
    """Test teardown without an operator: strip finalizers, delete the Lockspace and its HostIds."""
    objects = client.CustomObjectsApi(api)
    strip = {"metadata": {"finalizers": None}}
    for item in hostids(api, name):
        with contextlib.suppress(ApiException):
            objects.patch_cluster_custom_object(
                GROUP, VERSION, "hostids", item["metadata"]["name"], strip
            )
            objects.delete_cluster_custom_object(
                GROUP, VERSION, "hostids", item["metadata"]["name"]
            )
    with contextlib.suppress(ApiException):
        objects.patch_cluster_custom_object(GROUP, VERSION, "lockspaces", name, strip)
        objects.delete_cluster_custom_object(GROUP, VERSION, "lockspaces", name)


@contextlib.contextmanager
def lockspace_with_nodes(
    server: APIServer, name: str, nodes: list[str], **spec: Any
) -> Iterator[client.ApiClient]:
    """A Lockspace selecting a label only this test's Nodes carry, removed afterwards."""
    api = api_client(server)
    selector = {f"envtest.vmlease.io/{name}": "yes"}
    create_lockspace(api, name, selector, **spec)
    create_nodes(api, nodes, selector)
    try:
        yield api
    finally:
        delete_nodes(api, nodes)
        remove_lockspace(api, name)
