"""``vmlease-operator``: run the kopf operator cluster-wide, with peering, liveness and metrics.

Two replicas (the chart's default) use kopf peering through a ``ClusterKopfPeering`` named
``vmlease-operator`` (CRD in ``crds/kopf.dev_clusterkopfpeerings.yaml``): only the
highest-priority replica handles events, the other waits. The chart creates that object; the
operator waits for it and creates it only with ``--create-peering`` (outside the chart). It used to
create it when missing, and then raced the chart: helm creates objects of unknown kinds after the
Deployment, so a replica that started first made ``helm install`` fail with "already exists".
Replicas must have distinct priorities — equal ones make both freeze — so the default is derived
from the pod IP (``POD_IP``, downward API) or else random. Peering only saves work: allocation
stays safe with both replicas active (see ``hostid_writes``), which ``--standalone`` allows for
tests.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import kopf
from kopf._core.engines.peering import Identity  # the type kopf.run takes; kopf's own CLI uses it
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from vmlease_api.errors import Conflict, NotFound

from vmlease_operator import handlers, hooks, metrics
from vmlease_operator.hostid_writes import Allocator
from vmlease_operator.kube import Kube, api_client, translate

PEERING_NAME = "vmlease-operator"
log = logging.getLogger("vmlease_operator")


#: kopf's priorities are positive ints; the highest replica handles events.
MAX_PRIORITY = 2**31 - 1


def default_priority(rng: random.Random | None = None) -> int:
    """Distinct per replica: the pod IP's low 31 bits, else uniform in 1..MAX_PRIORITY (kopf's
    own advice). ``rng``: the random source (the module's by default; tests pass a seeded one)."""
    pod_ip = os.environ.get("POD_IP")
    if pod_ip:
        return int(ipaddress.ip_address(pod_ip)) % (MAX_PRIORITY + 1)
    return (rng.randint if rng is not None else random.randint)(1, MAX_PRIORITY)


def peering_identity() -> Identity:
    """This replica's name in the peering object: the pod's host name (its pod name) and pid.
    kopf's own default asks the password database for the user name, and the image runs as uid
    65532 with no entry there (no /etc/passwd line is needed to run as a numeric uid): kopf
    then crashes at start with ``getpwuid(): uid not found``."""
    return Identity(f"{socket.gethostname()}/{os.getpid()}")


#: How often a replica looks for the peering object while it waits, and how often it says so.
PEERING_POLL_SECONDS = 1.0
PEERING_LOG_SECONDS = 10.0


def ensure_peering(
    api: client.ApiClient, name: str, create: bool, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Return once the ClusterKopfPeering ``name`` exists (kopf refuses to start without it).

    ``create``: make it if missing (``--create-peering``, for runs outside the chart). Otherwise
    wait for whoever installs the operator to make it, without a bound: kopf cannot run before,
    and the pod's liveness probe restarts a replica that waits too long, which says so in its log.
    """
    objects = client.CustomObjectsApi(api)
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    waited = 0.0
    while True:
        try:
            if create:
                objects.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body)
                return
            found: dict[str, Any] = objects.list_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", field_selector=f"metadata.name={name}"
            )  # type: ignore[assignment]  # the client's stubs say object; it is the decoded list
            if found["items"]:
                return
        except ApiException as error:
            answer = translate(error)
            if create and isinstance(answer, Conflict):  # it exists already
                return
            if isinstance(answer, NotFound):
                raise SystemExit(
                    "vmlease-operator: the ClusterKopfPeering CRD is missing: apply "
                    "crds/kopf.dev_clusterkopfpeerings.yaml, or run a single replica with "
                    "--standalone"
                ) from error
            raise answer from error
        if waited % PEERING_LOG_SECONDS == 0:
            log.info(
                "waiting for the ClusterKopfPeering %r (the chart creates it; outside the chart "
                "create it, or pass --create-peering, or run one replica with --standalone)",
                name,
            )
        sleep(PEERING_POLL_SECONDS)
        waited += PEERING_POLL_SECONDS


def _namespaced(value: str) -> str:
    namespace, slash, name = value.partition("/")
    if not (namespace and slash and name):
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAMESPACE/NAME")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vmlease-operator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--apply-crds",
        action="store_true",
        help="apply this version's CRDs (server-side) and exit: the chart's pre-upgrade hook",
    )
    parser.add_argument(
        "--stop-agents",
        metavar="NAMESPACE/DAEMONSET",
        type=_namespaced,
        help="delete the agents' DaemonSet and wait until they stopped, then exit: the chart's "
        "pre-delete hook (so they still may write their HostIds Free)",
    )
    parser.add_argument("--standalone", action="store_true", help="no peering (one replica)")
    parser.add_argument("--priority", type=int, default=None, help="peering priority")
    parser.add_argument("--peering", default=PEERING_NAME, help="ClusterKopfPeering name")
    parser.add_argument(
        "--create-peering",
        action="store_true",
        help="create the ClusterKopfPeering if missing (outside the chart, which creates it)",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint URL ('' to disable)",
    )
    parser.add_argument("--metrics-port", type=int, default=9090, help="0 disables /metrics")
    parser.add_argument("--workers", type=int, default=16, help="concurrent API calls")
    parser.add_argument(
        "--remediation-namespace",
        default=None,
        help="answer NodeHealthCheck's VmleaseRemediations in this namespace only (the chart "
        "passes its own: the operator may write their status and Events there); default: all",
    )
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    api = api_client(pool_size=args.workers + 4)
    if args.apply_crds:
        hooks.apply_crds(api)
        return 0
    if args.stop_agents:
        namespace, _, name = args.stop_agents.partition("/")
        hooks.stop_agents(api, namespace, name)
        return 0
    if not args.standalone:
        ensure_peering(api, args.peering, create=args.create_peering)
    metrics.start(args.metrics_port)
    kube = Kube(api)
    runtime = handlers.Runtime(
        kube=kube,
        allocator=Allocator(kube),
        workers=args.workers,
        remediation_namespace=args.remediation_namespace,
    )
    kopf.run(
        clusterwide=True,
        standalone=args.standalone,
        priority=args.priority if args.priority is not None else default_priority(),
        peering_name=None if args.standalone else args.peering,
        identity=peering_identity(),
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(runtime=runtime),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
