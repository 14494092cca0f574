"""The agent's HTTP endpoint (``--health-port``): /healthz, /readyz and Prometheus /metrics.

* ``/healthz`` — 200 while the agent's main loop runs (it ticks every 0.2 s; silence for
  ``LOOP_STALE_SECONDS`` means it is stuck or dead). A kubelet liveness probe on it restarts a
  wedged agent; a restart is harmless (leases are adopted from the saved state).
* ``/readyz`` — 200 when every lockspace the agent should be in is joined and live: in
  Kubernetes mode every Lockspace selecting the node, otherwise every lockspace it was given.
  The body lists what is missing, with the reason.
* ``/metrics`` — gauges read from the agent at scrape time (renewal latency and age, lockspace
  state, leases held, watchdog feed age, API errors of the sync), so the lease path carries no
  instrumentation at all. Series are labelled by lockspace only, never by disk or pid.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vmlease_agent.core import lockspace as local_ls
from vmlease_agent.core.agent import Agent

log = logging.getLogger(__name__)

#: /healthz fails when the main loop has not ticked for this long: 50 ticks, far above any
#: scheduling hiccup, far below the watchdog's 60 s (a stuck loop stops feeding it anyway).
LOOP_STALE_SECONDS = 10.0
STATES = (local_ls.JOINING, local_ls.LIVE, local_ls.FAILED, local_ls.STOPPED)


def healthy(agent: Agent) -> tuple[bool, str]:
    snap = agent.snapshot()
    if not snap.loop_running:
        return False, "the agent's main loop is not running"
    stale = snap.taken_at - snap.last_tick
    if snap.last_tick and stale > LOOP_STALE_SECONDS:
        return False, f"the agent's main loop has not run for {stale:.0f} s"
    return True, "ok"


def ready(agent: Agent, sync: Any | None) -> tuple[bool, list[str]]:
    if sync is not None:
        return sync.readiness()
    missing = [
        f"lockspace {ls.name}: {ls.state} {ls.error}".strip()
        for ls in agent.snapshot().lockspaces
        if ls.state != local_ls.LIVE
    ]
    return not missing, missing


class AgentCollector(Collector):
    """Metrics computed from ``Agent.snapshot()`` at scrape time."""

    def __init__(self, agent: Agent, sync: Any | None = None) -> None:
        self.agent, self.sync = agent, sync

    def collect(self) -> Iterator[Any]:
        snap = self.agent.snapshot()
        latency = GaugeMetricFamily(
            "vmlease_delta_renewal_latency_seconds",
            "Duration of the last delta-lease renewal (read + write)",
            labels=["lockspace"],
        )
        age = GaugeMetricFamily(
            "vmlease_delta_last_renewal_age_seconds",
            "Seconds since the last successful delta-lease renewal",
            labels=["lockspace"],
        )
        deadline = GaugeMetricFamily(
            "vmlease_delta_deadline_seconds",
            "Seconds left until the lockspace fails (T + 8N) without another renewal",
            labels=["lockspace"],
        )
        io_timeout = GaugeMetricFamily(
            "vmlease_delta_io_timeout_seconds",
            "The lockspace's io_timeout N (alerts scale with it: renewals every 2N, failure at 8N)",
            labels=["lockspace"],
        )
        state = GaugeMetricFamily(
            "vmlease_lockspace_state",
            "1 for the lockspace's current state",
            labels=["lockspace", "host_id", "state"],
        )
        for ls in snap.lockspaces:
            name = ls.name
            latency.add_metric([name], (ls.renewal_ms or 0) / 1000)
            io_timeout.add_metric([name], ls.io_timeout)
            if ls.last_renewal_ago is not None:
                age.add_metric([name], ls.last_renewal_ago)
            if ls.deadline_in is not None:
                deadline.add_metric([name], ls.deadline_in)
            for s in STATES:
                state.add_metric([name, str(ls.host_id), s], 1.0 if ls.state == s else 0.0)
        held = GaugeMetricFamily(
            "vmlease_leases_held", "Leases held on this node", labels=["lockspace", "mode"]
        )
        counts: dict[tuple[str, str], int] = {}
        for lease in snap.leases:
            key = (lease.lockspace, "shared" if lease.shared else "exclusive")
            counts[key] = counts.get(key, 0) + 1
        for (name, mode), n in sorted(counts.items()):
            held.add_metric([name, mode], n)
        armed = GaugeMetricFamily(
            "vmlease_watchdog_armed", "1 while the watchdog is armed (something is held)"
        )
        armed.add_metric([], 1.0 if snap.watchdog.armed else 0.0)
        feed = GaugeMetricFamily(
            "vmlease_watchdog_last_feed_age_seconds",
            "Seconds since the watchdog was last fed (absent while it is disarmed)",
        )
        if snap.watchdog.last_feed_ago is not None:
            feed.add_metric([], snap.watchdog.last_feed_ago)
        fire = GaugeMetricFamily(
            "vmlease_watchdog_fire_timeout_seconds",
            "W: the device resets the node this long after its last keepalive",
        )
        fire.add_metric([], snap.watchdog.device_timeout)
        yield from (latency, age, deadline, io_timeout, state, held, armed, feed, fire)
        if self.sync is not None:
            errors = CounterMetricFamily(
                "vmlease_kube_sync_api_errors", "Passes of the Kubernetes sync that lost the API"
            )
            errors.add_metric([], self.sync.api_errors)
            yield errors


def _handler(agent: Agent, sync: Any | None, registry: CollectorRegistry) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/healthz":
                ok, why = healthy(agent)
                self._reply(200 if ok else 503, why + "\n", "text/plain")
            elif path == "/readyz":
                ok, missing = ready(agent, sync)
                body = json.dumps({"ready": ok, "waiting": missing}, indent=1) + "\n"
                self._reply(200 if ok else 503, body, "application/json")
            elif path == "/metrics":
                self._reply(200, generate_latest(registry).decode(), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, "try /healthz, /readyz or /metrics\n", "text/plain")

        def _reply(self, code: int, body: str, content_type: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
            pass

    return Handler


class HttpEndpoint:
    """The server thread; ``port`` 0 picks a free port (see ``.port``)."""

    def __init__(self, agent: Agent, sync: Any | None, port: int, host: str = "0.0.0.0") -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(AgentCollector(agent, sync))
        self.server = ThreadingHTTPServer((host, port), _handler(agent, sync, registry))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("health and metrics on port %d (/healthz /readyz /metrics)", self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
