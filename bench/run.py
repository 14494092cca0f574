"""``make bench``: run the benchmarks in one go and print their tables.

Each benchmark is a script in bench/ that prints its own table (run one alone for its options,
e.g. ``.venv/bin/python bench/engine_latency.py --help``). Add a benchmark by adding its file
name to BENCHES. Names given on the command line run only those: ``bench/run.py engine_latency``.
A benchmark that fails makes the run fail, after the others have run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: In the order they run. kind_failover.py (about 15 min, builds a kind cluster) runs only when
#: named: ``bench/run.py kind_failover``.
BENCHES = [
    "engine_latency.py",
    "agent_failover.py",
    "agent_footprint.py",
    "libvirt_start.py",
    "sanlock_api.py",
]


def main(argv: list[str]) -> int:
    wanted = [n if n.endswith(".py") else f"{n}.py" for n in argv] or BENCHES
    unknown = [n for n in wanted if not os.path.exists(os.path.join(HERE, n))]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}")
        return 2
    failed = []
    for name in wanted:
        print(f"==> {name}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, os.path.join(HERE, name)]).returncode
        print(f"<== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
              f"{time.monotonic() - t0:.0f}s\n", flush=True)  # fmt: skip
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
