"""Fixtures of the kind e2e tier: the cluster ``tests/e2e/run.sh`` created and installed.

The tests here never create a cluster themselves, and refuse to run against any other: the
``kind-vmlease-e2e`` context must be the current one (a crate-operator-style guard, so an
accidental ``pytest -m e2e`` with a production KUBECONFIG touches nothing).

Where Docker is missing, the root conftest skips every ``e2e`` test before these fixtures run.
"""

from __future__ import annotations

import os

import pytest

from .cluster import Kind, Watchdogs


@pytest.fixture(scope="session")
def kind() -> Kind:
    cluster = os.environ.get("VMLEASE_E2E_CLUSTER")
    if not cluster:
        pytest.skip("no e2e cluster: run tests/e2e/run.sh (it creates one and runs these tests)")
    k = Kind(
        cluster=cluster,
        namespace=os.environ["VMLEASE_E2E_NAMESPACE"],
        kubectl_path=os.environ.get("VMLEASE_E2E_KUBECTL", "kubectl"),
        shared_dir=os.environ["VMLEASE_E2E_SHARED"],
        # run.sh's helm is the envtest tier's, beside its kubectl
        helm_path=os.environ.get("VMLEASE_E2E_HELM")
        or os.path.join(os.path.dirname(os.environ.get("VMLEASE_E2E_KUBECTL", "")), "helm"),
    )
    context = k.kubectl("config", "current-context").stdout.strip()
    if context != f"kind-{cluster}":
        pytest.exit(f"refusing to run e2e tests against context {context!r}, not kind-{cluster}")
    return k


@pytest.fixture(scope="session")
def watchdogs(kind: Kind):
    """A watchdog harness for every worker, from the first test on (agents arm their device only
    when they hold a lease, so none is counting before)."""
    dogs = Watchdogs(kind.cluster, os.environ["VMLEASE_E2E_WATCHDOGS"])
    for node in kind.workers():
        dogs.start(node)
    yield dogs
    dogs.stop()
