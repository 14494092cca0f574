"""The Helm chart against a real kube-apiserver: lint, render, server-side dry run, and RBAC.

* ``helm lint --strict`` and ``helm template`` of the defaults and the variants: the
  shared-volume ones in ``charts/vmlease/ci/`` (nfs, existing PVC, hostPath with a Lockspace and
  ServiceMonitors) and the kind e2e tier's values, each applied with ``kubectl apply
  --server-side --dry-run=server``: the API server validates every object (schemas, CRDs,
  RBAC objects) without keeping any.
* The schema refuses unknown keys and a missing setting fails the render by name.
* The RBAC, for real: ``helm install`` into a namespace, then ``vmlease-operator`` and two
  ``vmlease-agent --kubernetes`` processes run *as the chart runs them* (the container args
  of the rendered Deployment and DaemonSet, with only ports and paths swapped for local ones),
  authenticated by their ServiceAccounts' own tokens (TokenRequest API). They must do their
  work (HostIds allocated, lockspace formatted, every node Live, an automatic DiskLease created
  and showing its holder, Events posted) without one 403, and ``kubectl auth can-i`` as those
  ServiceAccounts must say no to what they do not need.

No kubelet runs here, so the Deployment and DaemonSet never get pods: their objects are checked
by the server, the processes they would run are run here directly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from vmlease_api import GROUP, VERSION
from vmlease_api.naming import disk_resource_name

from .apiserver import REPO, APIServer
from .operator_harness import (
    Operator,
    api_client,
    apply_crds,
    create_nodes,
    delete_nodes,
    remove_lockspace,
    wait_for,
)

pytestmark = pytest.mark.envtest

CHART = REPO / "charts" / "vmlease"
#: Where the dry runs and the installed release live (created with the label NOTES asks for).
NAMESPACE = "vmlease-chart"
#: io_timeout 1 s and a 10 s watchdog (the schema's minimum) keep a join at about 2 s.
N, W = 1, 10
#: Lockspace created → every HostId Live: allocation at once, formatRequest on the operator's
#: next 10 s pass, then format, join (2N) and a status write.
ALL_LIVE_TIMEOUT = 60

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "nfs": ["-f", str(CHART / "ci" / "nfs-values.yaml")],
    "pvc": ["-f", str(CHART / "ci" / "pvc-values.yaml")],
    "hostpath": ["-f", str(CHART / "ci" / "hostpath-values.yaml")],
    # What the kind e2e tier installs: checked here too, where no Docker is needed.
    "kind": ["-f", str(REPO / "tests" / "e2e" / "values-kind.yaml")],
}

#: A stand-in for the Prometheus Operator's ServiceMonitor CRD (not available here), so the
#: ServiceMonitor variant can be dry-run too; its own schema is therefore not checked.
SERVICEMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


# --- helpers ---------------------------------------------------------------------------------


def helm(server: APIServer, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The pinned helm, talking to the envtest server as the admin (for install/uninstall)."""
    env = {**server.env, "HELM_CACHE_HOME": str(server.dir / "helm-cache")}
    env["HELM_CONFIG_HOME"] = str(server.dir / "helm-config")
    env["HELM_DATA_HOME"] = str(server.dir / "helm-data")
    result = subprocess.run(
        [str(server.tools.helm), *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def render(server: APIServer, *args: str, release: str = "vml") -> str:
    """``helm template`` for the envtest server's Kubernetes version (a helm built from source
    defaults to v1.20, below the chart's kubeVersion)."""
    return helm(
        server, "template", release, str(CHART), "--namespace", NAMESPACE,
        "--kube-version", server.tools.k8s_version, *args,
    ).stdout  # fmt: skip


def documents(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (workload,) = by_kind(docs, kind)
    (one,) = workload["spec"]["template"]["spec"]["containers"]
    return one


def swap_args(args: list[str], **values: str) -> list[str]:
    """The chart's ``--flag=value`` args with some values replaced (underscores for dashes);
    every replaced flag must be in the chart, so a renamed flag fails here, not in a cluster."""
    out, seen = [], set()
    for arg in args:
        flag, eq, _ = arg.partition("=")
        key = flag.lstrip("-").replace("-", "_")
        if eq and key in values:
            out.append(f"{flag}={values[key]}")
            seen.add(key)
        else:
            out.append(arg)
    missing = set(values) - seen
    assert not missing, f"the chart no longer passes {sorted(missing)} in {args}"
    return out


def kubeconfig_for(server: APIServer, token: str, path: Path) -> Path:
    """The admin kubeconfig with a ServiceAccount's token instead of the admin's."""
    config = json.loads(server.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "sa"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def can_i(server: APIServer, token: str, *args: str) -> bool:
    """``kubectl auth can-i`` as the token's owner (the real authenticator and authorizer)."""
    result = server.kubectl("auth", "can-i", *args, token=token, check=False)
    if result.returncode not in (0, 1):
        raise AssertionError(f"kubectl auth can-i {args}: {result.stderr}")
    return result.returncode == 0


@functools.cache
def help_text(module: str) -> str:
    """``--help`` of an entry point: the flags it accepts."""
    argv = [sys.executable, "-m", module, "--help"]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def unknown_flags(args: list[str], module: str) -> list[str]:
    """Flags in a container's args that the entry point does not know (a renamed flag would
    crash-loop every pod of a real cluster)."""
    known = set(re.findall(r"--[a-z][-a-z]*", help_text(module)))
    return [a for a in args if a.startswith("--") and a.split("=")[0] not in known]


def permission_problems(log: str) -> list[str]:
    """Log lines reporting a denied request: kopf's APIForbiddenError and "Not enough
    permissions" warnings, the agent's "refused the agent (403: ...)". (Not a bare "403": uids
    and lease hashes contain it.)"""
    words = ("forbidden", "status=403", "(403", "not enough permissions", "refused the agent")
    return [line for line in log.splitlines() if any(w in line.lower() for w in words)]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(apiserver: APIServer) -> APIServer:
    apply_crds(apiserver)
    apiserver.kubectl("apply", "-f", "-", input=json.dumps(SERVICEMONITOR_CRD))
    apiserver.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
    )  # fmt: skip
    if apiserver.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        apiserver.kubectl("create", "namespace", NAMESPACE)
        # No controller-manager makes it; Pods (the e2e workloads' dry run) need it.
        apiserver.kubectl("create", "serviceaccount", "default", "-n", NAMESPACE)
    privileged = "pod-security.kubernetes.io/enforce=privileged"
    apiserver.kubectl("label", "--overwrite", "namespace", NAMESPACE, privileged)
    return apiserver


# --- lint, render, dry run -------------------------------------------------------------------


def test_helm_lint_strict(server: APIServer):
    for extra in [[], *(args for args in VARIANTS.values() if args)]:
        result = helm(server, "lint", "--strict", str(CHART), *extra)
        assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendered_chart_passes_a_server_side_dry_run(server: APIServer, variant: str):
    manifest = render(server, *VARIANTS[variant])
    docs = documents(manifest)
    result = server.kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-f", "-",
        input=manifest,
    )  # fmt: skip
    applied = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(applied) == len(docs), result.stdout

    agent = container(docs, "DaemonSet")
    assert unknown_flags(agent["args"], "vmlease_agent.daemon.main") == []
    assert unknown_flags(container(docs, "Deployment")["args"], "vmlease_operator.main") == []
    (daemonset,) = by_kind(docs, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert pod["hostPID"] is True and agent["securityContext"]["privileged"] is True
    assert agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert volumes["run"]["hostPath"] == {"path": "/run/vmlease", "type": "DirectoryOrCreate"}
    operator = by_kind(docs, "Deployment")[0]
    assert operator["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True

    shared = volumes["shared"]
    if variant == "nfs":
        assert shared["nfs"] == {"server": "nfs.example.internal", "path": "/exports/vmlease"}
        assert "--libvirt=qemu:///system" in agent["args"]
        assert "--libvirt-config=/etc/vmlease/libvirt.conf" in agent["args"]
        assert mounts["libvirt-config"] == {
            "name": "libvirt-config",
            "mountPath": "/etc/vmlease",
            "readOnly": True,
        }
    elif variant == "pvc":
        assert shared["persistentVolumeClaim"] == {"claimName": "vmlease-shared"}
    elif variant == "kind":
        # the file-backed device of the host-side harness: its directory comes from the host
        assert "--watchdog=file:/var/lib/vmlease-e2e/watchdog/device" in agent["args"]
        assert volumes["watchdog"]["hostPath"] == {
            "path": "/var/lib/vmlease-e2e/watchdog",
            "type": "DirectoryOrCreate",
        }
        assert mounts["watchdog"]["mountPath"] == "/var/lib/vmlease-e2e/watchdog"
        assert pod["nodeSelector"] == {"vmlease.io/vm-host": "true"}
        assert [d["metadata"]["name"] for d in by_kind(docs, "Lockspace")] == ["e2e"]
        assert agent["imagePullPolicy"] == "Never" and agent["image"] == "vmlease-agent:e2e"
    elif variant == "hostpath":
        assert shared["hostPath"] == {"path": "/srv/vmlease", "type": "Directory"}
        assert mounts["shared"]["mountPropagation"] == "HostToContainer"
        assert volumes["watchdog"]["hostPath"]["path"] == "/dev/watchdog1"
        assert "libvirt-run" not in volumes and "annotations" not in daemonset["spec"]["template"]
        assert [d["metadata"]["name"] for d in by_kind(docs, "Lockspace")] == ["vms"]
        assert len(by_kind(docs, "ServiceMonitor")) == 2
        assert by_kind(docs, "PodDisruptionBudget") == []  # one replica: no PDB
    else:
        assert shared["hostPath"]["path"] == "/var/lib/vmlease/shared"
        assert volumes["watchdog"]["hostPath"] == {"path": "/dev/watchdog", "type": "CharDevice"}
        assert {"libvirt-run", "libvirt-hooks"} <= set(volumes)
        assert "libvirt-config" not in volumes and not any("--libvirt" in a for a in agent["args"])
        assert by_kind(docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
        assert operator["spec"]["replicas"] == 2
        annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "8081"


def test_e2e_workload_pods_pass_a_server_side_dry_run(server: APIServer):
    """The kind tier's lease-holding Pods (hostPID, the agent's socket from a hostPath) are
    valid objects in a namespace labelled as NOTES.txt says: checked here, without Docker."""
    from e2e import test_kind

    for body in (test_kind.vm("vm1", "node-a"), test_kind.vm("vm1", "node-b", retry=True)):
        body["metadata"]["namespace"] = NAMESPACE
        server.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(body))


def test_values_are_checked_by_name(server: APIServer):
    cases = {
        ("--set", "agent.sharedVolume.tpye=nfs"): "additional properties 'tpye' not allowed",
        ("--set", "agent.updateStrategy.rollingUpdate.maxSurge=1"): "'maxSurge' not allowed",
        ("--set", "agent.sharedVolume.type=nfs"): "agent.sharedVolume.nfs.server is required",
        ("--set", "agent.sharedVolume.type=existingClaim"): "existingClaim.name is required",
        ("--set", "agent.watchdog.device=/tmp/wd"): "/agent/watchdog/device",
    }
    for args, message in cases.items():
        result = helm(
            server, "template", "vml", str(CHART), "--kube-version", server.tools.k8s_version,
            *args, check=False,
        )  # fmt: skip
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)


def test_node_fencing_grants_the_operator_patch_on_nodes_and_nothing_else(server: APIServer):
    def node_verbs(*args: str) -> list[str]:
        docs = documents(render(server, *args))
        (role,) = [
            d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("operator")
        ]
        return sorted(v for r in role["rules"] if "nodes" in r["resources"] for v in r["verbs"])

    assert node_verbs() == ["list", "watch"]
    assert node_verbs("--set", "nodeFencing.enabled=true") == ["list", "patch", "watch"]
    refused = helm(
        server, "template", "vml", str(CHART), "--kube-version", server.tools.k8s_version,
        "--set", "lockspaces[0].name=ls", "--set", "lockspaces[0].spec.path=ls",
        "--set", "lockspaces[0].spec.nodeFencing=true", check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "set nodeFencing.enabled=true" in refused.stderr


def test_every_alert_reads_exported_metrics_and_has_a_runbook(server: APIServer):
    """A PrometheusRule whose expression names a metric nobody exports never fires: each
    metric must be one the agent or the operator defines, and each alert must have its
    README section (the alert's runbook_url points there)."""
    rule_values = ("metrics.prometheusRule.enabled=true",
                   "metrics.prometheusRule.runbookBaseURL=https://r/README.md")  # fmt: skip
    docs = documents(render(server, "--set", rule_values[0], "--set", rule_values[1]))
    (rule,) = by_kind(docs, "PrometheusRule")
    exported = (REPO / "node-agent/vmlease_agent/daemon/http.py").read_text() + (
        REPO / "operator/vmlease_operator/metrics.py"
    ).read_text()
    readme = (REPO / "README.md").read_text()
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(alerts) >= 6
    for alert in alerts:
        for metric in re.findall(r"\bvmlease_[a-z_]+\b", alert["expr"]):
            assert f'"{metric}"' in exported, f"{alert['alert']}: {metric} is not exported"
        assert f"#### Runbook: {alert['alert']}\n" in readme, alert["alert"]
        anchor = f"runbook-{alert['alert'].lower()}"
        assert alert["annotations"]["runbook_url"] == f"https://r/README.md#{anchor}"
    assert not by_kind(documents(render(server)), "PrometheusRule")  # off by default


# --- the installed release and its ServiceAccounts -------------------------------------------


@dataclass
class Release:
    name: str
    peering: str
    manifest: list[dict[str, Any]]
    notes: str
    operator_sa: str
    agent_sa: str
    operator_token: str
    agent_token: str


@pytest.fixture(scope="module")
def release(server: APIServer) -> Iterator[Release]:
    """``helm install`` of the defaults (plus a peering name of its own, so no other test's
    operator shares it): ServiceAccounts, ClusterRoles, bindings, the peering object are real."""
    name, peering = f"rb{secrets.token_hex(2)}", f"vmlease-{secrets.token_hex(3)}"
    result = helm(
        server, "install", name, str(CHART), "--namespace", NAMESPACE,
        "--set", f"operator.peeringName={peering}",
    )  # fmt: skip
    manifest = documents(helm(server, "get", "manifest", name, "-n", NAMESPACE).stdout)
    operator_sa, agent_sa = f"{name}-vmlease-operator", f"{name}-vmlease-agent"
    try:
        yield Release(
            name=name,
            peering=peering,
            manifest=manifest,
            notes=result.stdout,
            operator_sa=operator_sa,
            agent_sa=agent_sa,
            operator_token=server.service_account_token(NAMESPACE, operator_sa),
            agent_token=server.service_account_token(NAMESPACE, agent_sa),
        )
    finally:
        # --no-hooks: the pre-delete hook is a Job, and no kubelet runs it here (kind does)
        helm(server, "uninstall", name, "-n", NAMESPACE, "--no-hooks", check=False)


def test_helm_install_prints_what_to_do_next(server: APIServer, release: Release):
    notes = release.notes
    assert f"kubectl label namespace {NAMESPACE} pod-security.kubernetes.io/enforce=privileged" in (
        notes
    )
    assert "kind: Lockspace" in notes and "watchdogFireTimeoutSeconds: 60" in notes
    assert "kubectl get lockspaces,hostids" in notes
    assert "modprobe softdog" in notes
    assert "applies the new version's in a pre-upgrade hook Job" in notes
    off = helm(
        server, "install", "notes", str(CHART), "-n", NAMESPACE, "--dry-run=server",
        "--set", "crds.upgrade=false",
    ).stdout  # fmt: skip
    assert "kubectl apply --server-side -f <chart>/crds/" in off.partition("NOTES:")[2]
    kinds = sorted({d["kind"] for d in release.manifest})
    assert kinds == sorted(
        [
            "ClusterKopfPeering", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Deployment",
            "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount",
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
        ]
    )  # fmt: skip


# (verb, resource[, extra kubectl args]) → whether the ServiceAccount may. The "no" rows are the
# point: each is something the component's code never does.
OPERATOR_CAN = [
    ("list", "lockspaces.vmlease.io"), ("watch", "lockspaces.vmlease.io"),
    ("patch", "lockspaces.vmlease.io"), ("patch", "lockspaces.vmlease.io", "--subresource=status"),
    ("create", "hostids.vmlease.io"), ("delete", "hostids.vmlease.io"),
    ("patch", "hostids.vmlease.io"), ("patch", "diskleases.vmlease.io"),
    ("list", "nodes"), ("watch", "nodes"), ("create", "events", "-n", "default"),
    ("list", "clusterkopfpeerings.kopf.dev"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("list", "vmleaseremediations.vmlease.io"), ("watch", "vmleaseremediations.vmlease.io"),
]  # fmt: skip
OPERATOR_CANNOT = [
    # remediations: their status only with nodeFencing.remediation.enabled, never the objects
    ("patch", "vmleaseremediations.vmlease.io", "--subresource=status", "-n", NAMESPACE),
    ("create", "vmleaseremediations.vmlease.io", "-n", NAMESPACE),
    ("delete", "vmleaseremediations.vmlease.io", "-n", NAMESPACE),
    ("delete", "nodes"), ("patch", "nodes"), ("get", "nodes"),
    ("get", "secrets", "-A"), ("list", "secrets", "-n", NAMESPACE), ("create", "pods", "-A"),
    ("create", "lockspaces.vmlease.io"), ("delete", "lockspaces.vmlease.io"),
    ("update", "lockspaces.vmlease.io"),
    ("patch", "hostids.vmlease.io", "--subresource=status"),
    ("create", "diskleases.vmlease.io"), ("delete", "diskleases.vmlease.io"),
    ("patch", "diskleases.vmlease.io", "--subresource=status"),
    ("create", "events", "-n", NAMESPACE), ("create", "events", "-n", "kube-system"),
    ("delete", "events", "-n", "default"), ("patch", "events", "-n", "default"),
    ("patch", "clusterkopfpeerings.kopf.dev/someone-elses"),
    ("delete", "clusterkopfpeerings.kopf.dev"), ("create", "clusterkopfpeerings.kopf.dev"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts", "--subresource=token", "-n", NAMESPACE),
]  # fmt: skip
AGENT_CAN = [
    ("get", "lockspaces.vmlease.io"), ("list", "lockspaces.vmlease.io"),
    ("watch", "lockspaces.vmlease.io"),
    ("patch", "lockspaces.vmlease.io", "--subresource=status"),
    ("list", "hostids.vmlease.io"), ("watch", "hostids.vmlease.io"),
    ("patch", "hostids.vmlease.io", "--subresource=status"),
    ("get", "diskleases.vmlease.io"), ("list", "diskleases.vmlease.io"),
    ("create", "diskleases.vmlease.io"),
    ("patch", "diskleases.vmlease.io", "--subresource=status"),
    ("list", "nodes"), ("watch", "nodes"),
]  # fmt: skip
AGENT_CANNOT = [
    ("create", "hostids.vmlease.io"), ("delete", "hostids.vmlease.io"),
    ("patch", "hostids.vmlease.io"), ("update", "hostids.vmlease.io"),
    ("patch", "lockspaces.vmlease.io"), ("create", "lockspaces.vmlease.io"),
    ("delete", "lockspaces.vmlease.io"),
    ("patch", "diskleases.vmlease.io"), ("delete", "diskleases.vmlease.io"),
    ("watch", "diskleases.vmlease.io"),
    ("patch", "nodes"), ("delete", "nodes"), ("update", "nodes", "--subresource=status"),
    ("get", "secrets", "-A"), ("list", "secrets", "-n", NAMESPACE),
    ("create", "pods", "-A"), ("create", "events", "-A"),
    ("patch", "clusterkopfpeerings.kopf.dev"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
]  # fmt: skip


@pytest.mark.parametrize("who", ["operator", "agent"])
def test_service_accounts_may_do_only_what_their_code_does(
    server: APIServer, release: Release, who: str
):
    token = release.operator_token if who == "operator" else release.agent_token
    can = OPERATOR_CAN if who == "operator" else AGENT_CAN
    cannot = OPERATOR_CANNOT if who == "operator" else AGENT_CANNOT
    if who == "operator":
        can = [*can, ("patch", f"clusterkopfpeerings.kopf.dev/{release.peering}")]
    assert [row for row in can if not can_i(server, token, *row)] == []
    assert [row for row in cannot if can_i(server, token, *row)] == []
    # Real requests too, not only the authorizer's opinion.
    for args in (("get", "secrets", "-A"), ("delete", "node", "any-node")):
        denied = server.kubectl(*args, token=token, check=False)
        assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr


def test_nhc_remediation_rbac_gives_nhc_its_rights_and_binds_the_operator_to_its_namespace(
    server: APIServer, release: Release
):
    """nodeFencing.remediation.enabled: NodeHealthCheck's own ClusterRole aggregates every
    ClusterRole labelled rbac.ext-remediation/aggregate-to-ext-remediation (its contract with
    external remediators), so NHC may create our remediations and read our template; the
    operator may write their status and Events in the release namespace and nowhere else.
    envtest runs no kube-controller-manager, whose aggregation controller would copy the rules
    into NHC's role: the test checks the label and binds the labelled role itself."""
    on = ("--set", "nodeFencing.enabled=true", "--set", "nodeFencing.remediation.enabled=true")
    docs = documents(
        render(server, *on, "--show-only", "templates/remediation.yaml", release=release.name)
    )
    (template,) = by_kind(docs, "VmleaseRemediationTemplate")
    assert template["kind"].endswith("Template")
    assert template["spec"]["template"]["spec"] == {"selfFence": False}
    assert template["metadata"]["namespace"] == NAMESPACE
    (for_nhc,) = by_kind(docs, "ClusterRole")
    assert for_nhc["metadata"]["labels"]["rbac.ext-remediation/aggregate-to-ext-remediation"] == (
        "true"
    )
    nhc = f"nhc-{secrets.token_hex(3)}"
    objects = [d for d in docs if d["kind"] != "VmleaseRemediationTemplate"]
    try:
        for doc in objects:
            server.kubectl("apply", "-f", "-", input=json.dumps(doc))
        server.kubectl("create", "serviceaccount", nhc, "-n", NAMESPACE)
        server.kubectl("create", "clusterrolebinding", nhc,
                       f"--clusterrole={for_nhc['metadata']['name']}",
                       f"--serviceaccount={NAMESPACE}:{nhc}")  # fmt: skip
        token = server.service_account_token(NAMESPACE, nhc)
        remediations = "vmleaseremediations.vmlease.io"
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
            assert can_i(server, token, verb, remediations, "-n", "elsewhere"), verb
        assert can_i(server, token, "get", "vmleaseremediationtemplates.vmlease.io", "-A")
        assert not can_i(server, token, "patch", "nodes")
        op = release.operator_token
        status = (remediations, "--subresource=status")
        assert can_i(server, op, "patch", *status, "-n", NAMESPACE)
        assert can_i(server, op, "create", "events", "-n", NAMESPACE)
        assert not can_i(server, op, "patch", *status, "-n", "default")
        assert not can_i(server, op, "create", "events", "-n", "kube-system")
        assert not can_i(server, op, "create", remediations, "-n", NAMESPACE)
    finally:
        for doc in objects:
            server.kubectl("delete", "-f", "-", "--ignore-not-found", input=json.dumps(doc),
                           check=False)  # fmt: skip
        server.kubectl("delete", "clusterrolebinding", nhc, "--ignore-not-found", check=False)
        server.kubectl("delete", "serviceaccount", nhc, "-n", NAMESPACE, "--ignore-not-found",
                       check=False)  # fmt: skip


def test_agent_token_cannot_allocate_a_host_id(server: APIServer, release: Release):
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HostId",
        "metadata": {"name": "stolen.7", "labels": {f"{GROUP}/lockspace": "stolen"}},
        "spec": {"lockspace": "stolen", "nodeName": "n", "hostId": 7},
    }
    result = server.kubectl(
        "create", "-f", "-", token=release.agent_token, input=json.dumps(body), check=False
    )
    assert result.returncode != 0 and "Forbidden" in result.stderr, result.stderr


class AgentRun:
    """``vmlease-agent`` with the DaemonSet's args; paths, ports and the watchdog made local."""

    def __init__(self, args: list[str], node: str, run_dir: Path, env: dict[str, str]) -> None:
        self.node, self.run_dir = node, run_dir
        self.argv = [sys.executable, "-m", "vmlease_agent.daemon.main", *args]
        self.env = {**env, "NODE_NAME": node, "PYTHONUNBUFFERED": "1"}
        self.log_path = run_dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentRun:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The kubelet expands $(NODE_NAME) in args; do the same.
        argv = [a.replace("$(NODE_NAME)", self.node) for a in self.argv]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def test_operator_and_agents_work_with_only_their_rbac(server: APIServer, release: Release):
    """The chart's processes, each with its ServiceAccount's token: every write they need goes
    through (no 403 anywhere in their logs), with nothing more than the chart grants."""
    work = Path(tempfile.mkdtemp(prefix="vmlease-chart-"))
    shared = Path(tempfile.mkdtemp(prefix="vmlease-chart-shared-", dir="/var/tmp"))
    op_env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig_for(server, release.operator_token, work / "op")),
    }
    agent_env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig_for(server, release.agent_token, work / "ag")),
    }
    name = f"rb-{secrets.token_hex(3)}"
    nodes = [f"{name}-n1", f"{name}-n2"]
    selector = {f"envtest.vmlease.io/{name}": "yes"}
    api = api_client(server)
    objects = client.CustomObjectsApi(api)

    op_args = swap_args(
        container(release.manifest, "Deployment")["args"],
        metrics_port="0",
        liveness="http://127.0.0.1:{port}/healthz",
    )
    operator = Operator(_EnvOnly(op_env), name="chart-operator")
    # The harness adds its own --liveness/--metrics-port; use the chart's, on the harness port.
    operator.argv = [
        sys.executable, "-m", "vmlease_operator.main",
        *(a.replace("{port}", str(operator.liveness_port)) for a in op_args),
    ]  # fmt: skip
    ag_args = swap_args(
        container(release.manifest, "DaemonSet")["args"],
        shared_dir=str(shared),
        watchdog="none",
        watchdog_fire_timeout=str(W),
        health_port="0",
    )
    agents = [
        AgentRun(
            [*swap_args(ag_args, run_dir=str(work / node)), "--status-interval=5"],
            node,
            work / node,
            agent_env,
        )
        for node in nodes
    ]
    holder: subprocess.Popen[bytes] | None = None
    failed = True
    try:
        create_nodes(api, nodes, selector)
        for agent in agents:  # as the kubelet gives it: a token bound to the pod on its node
            token = pod_bound_token(server, release.agent_sa, agent.node)
            config = kubeconfig_for(server, token, work / f"{agent.node}.kubeconfig")
            agent.env["KUBECONFIG"] = str(config)
        with operator:
            for agent in agents:
                agent.start()
            started = time.monotonic()
            objects.create_cluster_custom_object(
                GROUP, VERSION, "lockspaces",
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Lockspace",
                    "metadata": {"name": name},
                    "spec": {
                        "path": f"lockspaces/{name}", "ioTimeoutSeconds": N,
                        "watchdogFireTimeoutSeconds": W, "nodeSelector": {"matchLabels": selector},
                        "autoDiskLeases": {"enabled": True, "directory": "leases"},
                    },
                },
            )  # fmt: skip

            def hostids() -> dict[str, dict[str, Any]]:
                items = objects.list_cluster_custom_object(
                    GROUP, VERSION, "hostids", label_selector=f"{GROUP}/lockspace={name}"
                )["items"]
                return {i["spec"]["nodeName"]: i for i in items}

            def all_live() -> bool:
                ids = hostids()
                return set(ids) == set(nodes) and all(
                    (o.get("status") or {}).get("state") == "Live" for o in ids.values()
                )

            wait_for(
                all_live, ALL_LIVE_TIMEOUT, "both HostIds Live",
                describe=lambda: {n: o.get("status") for n, o in hostids().items()},
            )  # fmt: skip
            live_after = time.monotonic() - started
            ids = {node: obj["spec"]["hostId"] for node, obj in hostids().items()}
            assert sorted(ids.values()) == [1, 2]
            status = objects.get_cluster_custom_object(GROUP, VERSION, "lockspaces", name)["status"]
            assert status["formatted"] is True and status["formattedBy"] in nodes
            assert status["failoverSeconds"] == 8 * N + W

            # An automatic disk lease: the agent creates its DiskLease and writes the holder.
            resource = disk_resource_name("/var/lib/libvirt/images/rbac.qcow2")
            path = shared / "leases" / resource
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                f.truncate(1024 * 1024)
            spec = f"{name}:{resource}:{path}:0"
            subprocess.run(
                [sys.executable, "-m", "vmlease_agent.cli.main", "direct", "init", "-r", spec],
                check=True,
            )
            holder = subprocess.Popen(
                [
                    sys.executable, "-m", "vmlease_agent.cli.main", "client",
                    "--run-dir", str(agents[0].run_dir), "command", "-r", spec,
                    "--owner", "rbac-vm", "-c", "sleep", "600",
                ],
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

            def held() -> dict[str, Any] | None:
                try:
                    body = objects.get_cluster_custom_object(
                        GROUP, VERSION, "diskleases", f"{name}.{resource}"
                    )
                except client.exceptions.ApiException:
                    return None
                st = body.get("status") or {}
                return body if st.get("phase") == "Held" else None

            lease = wait_for(held, 20, "the automatic DiskLease, Held")
            assert lease["status"]["holder"]["node"] == agents[0].node
            managers = {m["manager"] for m in lease["metadata"]["managedFields"]}
            assert "vmlease-agent" in managers

            events = server.kubectl("get", "events", "-n", "default", "-o", "json").stdout
            reasons = {
                e["reason"] for e in json.loads(events)["items"] if name in e["message"]
                or e["involvedObject"].get("name", "").startswith(name)
            }  # fmt: skip
            assert "HostIdAllocated" in reasons, reasons
            problems = permission_problems(operator.log_path.read_text(errors="replace"))
            for agent in agents:
                problems += permission_problems(agent.log())
            assert problems == []
            print(f"\nwith the chart's RBAC: both HostIds Live {live_after:.1f} s after creation")
            failed = False
    finally:
        if holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
        for agent in agents:
            agent.stop()
            if failed:
                print(f"--- agent {agent.node} ---\n{agent.log()[-4000:]}")
        with contextlib.suppress(client.exceptions.ApiException):
            for item in objects.list_cluster_custom_object(GROUP, VERSION, "diskleases")["items"]:
                if item["spec"]["lockspace"] == name:
                    objects.delete_cluster_custom_object(
                        GROUP, VERSION, "diskleases", item["metadata"]["name"]
                    )
        delete_nodes(api, nodes)
        for node in nodes:
            server.kubectl("delete", "pod", f"agent-{node}", "-n", NAMESPACE, "--wait=false",
                           "--ignore-not-found", check=False)  # fmt: skip
        remove_lockspace(api, name)
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def pod_bound_token(server: APIServer, service_account: str, node: str) -> str:
    """A token bound to a Pod on ``node``, as the kubelet projects into the agent's pod: the
    API server adds the node's name to it (``authentication.kubernetes.io/node-name``), which
    the chart's ValidatingAdmissionPolicy keys on. The Pod is only an API object here."""
    pod = f"agent-{node}"
    body = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NAMESPACE},
        "spec": {"nodeName": node, "serviceAccountName": service_account,
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "agent", "image": "vmlease-agent:envtest"}]},
    }  # fmt: skip
    server.kubectl("apply", "-f", "-", input=json.dumps(body))
    return server.kubectl(
        "create", "token", service_account, "-n", NAMESPACE, "--duration=1h",
        "--bound-object-kind", "Pod", "--bound-object-name", pod,
    ).stdout.strip()  # fmt: skip


