"""``vmlease-operator``: run the kopf operator cluster-wide, with peering, liveness and metrics.

Two replicas (the chart's default) use kopf peering through a ``ClusterKopfPeering`` named
``vmlease-operator`` (CRD in ``crds/kopf.dev_clusterkopfpeerings.yaml``; the operator creates the
object itself when it is missing): only the highest-priority replica handles events, the other
waits. Replicas must have distinct priorities — equal ones make both freeze — so the default is
derived from the pod IP (``POD_IP``, downward API) or else random. Peering only saves work:
allocation stays safe with both replicas active (see ``hostid_writes``), which ``--standalone``
allows for tests.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import random
import socket
import sys

import kopf
from kopf._core.engines.peering import Identity  # the type kopf.run takes; kopf's own CLI uses it
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from vmlease_api.errors import Conflict, NotFound

from vmlease_operator import handlers, metrics
from vmlease_operator.hostid_writes import Allocator
from vmlease_operator.kube import Kube, api_client, translate

PEERING_NAME = "vmlease-operator"


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


def ensure_peering(api: client.ApiClient, name: str) -> None:
    """Create the ClusterKopfPeering object if missing; kopf refuses to start without it."""
    objects = client.CustomObjectsApi(api)
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        objects.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body)
    except ApiException as error:
        answer = translate(error)
        if isinstance(answer, Conflict):  # it exists already
            return
        if isinstance(answer, NotFound):
            raise SystemExit(
                "vmlease-operator: the ClusterKopfPeering CRD is missing: apply "
                "crds/kopf.dev_clusterkopfpeerings.yaml, or run a single replica with --standalone"
            ) from error
        raise answer from error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vmlease-operator", description=__doc__.splitlines()[0])
    parser.add_argument("--standalone", action="store_true", help="no peering (one replica)")
    parser.add_argument("--priority", type=int, default=None, help="peering priority")
    parser.add_argument("--peering", default=PEERING_NAME, help="ClusterKopfPeering name")
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint URL ('' to disable)",
    )
    parser.add_argument("--metrics-port", type=int, default=9090, help="0 disables /metrics")
    parser.add_argument("--workers", type=int, default=16, help="concurrent API calls")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    api = api_client(pool_size=args.workers + 4)
    if not args.standalone:
        ensure_peering(api, args.peering)
    metrics.start(args.metrics_port)
    kube = Kube(api)
    runtime = handlers.Runtime(kube=kube, allocator=Allocator(kube), workers=args.workers)
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
