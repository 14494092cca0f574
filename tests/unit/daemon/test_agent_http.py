"""The agent's /healthz, /readyz and /metrics, served from a real agent."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import pytest
from vmlease_agent.core.agent import Agent, AgentConfig
from vmlease_agent.core.lockspace import LockspaceConfig
from vmlease_agent.core.watchdog import open_watchdog
from vmlease_agent.daemon.http import LOOP_STALE_SECONDS, HttpEndpoint, healthy


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Sync:
    def __init__(self) -> None:
        self.api_errors = 2
        self.answer: tuple[bool, list[str]] = (False, ["lockspace ls: not joined"])

    def readiness(self) -> tuple[bool, list[str]]:
        return self.answer


@pytest.fixture
def agent(tmp_path) -> Iterator[Agent]:
    agent = Agent(AgentConfig(str(tmp_path), "n1", 10), open_watchdog("none", 10))
    agent.start()
    yield agent
    agent.stop(clean=False)


def test_health_follows_the_main_loop(agent):
    http = HttpEndpoint(agent, None, 0, host="127.0.0.1")
    http.start()
    try:
        assert get(http.port, "/healthz") == (200, "ok\n")
        agent.halt()  # the main loop ends, as if it had died
        code, body = get(http.port, "/healthz")
        assert code == 503 and "main loop" in body
        assert get(http.port, "/nope")[0] == 404
    finally:
        http.stop()


def test_health_fails_when_the_main_loop_stops_ticking(agent):
    now = agent.snapshot()
    stuck = replace(now, last_tick=now.taken_at - LOOP_STALE_SECONDS - 5)
    ok, why = healthy(SimpleNamespace(snapshot=lambda: stuck))  # type: ignore[arg-type]
    assert not ok and "has not run for" in why


def test_ready_without_kubernetes_means_every_lockspace_live(agent, tmp_path):
    http = HttpEndpoint(agent, None, 0, host="127.0.0.1")
    http.start()
    try:
        assert json.loads(get(http.port, "/readyz")[1]) == {"ready": True, "waiting": []}
        unformatted = tmp_path / "zeros.img"
        unformatted.write_bytes(bytes(1024 * 1024))
        agent.add_lockspace(LockspaceConfig("ls", 1, str(unformatted), 0, 1), wait=False)
        code, body = get(http.port, "/readyz")
        assert code == 503 and "lockspace ls" in json.loads(body)["waiting"][0]
    finally:
        http.stop()


def test_ready_in_kubernetes_mode_asks_the_sync_and_metrics_are_served(agent):
    sync = Sync()
    http = HttpEndpoint(agent, sync, 0, host="127.0.0.1")
    http.start()
    try:
        assert get(http.port, "/readyz")[0] == 503
        sync.answer = (True, [])
        assert get(http.port, "/readyz")[0] == 200
        code, text = get(http.port, "/metrics")
        assert code == 200
        assert "vmlease_watchdog_last_feed_age_seconds" in text
        assert "vmlease_kube_sync_api_errors_total 2.0" in text
    finally:
        http.stop()
