"""The kind cluster the e2e tests run against, as run.sh left it: kubectl and docker calls."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any, TypeVar

import waiting

T = TypeVar("T")
GROUP, VERSION = "vmlease.io", "v1alpha1"


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

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, *args], input=input, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, body: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def docker(self, *args: str) -> None:
        subprocess.run(["docker", *args], check=True, capture_output=True, timeout=120)

    def workers(self) -> list[str]:
        nodes = self.get("nodes", "-l", "vmlease.io/vm-host=true")["items"]
        return sorted(n["metadata"]["name"] for n in nodes)

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
