"""The console script's choices and the metrics it exposes."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import REGISTRY
from vmlease_operator import main, metrics


def test_priority_comes_from_the_pod_ip_so_replicas_differ(monkeypatch):
    monkeypatch.setenv("POD_IP", "10.0.0.7")
    first = main.default_priority()
    monkeypatch.setenv("POD_IP", "10.0.0.8")
    assert first != main.default_priority() and first > 0


def test_priority_without_pod_ip_is_random_and_positive(monkeypatch):
    monkeypatch.delenv("POD_IP", raising=False)
    assert {main.default_priority() for _ in range(5)} != {0}


def test_args_default_to_peering_with_liveness_and_metrics():
    args = main.parse_args([])
    assert not args.standalone and args.peering == "vmlease-operator"
    assert args.liveness.endswith("/healthz") and args.metrics_port == 9090
    assert main.parse_args(["--standalone", "--liveness", ""]).liveness == ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_endpoint_serves_the_operator_families():
    port = _free_port()
    metrics.start(port)
    metrics.ALLOCATIONS.labels("ls-metrics").inc()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'vmlease_hostid_allocations_total{lockspace="ls-metrics"} 1.0' in text
    assert "vmlease_build_info{" in text


def test_forget_lockspace_drops_its_series():
    metrics.HOSTS.labels("ls-gone", "Live").set(2)
    metrics.WAITING.labels("ls-gone").set(1)
    metrics.forget_lockspace("ls-gone")
    sample = REGISTRY.get_sample_value
    assert sample("vmlease_lockspace_hosts", {"lockspace": "ls-gone", "state": "Live"}) is None
    assert sample("vmlease_lockspace_nodes_waiting", {"lockspace": "ls-gone"}) is None


@pytest.mark.parametrize("module", ["vmlease_api", "vmlease_api.models"])
def test_api_package_does_not_import_kopf(module):
    """The agent imports the API package: it must not drag kopf in."""
    import subprocess
    import sys

    code = f"import sys, {module}; sys.exit('kopf' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