def test_each_agent_may_write_only_its_own_nodes_objects(server: APIServer, release: Release):
    """The chart's ValidatingAdmissionPolicy, with real tokens: the agent of node a, holding a
    token bound to its pod there, writes node a's HostId and its own leases; it may report node
    b's HostId Dead as the lockspace's reporter, but not say node b is Live, not forge node b's
    nodeFencing (on which the operator taints nodes out of service), not name node b as a
    lease's holder; a token of the same ServiceAccount without a pod binding writes nothing."""
    name = f"vap-{secrets.token_hex(3)}"
    node_a, node_b = f"{name}-a", f"{name}-b"
    api = api_client(server)
    objects = client.CustomObjectsApi(api)
    create_nodes(api, [node_a, node_b], {f"envtest.vmlease.io/{name}": "yes"})
    made: list[tuple[str, str]] = []
    work = Path(tempfile.mkdtemp(prefix="vmlease-vap-"))
    try:
        for node, host_id in ((node_a, 1), (node_b, 2)):
            hid = f"{name}.{host_id}"
            objects.create_cluster_custom_object(GROUP, VERSION, "hostids", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "HostId", "metadata": {"name": hid},
                "spec": {"lockspace": name, "nodeName": node, "hostId": host_id},
            })  # fmt: skip
            made.append(("hostids", hid))
            objects.patch_cluster_custom_object_status(GROUP, VERSION, "hostids", hid, {
                "status": {"state": "Live", "observedBy": node, "nodeFencing": True,
                           "lastRenewal": "2026-01-01T00:00:00Z"},
            })  # fmt: skip
        objects.create_cluster_custom_object(GROUP, VERSION, "lockspaces", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Lockspace", "metadata": {"name": name},
            "spec": {"path": f"lockspaces/{name}"},
        })  # fmt: skip
        made.append(("lockspaces", name))
        lease = f"{name}.vm1"
        objects.create_cluster_custom_object(GROUP, VERSION, "diskleases", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DiskLease", "metadata": {"name": lease},
            "spec": {"lockspace": name, "resource": "vm1", "lease": {"path": "leases/vm1"}},
        })  # fmt: skip
        made.append(("diskleases", lease))
        token = pod_bound_token(server, release.agent_sa, node_a)

        def as_agent(with_token: str) -> client.CustomObjectsApi:
            configuration = client.Configuration()
            kubeconfig = kubeconfig_for(server, with_token, work / secrets.token_hex(4))
            config.load_kube_config(str(kubeconfig), client_configuration=configuration)
            return client.CustomObjectsApi(client.ApiClient(configuration))

        agent_a = as_agent(token)

        def status_patch(plural: str, obj: str, status: dict[str, Any], who=agent_a) -> str:
            """ "" when the write went through, else the API server's refusal."""
            try:
                who.patch_cluster_custom_object_status(
                    GROUP, VERSION, plural, obj, {"status": status}
                )
            except client.exceptions.ApiException as error:
                assert error.status == 422 and "denied request" in error.body, error.body
                return str(error.body)
            return ""

        def allowed(refusal: str) -> bool:
            return refusal == ""

        assert allowed(
            status_patch("hostids", f"{name}.1", {"state": "Live", "observedBy": node_a})
        )
        assert allowed(
            status_patch("hostids", f"{name}.2", {"state": "Dead", "observedBy": node_a})
        )
        forged = status_patch("hostids", f"{name}.2", {"state": "Live", "observedBy": node_a})
        assert f"may write the HostId of node {node_b} only as its reporter" in forged
        report = {"state": "Dead", "observedBy": node_a}
        for forged_field in ({"nodeFencing": False}, {"lastRenewal": "2026-12-01T00:00:00Z"}):
            assert not allowed(status_patch("hostids", f"{name}.2", {**report, **forged_field}))
        held = {"phase": "Held", "holder": {"node": node_a, "hostId": 1}}
        assert allowed(status_patch("diskleases", lease, held))
        stolen = {"phase": "Held", "holder": {"node": node_b, "hostId": 2}}
        assert not allowed(status_patch("diskleases", lease, stolen))
        assert allowed(status_patch("diskleases", lease, {"phase": "Free", "holder": None}))
        # a shared lease: each node may change only its own entries among the holders
        mine, theirs = {"node": node_a, "hostId": 1}, {"node": node_b, "hostId": 2}
        objects.patch_cluster_custom_object_status(GROUP, VERSION, "diskleases", lease, {
            "status": {"phase": "Shared", "sharedHolders": [theirs]}})  # fmt: skip
        assert allowed(status_patch("diskleases", lease, {"sharedHolders": [theirs, mine]}))
        assert allowed(status_patch("diskleases", lease, {"sharedHolders": [theirs]}))
        dropped = status_patch("diskleases", lease, {"sharedHolders": [mine]})
        assert "may change only its own node's entries in the sharedHolders" in dropped
        forged = {**theirs, "pid": 666}
        assert not allowed(status_patch("diskleases", lease, {"sharedHolders": [forged, mine]}))
        assert not allowed(status_patch("lockspaces", name, {"formatted": True}))
        unbound = server.service_account_token(NAMESPACE, release.agent_sa)
        refused = status_patch("hostids", f"{name}.1", {"state": "Live"}, who=as_agent(unbound))
        assert "carries no node name" in refused
    finally:
        for plural, obj in made:
            with contextlib.suppress(client.exceptions.ApiException):
                objects.delete_cluster_custom_object(GROUP, VERSION, plural, obj)
        server.kubectl("delete", "pod", f"agent-{node_a}", "-n", NAMESPACE, "--wait=false",
                       "--ignore-not-found", check=False)  # fmt: skip
        delete_nodes(api, [node_a, node_b])
        shutil.rmtree(work, ignore_errors=True)


