"""The envtest control plane itself: it answers, stores objects, serves CRDs, and authorizes.

The authorization tests matter most: later RBAC tests of the chart only mean something if an
identity without a grant really gets 403 and gets through once a RoleBinding grants it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apiserver import APIServer, EnvtestError, find_tools

pytestmark = pytest.mark.envtest

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.envtest.vmlease.io}
spec:
  group: envtest.vmlease.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer, minimum: 1}
"""


@pytest.fixture
def namespace(apiserver: APIServer) -> Iterator[str]:
    """A fresh namespace; deleted afterwards (it stays Terminating: no namespace controller)."""
    name = f"t-{secrets.token_hex(4)}"
    apiserver.kubectl("create", "namespace", name)
    yield name
    apiserver.kubectl("delete", "namespace", name, "--wait=false")


def whoami(apiserver: APIServer, token: str) -> dict:
    out = apiserver.kubectl("auth", "whoami", "-o", "json", token=token).stdout
    return json.loads(out)["status"]["userInfo"]


def test_missing_tools_are_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMLEASE_TOOLS_DIR", str(tmp_path))
    tools, reason = find_tools()
    assert tools is None
    assert reason is not None and "make envtest-tools" in reason and str(tmp_path) in reason


def test_server_is_ready_and_reports_the_pinned_version(apiserver: APIServer) -> None:
    assert apiserver.get("/readyz") == (200, "ok")
    version = json.loads(apiserver.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == f"v{apiserver.tools.k8s_version}"
    assert version["clientVersion"]["gitVersion"] == f"v{apiserver.tools.k8s_version}"


def test_kubeconfig_env_reaches_the_server(apiserver: APIServer) -> None:
    result = subprocess.run(
        [str(apiserver.tools.kubectl), "get", "--raw", "/version"],
        env=apiserver.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["gitVersion"] == f"v{apiserver.tools.k8s_version}"


def test_namespace_round_trip(apiserver: APIServer, namespace: str) -> None:
    out = apiserver.kubectl("get", "namespace", namespace, "-o", "json").stdout
    assert json.loads(out)["metadata"]["name"] == namespace


def test_crd_becomes_established_and_validates(apiserver: APIServer, namespace: str) -> None:
    apiserver.kubectl("apply", "-f", "-", input=CRD)
    try:
        apiserver.kubectl(
            "wait", "--for=condition=Established", "crd/widgets.envtest.vmlease.io", "--timeout=30s"
        )
        good = '{"apiVersion": "envtest.vmlease.io/v1", "kind": "Widget",'
        good += f' "metadata": {{"name": "w", "namespace": "{namespace}"}}, "spec": {{"size": 2}}}}'
        apiserver.kubectl("create", "-f", "-", input=good)
        got = apiserver.kubectl("get", "widget", "w", "-n", namespace, "-o", "json").stdout
        assert json.loads(got)["spec"] == {"size": 2}
        bad = apiserver.kubectl(
            "create", "-f", "-", input=good.replace('"size": 2', '"size": 0'), check=False
        )
        assert bad.returncode != 0 and "spec.size" in bad.stderr
    finally:
        apiserver.kubectl("delete", "crd", "widgets.envtest.vmlease.io", "--wait=false")


def test_wrong_token_is_unauthenticated(apiserver: APIServer) -> None:
    assert apiserver.get("/api/v1/namespaces", token="not-a-token")[0] == 401


def test_static_token_user_authenticates_without_rights(apiserver: APIServer) -> None:
    user = apiserver.users["envtest-user"]
    assert whoami(apiserver, user.token) == {
        "username": "envtest-user", "uid": "envtest-user", "groups": ["system:authenticated"]
    }  # fmt: skip
    assert whoami(apiserver, apiserver.token)["groups"] == [
        "system:masters",
        "system:authenticated",
    ]
    assert apiserver.get("/api/v1/namespaces", token=user.token)[0] == 403


def test_service_account_token_is_denied_until_a_rolebinding_allows(
    apiserver: APIServer, namespace: str
) -> None:
    apiserver.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = apiserver.service_account_token(namespace, "reader")
    assert whoami(apiserver, token)["username"] == f"system:serviceaccount:{namespace}:reader"

    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    status, body = apiserver.get(configmaps, token=token)
    assert status == 403, body
    assert json.loads(body)["reason"] == "Forbidden"
    denied = apiserver.kubectl("get", "configmaps", "-n", namespace, token=token, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr

    apiserver.kubectl(
        "create", "role", "read-cm", "-n", namespace, "--verb=get,list", "--resource=configmaps"
    )
    apiserver.kubectl(
        "create", "rolebinding", "read-cm", "-n", namespace, "--role=read-cm",
        f"--serviceaccount={namespace}:reader",
    )  # fmt: skip
    # The RBAC authorizer reads bindings from an informer cache: allow it a moment to see it.
    deadline = time.monotonic() + 10
    while (status := apiserver.get(configmaps, token=token)[0]) == 403:
        assert time.monotonic() < deadline, "RoleBinding never took effect"
        time.sleep(0.1)
    assert status == 200
    # The grant is exactly the Role: other namespaces and other resources stay forbidden.
    assert apiserver.get("/api/v1/namespaces/default/configmaps", token=token)[0] == 403
    assert apiserver.get(f"/api/v1/namespaces/{namespace}/secrets", token=token)[0] == 403


@pytest.mark.slow
def test_stop_leaves_no_process_and_no_files(apiserver: APIServer) -> None:
    """A second, private control plane (a few seconds): stop must reap both processes."""
    server = APIServer(apiserver.tools)
    with server:
        pids = server.pids
        assert len(pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not server.dir.exists()


def test_failed_start_cleans_up_and_says_why(apiserver: APIServer) -> None:
    broken = dataclasses.replace(apiserver.tools, kube_apiserver=Path("/bin/false"))
    server = APIServer(broken)
    with pytest.raises(EnvtestError, match="kube-apiserver exited with 1"):
        server.start()
    assert not server.pids
    assert not server.dir.exists()
