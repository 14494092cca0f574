"""A campaign holder ("VM"): acquires one lease through the agent's API, then writes while it holds.

    python campaign_holder.py RUN_DIR RESOURCE LOG STATUS AT LIFETIME SEED

It sleeps until CLOCK_BOOTTIME ``AT`` (two holders given the same ``AT`` race for the lease at
the same instant), asks the agent to acquire ``RESOURCE`` for its own pid (what ``vmlease client
command`` does before it execs), and on success appends a CLOCK_BOOTTIME stamp to ``LOG`` every
20-50 ms for ``LIFETIME`` seconds, then exits (the agent releases the lease on exit). SIGUSR1
makes it stop writing first and release the lease explicitly, then live on a little without it.
``STATUS`` gets one line per outcome: ``acquired``, ``refused CODE MESSAGE``, ``stopped STAMP``
(SIGUSR1: the CLOCK_BOOTTIME after its last write, before it asks for the release),
``released``, ``release-failed MESSAGE``. Exit status 3: refused.

Every stamp is written before the lease can go (release or exit), so two holders of one lease
whose [first, last] stamps overlap were two writers at once.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

from vmlease_agent.engine.errors import LeaseError
from vmlease_agent.rpc.client import AgentClient


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def note(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line.replace("\n", " ") + "\n")


def main(argv: list[str]) -> int:
    run_dir, resource, log, status, at, lifetime, seed = argv
    rng = random.Random(int(seed))
    stop: list[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
    delay = float(at) - boottime()
    if delay > 0:
        time.sleep(delay)
    client = AgentClient(run_dir, timeout=120)
    try:
        client.call("acquire", pid=os.getpid(), resources=[resource], owner="campaign")
    except LeaseError as e:
        note(status, f"refused {e.code} {e}")
        return 3
    note(status, "acquired")
    end = boottime() + float(lifetime)
    with open(log, "a", buffering=1) as f:
        while not stop and boottime() < end:
            f.write(f"{boottime()}\n")
            time.sleep(rng.uniform(0.02, 0.05))
    if stop:  # no more writes: now the lease may go
        note(status, f"stopped {boottime()}")
        try:
            client.call("release", pid=os.getpid())
        except LeaseError as e:
            note(status, f"release-failed {e}")
        else:
            note(status, "released")
        time.sleep(rng.uniform(0.0, 1.0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
