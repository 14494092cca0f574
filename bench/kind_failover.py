"""Failover and the rolling-upgrade window of vmlease installed by its chart on a kind cluster.

    .venv/bin/python bench/kind_failover.py     (or: bench/run.py kind_failover)

Without a cluster it runs itself through ``tests/e2e/run.sh --bench``, which builds and installs
everything as the e2e tier does (three workers sharing one host directory, each with a file-backed
watchdog whose harness on the host ``docker kill``s the node when starved); about 15 minutes here.
Two settings, one after the other on the same cluster:

* tuned: Lockspace ``e2e`` of tests/e2e/values-kind.yaml, N = 2 s, W = 10 s;
* defaults: the Lockspace ``e2e`` deleted (an agent may not run with a W above any Lockspace
  selecting its node), the agents upgraded to the chart's default W = 60 s, and a Lockspace with
  the CRD's defaults, N = 10 s and W = 60 s.

For each, two figures beside their bounds:

* **upgrade window**: ``helm upgrade`` of an agent value while a holder runs on every worker; each
  node's longest time without a feeding agent (its device file, sampled every 0.2 s) beside W, at
  which the node would be reset;
* **failover**: a worker holding a lease freezes (``docker pause``); its harness resets it W after
  its last keepalive; a holder retrying on another worker gets the lease. The timeline from the
  frozen node's last renewal: reset, takeover; beside our safe time 8N + W and the reference,
  sanlock's 8N + 60 at the same N (its watchdog fire timeout is fixed at 60 s).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from e2e.cluster import (  # noqa: E402
    GROUP,
    VERSION,
    Kind,
    Watchdogs,
    holder,
    lease_dump,
    wait_for,
)
from vmlease_agent.engine.clock import boottime  # noqa: E402

TAG = secrets.token_hex(2)
LABELS = {"vmlease.io/bench": TAG}
#: sanlock's watchdog fire timeout: fixed, so its failover bound at io_timeout N is 8N + 60.
SANLOCK_W = 60


@dataclass
class Setting:
    name: str
    lockspace: str
    n: int
    w: int

    @property
    def safe(self) -> int:
        return 8 * self.n + self.w


def connect() -> tuple[Kind, Watchdogs]:
    kind = Kind(
        cluster=os.environ["VMLEASE_E2E_CLUSTER"],
        namespace=os.environ["VMLEASE_E2E_NAMESPACE"],
        kubectl_path=os.environ["VMLEASE_E2E_KUBECTL"],
        shared_dir=os.environ["VMLEASE_E2E_SHARED"],
        helm_path=os.path.join(os.path.dirname(os.environ["VMLEASE_E2E_KUBECTL"]), "helm"),
    )
    context = kind.kubectl("config", "current-context").stdout.strip()
    if context != f"kind-{kind.cluster}":
        sys.exit(f"refusing to run against context {context!r}, not kind-{kind.cluster}")
    dogs = Watchdogs(kind.cluster, os.environ["VMLEASE_E2E_WATCHDOGS"])
    for node in kind.workers():
        dogs.start(node)
    return kind, dogs


def host_ids(kind: Kind, lockspace: str) -> dict[str, int]:
    return {n: o["spec"]["hostId"] for n, o in kind.hostids(lockspace).items()}


def wait_live(kind: Kind, lockspace: str, nodes: list[str], timeout: float) -> None:
    def live() -> bool:
        states = {
            n: (o.get("status") or {}).get("state") for n, o in kind.hostids(lockspace).items()
        }
        return all(states.get(n) == "Live" for n in nodes)

    wait_for(live, timeout, f"{', '.join(nodes)} Live in {lockspace}")


def hold(kind: Kind, s: Setting, node: str, lease: str) -> tuple[str, str, str]:
    """A holder of a new lease ``lease`` on ``node``: (pod name, lease file on the host,
    resource string)."""
    resource = kind.init_lease(node, s.lockspace, lease, LABELS)
    name = kind.run_pod(holder(f"{lease}-{TAG}", node, resource, LABELS))
    return name, f"{kind.shared_dir}/leases/{lease}.lease", resource


def owner(path: str) -> int | None:
    rows = lease_dump(path)
    return rows[0]["owner"] if rows else None


def drop_holders(kind: Kind, dogs: Watchdogs, nodes: list[str]) -> None:
    """Delete every holder pod of this run (without waiting: one may be on a node that is down)
    and wait until the watchdogs of ``nodes`` are disarmed."""
    kind.kubectl("delete", "pods", "-n", kind.namespace, "-l", f"vmlease.io/bench={TAG}",
                 "--grace-period=1", "--wait=false")  # fmt: skip
    for node in nodes:
        wait_for(lambda n=node: not dogs.armed(n), 60, f"{node}'s watchdog disarmed")


def upgrade_window(kind: Kind, dogs: Watchdogs, s: Setting, value: str) -> dict[str, float]:
    """Holders on every worker, ``helm upgrade --set value``: each node's longest gap without a
    feeding agent while the DaemonSet replaces them."""
    workers = kind.workers()
    ids = host_ids(kind, s.lockspace)
    held = {node: hold(kind, s, node, f"w{i}-{s.name}") for i, node in enumerate(workers)}
    for node, (_, path, _) in held.items():
        wait_for(lambda p=path, n=node: owner(p) == ids[n], 120, f"the holder on {node}")
    with dogs.feed_gaps(workers) as windows:
        kind.helm("upgrade", "--set", value)
        kind.kubectl("rollout", "status", "daemonset/vmlease-agent", "-n", kind.namespace,
                     "--timeout=900s", timeout=960)  # fmt: skip
    for node, (name, _, _) in held.items():
        (state,) = kind.get("pod", name, "-n", kind.namespace)["status"]["containerStatuses"]
        assert "running" in state["state"], f"the upgrade disturbed the holder on {node}: {state}"
    print(f"{s.name}: longest gap without a feeding agent: {windows}", flush=True)
    drop_holders(kind, dogs, workers)
    return windows


def failover(kind: Kind, dogs: Watchdogs, s: Setting, victim: str, taker: str) -> dict[str, float]:
    """Seconds after the victim's last renewal: its last keepalive, its reset, the takeover."""
    ids = host_ids(kind, s.lockspace)
    _, path, resource = hold(kind, s, victim, f"f-{s.name}")
    wait_for(lambda: owner(path) == ids[victim], 120, f"the holder on {victim}")
    time.sleep(s.n)  # a renewal or two with the lease held
    kind.docker("pause", victim)
    kind.run_pod(holder(f"t-{s.name}-{TAG}", taker, resource, LABELS, retry=True))

    def taken() -> float | None:
        return time.monotonic() if owner(path) == ids[taker] else None

    taken_at = wait_for(taken, s.safe + 240, f"the lease taken on {taker}", every=0.2)
    lockspace_file = f"{kind.shared_dir}/lockspaces/{s.lockspace}"
    last_renewal = next(r["timestamp"] for r in lease_dump(lockspace_file) if r["name"] == victim)
    fired = dogs.fired(victim)[-1]
    to_monotonic = time.monotonic() - boottime()
    out = {
        "keepalive": fired["fed_at"] + to_monotonic - last_renewal,
        "reset": fired["reset_done_at"] + to_monotonic - last_renewal,
        "taken": taken_at - last_renewal,
    }
    print(f"{s.name}: failover after {victim}'s last renewal: {out}", flush=True)
    assert out["reset"] < out["taken"] and out["taken"] >= s.safe, out
    return out


