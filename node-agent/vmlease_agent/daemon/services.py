"""Optional services of ``vmlease-agent``: the Kubernetes mode and the HTTP endpoint.

Kept out of ``daemon`` so that the daemon stays the lease process it was: these only observe
the agent and talk to the API server, and none of them is needed for a lease to be held,
renewed or fenced. ``daemon`` calls ``add_arguments`` and ``start``, and ``stop`` at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmlease_agent.core.agent import Agent

if TYPE_CHECKING:  # imported at run time only in Kubernetes mode or with --health-port
    from vmlease_agent.daemon.http import HttpEndpoint
    from vmlease_agent.kube.sync import KubeSync

log = logging.getLogger(__name__)

DEFAULT_SHARED_DIR = "/var/lib/vmlease/shared"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kubernetes",
        action="store_true",
        default=os.environ.get("VMLEASE_KUBERNETES", "") in ("1", "true", "yes"),
        help="join the Lockspaces that select this node (--node-name must be its Node name, "
        "from the downward API) and publish HostId and DiskLease status",
    )
    p.add_argument(
        "--shared-dir",
        default=os.environ.get("VMLEASE_SHARED_DIR", DEFAULT_SHARED_DIR),
        help="where the shared volume is mounted: Lockspace and DiskLease paths that are not "
        "under /dev/ are relative to it (default %(default)s)",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=None,
        help="seconds between HostId status refreshes when nothing changed (state changes "
        "are written at once; default 30, see kube_sync.STATUS_INTERVAL)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=int(os.environ.get("VMLEASE_HEALTH_PORT", "0")),
        help="serve /healthz, /readyz and /metrics on this port (0: off)",
    )


@dataclass
class Services:
    sync: KubeSync | None = None
    http: HttpEndpoint | None = None

    def stop(self, left: dict[str, int] | None = None) -> None:
        """``left``: the lockspaces the agent left as it stops (``Agent.leave_idle``), for the
        Kubernetes mode to write their HostIds Free."""
        try:
            if self.http is not None:
                self.http.stop()
        except Exception:
            log.exception("stopping the HTTP endpoint")
        try:
            if self.sync is not None:
                self.sync.stop(left)
        except Exception:
            log.exception("stopping the Kubernetes sync")


def start(args: argparse.Namespace, agent: Agent) -> Services:
    """Start what the flags ask for. The Kubernetes client is imported only in that mode."""
    services = Services()
    if args.kubernetes:
        from vmlease_agent.kube.api import RealKubeApi
        from vmlease_agent.kube.sync import STATUS_INTERVAL, KubeConfig, KubeSync

        cfg = KubeConfig(
            node=args.node_name,
            shared_dir=args.shared_dir,
            run_dir=args.run_dir,
            fire_timeout=args.watchdog_fire_timeout,
            status_interval=args.status_interval or STATUS_INTERVAL,
        )
        sync = KubeSync(agent, RealKubeApi(), cfg)
        sync.start()
        services.sync = sync
        log.info("kubernetes mode: node %s, shared volume %s", cfg.node, cfg.shared_dir)
    if args.health_port:
        from vmlease_agent.daemon.http import HttpEndpoint

        http = HttpEndpoint(agent, services.sync, args.health_port)
        http.start()
        services.http = http
    return services