def test_upgrade_refuses_to_move_the_run_directory_while_leases_are_held_safety(
    server: APIServer, release: Release
):
    """The new agents adopt their predecessors' holders through the state in runDir, whose
    lockspace paths live under the shared mount: a ``helm upgrade`` that changes either (or
    raises W) while a lease is held would reset those nodes. It is refused, naming the leases;
    a smaller W, or the same change with nothing held, goes through."""
    objects = client.CustomObjectsApi(api_client(server))
    lockspace = f"guard-{secrets.token_hex(3)}"
    lease = f"{lockspace}.vm1"
    objects.create_cluster_custom_object(GROUP, VERSION, "lockspaces", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Lockspace", "metadata": {"name": lockspace},
        "spec": {"path": f"lockspaces/{lockspace}"},
    })  # fmt: skip
    objects.create_cluster_custom_object(GROUP, VERSION, "diskleases", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DiskLease", "metadata": {"name": lease},
        "spec": {"lockspace": lockspace, "resource": "vm1",
                 "lease": {"path": "leases/vm1"}},
    })  # fmt: skip

    def upgrade(*values: str) -> subprocess.CompletedProcess[str]:
        sets = [arg for value in values for arg in ("--set", value)]
        return helm(
            server, "upgrade", release.name, str(CHART), "-n", NAMESPACE, "--reuse-values",
            "--dry-run=server", *sets, check=False,
        )  # fmt: skip

    try:
        holder = {"node": "node-a", "hostId": 1}
        objects.patch_cluster_custom_object_status(
            GROUP, VERSION, "diskleases", lease, {"status": {"phase": "Held", "holder": holder}}
        )
        for value, what in (
            ("agent.runDir=/run/elsewhere", "agent.runDir from /run/vmlease to /run/elsewhere"),
            ("agent.sharedVolume.mountPath=/mnt/x", "agent.sharedVolume.mountPath from"),
            ("agent.watchdog.fireTimeoutSeconds=90", "fireTimeoutSeconds from 60 up to 90"),
        ):
            refused = upgrade(value)
            assert refused.returncode != 0, f"{value} was not refused"
            assert what in refused.stderr and f"{lease} on node-a" in refused.stderr, refused.stderr
        assert upgrade("agent.watchdog.fireTimeoutSeconds=30").returncode == 0
        forced = upgrade("agent.runDir=/run/elsewhere", "agent.upgrade.allowUnsafe=true")
        assert forced.returncode == 0, forced.stderr
        objects.patch_cluster_custom_object_status(
            GROUP, VERSION, "diskleases", lease, {"status": {"phase": "Free", "holder": None}}
        )
        free = upgrade("agent.runDir=/run/elsewhere")
        assert free.returncode == 0, free.stderr
    finally:
        objects.delete_cluster_custom_object(GROUP, VERSION, "diskleases", lease)
        remove_lockspace(api_client(server), lockspace)


