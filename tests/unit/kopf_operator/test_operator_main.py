"""The console script's choices and the metrics it exposes."""

from __future__ import annotations

import random
import urllib.request

import pytest
from prometheus_client import REGISTRY
from vmlease_operator import main, metrics


def test_peering_identity_needs_no_password_database_entry(monkeypatch):
    # the image runs as uid 65532, which /etc/passwd does not name: kopf's default identity
    # (getpass.getuser) raised KeyError there and the operator crashed at start on kind
    def no_user():
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr("getpass.getuser", no_user)
    monkeypatch.setattr("socket.gethostname", lambda: "vmlease-operator-857ffff784-45tqj")
    assert main.peering_identity().startswith("vmlease-operator-857ffff784-45tqj/")


def test_priority_comes_from_the_pod_ip_so_replicas_differ(monkeypatch):
    monkeypatch.setenv("POD_IP", "10.0.0.7")
    first = main.default_priority()
    assert first == (10 << 24) + 7  # the address itself, below 2**31
    monkeypatch.setenv("POD_IP", "10.0.0.8")
    assert main.default_priority() == first + 1
    monkeypatch.setenv("POD_IP", "fd00::1:7")
    assert main.default_priority() == (1 << 16) + 7  # IPv6: its low 31 bits


def test_priority_without_pod_ip_is_random_and_positive(monkeypatch):
    """Uniform over kopf's positive range from the given source, so two replicas started
    without POD_IP differ (equal priorities would freeze both)."""
    monkeypatch.delenv("POD_IP", raising=False)
    assert main.default_priority(random.Random(7)) == random.Random(7).randint(1, 2**31 - 1)
    draws = [main.default_priority(random.Random(seed)) for seed in range(50)]
    assert len(set(draws)) == 50
    assert all(1 <= p <= main.MAX_PRIORITY == 2**31 - 1 for p in draws)
    # Spread over the whole range, not bunched near one end.
    assert min(draws) < 2**31 // 4 and max(draws) > 3 * (2**31 // 4)

    class Bounds(random.Random):
        def randint(self, a: int, b: int) -> int:
            self.asked = (a, b)
            return a

    edge = Bounds()
    assert main.default_priority(edge) == 1 and edge.asked == (1, 2**31 - 1)
    # Without a source, the module's own: still in range, and not a constant.
    assert len({main.default_priority() for _ in range(5)}) > 1


def test_args_default_to_peering_with_liveness_and_metrics():
    args = main.parse_args([])
    assert not args.standalone and args.peering == "vmlease-operator"
    assert not args.create_peering  # the chart creates it; creating raced helm install
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