def restart(kind: Kind, dogs: Watchdogs, node: str, lockspace: str, s: Setting) -> None:
    dogs.start(node, reboot=True)
    kind.docker("start", node)
    wait_live(kind, lockspace, [node], 300 + s.safe)


def main() -> int:
    if not os.environ.get("VMLEASE_E2E_CLUSTER"):
        os.chdir(REPO)
        os.execvp("bash", ["bash", "tests/e2e/run.sh", "--bench"])
    kind, dogs = connect()
    w1, w2, w3 = kind.workers()
    tuned = Setting("tuned", "e2e", 2, 10)
    defaults = Setting("defaults", "bench-defaults", 10, 60)
    results: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    try:
        wait_live(kind, tuned.lockspace, [w1, w2, w3], 300)
        window = upgrade_window(kind, dogs, tuned, "agent.logLevel=DEBUG")
        results[tuned.name] = (window, failover(kind, dogs, tuned, w1, w3))
        drop_holders(kind, dogs, [w3])
        restart(kind, dogs, w1, tuned.lockspace, tuned)
        # The defaults: the agents' W and the Lockspace's N and W as the chart and CRD set them.
        kind.kubectl("delete", "lockspace", tuned.lockspace, "--wait=false")
        wait_for(lambda: not kind.hostids(tuned.lockspace), 300, "the e2e Lockspace's ids freed")
        # and the Lockspace itself gone (kopf removes its finalizer on the delete handler's next
        # retry): agents started at W = 60 while it exists refuse it and stay unready, which
        # held the rollout below for its whole 900 s in the first defaults run
        wait_for(lambda: not kind.lockspace_exists(tuned.lockspace), 120, "the e2e Lockspace gone")
        # lockspaces=[]: the release was installed with values-kind.yaml's Lockspace e2e, and
        # --reuse-values would create it again (W = 10, which agents at W = 60 refuse, staying
        # unready: what held the rollout in the first two defaults runs)
        kind.helm("upgrade", "--set", "agent.watchdog.fireTimeoutSeconds=60",
                  "--set-json", "lockspaces=[]")  # fmt: skip
        kind.kubectl("rollout", "status", "daemonset/vmlease-agent", "-n", kind.namespace,
                     "--timeout=900s", timeout=960)  # fmt: skip
        kind.apply({
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Lockspace",
            "metadata": {"name": defaults.lockspace},
            "spec": {"path": f"lockspaces/{defaults.lockspace}",
                     "nodeSelector": {"matchLabels": {"vmlease.io/vm-host": "true"}}},
        })  # fmt: skip
        wait_live(kind, defaults.lockspace, [w1, w2, w3], 300)
        window = upgrade_window(kind, dogs, defaults, "agent.logLevel=INFO")
        results[defaults.name] = (window, failover(kind, dogs, defaults, w2, w3))
    finally:
        dogs.stop()
        with contextlib.suppress(Exception):
            subprocess.run(["docker", "unpause", w1, w2], capture_output=True, timeout=30)
    print("\nvmlease installed by its chart on kind: 3 workers, one shared host directory, "
          "a watchdog harness per node (reset = docker kill)")  # fmt: skip
    print("\nupgrade window: helm upgrade with a holder on every worker; each node's longest "
          "time without a feeding agent (the node is reset at W)")  # fmt: skip
    for s in (tuned, defaults):
        gaps = ", ".join(f"{w:.1f}" for w in results[s.name][0].values())
        print(f"  {s.name:9} N={s.n:<3} W={s.w:<3} {gaps} s")
    print("\nfailover: a worker holding a lease frozen; seconds after its last renewal")
    print(f"  {'setting':9} {'N':>3} {'W':>3} {'keepalive':>10} {'reset':>7} {'taken':>7} "
          f"{'vmlease 8N+W':>13} {'sanlock 8N+60':>14}")  # fmt: skip
    for s in (tuned, defaults):
        fo = results[s.name][1]
        print(f"  {s.name:9} {s.n:>3} {s.w:>3} {fo['keepalive']:>10.1f} {fo['reset']:>7.1f} "
              f"{fo['taken']:>7.1f} {s.safe:>13} {8 * s.n + SANLOCK_W:>14}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