@dataclass
class _EnvOnly:
    """What ``Operator`` needs of a server: the environment its process runs with."""

    env: dict[str, str]


# --- CRD upgrades: the pre-upgrade hook ------------------------------------------------------


def test_the_crd_upgrade_hook_adds_a_field_and_existing_objects_keep_working(
    server: APIServer, tmp_path: Path
):
    """``helm upgrade`` runs ``vmlease-operator --apply-crds`` (templates/crds-upgrade.yaml) as
    the hook's ServiceAccount: here, exactly as the Job would, with that account's own token and
    only the hook's RBAC. A CRD that gains an optional field (as Lockspace's status.storageId did)
    is served with it, a Lockspace made under the old schema keeps working and takes the field."""
    from vmlease_api.crd import all_crds

    hook = documents(render(server, "--show-only", "templates/crds-upgrade.yaml", release="up"))
    assert [d["kind"] for d in hook] == [
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job"
    ]  # fmt: skip
    assert all(d["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade" for d in hook)
    job = hook[3]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"][0] == "--apply-crds"
    # it may patch exactly the CRDs this version generates (a kind added to the models and not
    # here would fail every upgrade that finds it already installed)
    named = hook[1]["rules"][0]["resourceNames"]
    assert sorted(named) == sorted(d["metadata"]["name"] for d in all_crds().values())
    assert job["serviceAccountName"] == hook[0]["metadata"]["name"]
    for doc in hook[:3]:
        server.kubectl("apply", "-f", "-", input=json.dumps(doc))
    sa = hook[0]["metadata"]["name"]
    kubeconfig = kubeconfig_for(server, server.service_account_token(NAMESPACE, sa), tmp_path / "k")
    objects = client.CustomObjectsApi(api_client(server))
    name = f"up-{secrets.token_hex(3)}"
    old = all_crds()
    lockspace_crd = next(d for d in old.values() if d["spec"]["names"]["kind"] == "Lockspace")
    status = lockspace_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    del status["status"]["properties"]["storageId"]  # the schema before this field existed

    def apply_as_hook(*args: str, stdin: str = "") -> None:
        run = subprocess.run(
            [sys.executable, *args], input=stdin, capture_output=True, text=True,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)}, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr

    try:
        apply_as_hook(
            "-c",
            "import json, sys; from vmlease_operator import hooks, kube; "
            "hooks.apply_crds(kube.api_client(pool_size=1), json.load(sys.stdin))",
            stdin=json.dumps(old),
        )
        spec = {"path": f"{name}.img", "ioTimeoutSeconds": 1, "watchdogFireTimeoutSeconds": 10}
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Lockspace", "metadata": {"name": name},
            "spec": spec,
        }  # fmt: skip
        objects.create_cluster_custom_object(GROUP, VERSION, "lockspaces", body)
        storage_id = {"status": {"formatted": True, "storageId": "ab" * 16}}

        def patched() -> dict[str, Any]:
            return objects.patch_cluster_custom_object_status(  # type: ignore[return-value]
                GROUP, VERSION, "lockspaces", name, storage_id
            )

        assert "storageId" not in patched()["status"]  # pruned: the old schema has no such field
        # The upgrade: the image's own CRDs, through the code path the Job runs.
        apply_as_hook("-m", "vmlease_operator.main", "--apply-crds")
        kept = objects.get_cluster_custom_object(GROUP, VERSION, "lockspaces", name)
        assert kept["spec"]["path"] == f"{name}.img" and kept["status"]["formatted"] is True
        assert patched()["status"]["storageId"] == "ab" * 16
        managers = server.kubectl(
            "get",
            "crd",
            "lockspaces.vmlease.io",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ).stdout
        assert "vmlease-crds" in managers
    finally:
        with contextlib.suppress(Exception):
            objects.delete_cluster_custom_object(GROUP, VERSION, "lockspaces", name)
        server.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        for doc in hook[:3]:
            server.kubectl(
                "delete", doc["kind"], doc["metadata"]["name"], "-n", NAMESPACE, check=False
            )


def test_the_stop_agents_hook_may_delete_only_the_agents_daemonset(server: APIServer):
    """``helm uninstall``'s pre-delete hook (templates/agents-stop-hook.yaml) deletes the agent
    DaemonSet and waits for it (foreground deletion needs the garbage collector, which envtest
    lacks: the kind tier runs it for real); here its identity and what that identity may do."""
    hook = documents(render(server, "--show-only", "templates/agents-stop-hook.yaml", release="un"))
    assert [d["kind"] for d in hook] == ["ServiceAccount", "Role", "RoleBinding", "Job"]
    assert all(d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete" for d in hook)
    (job,) = hook[3]["spec"]["template"]["spec"]["containers"]
    assert job["args"][0] == f"--stop-agents={NAMESPACE}/un-vmlease-agent"
    assert "--stop-agents" in help_text("vmlease_operator.main")
    ns = ("-n", NAMESPACE)
    for doc in hook[:3]:
        server.kubectl("apply", "-f", "-", input=json.dumps(doc))
    try:
        token = server.service_account_token(NAMESPACE, hook[0]["metadata"]["name"])
        assert can_i(server, token, "delete", "daemonset/un-vmlease-agent", *ns)
        assert can_i(server, token, "get", "daemonset/un-vmlease-agent", *ns)
        for denied in (
            ("delete", "daemonset/someone-elses", *ns), ("delete", "daemonsets", *ns),
            ("delete", "daemonset/un-vmlease-agent", "-n", "default"),
            ("delete", "pods", *ns), ("list", "daemonsets", *ns),
        ):  # fmt: skip
            assert not can_i(server, token, *denied), denied
    finally:
        for doc in hook[:3]:
            server.kubectl("delete", doc["kind"], doc["metadata"]["name"], *ns, check=False)
