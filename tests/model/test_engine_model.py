"""The model-based test of the engine (tests/model/sim.py): seeded schedules of several hosts
running the real delta and paxos code over a faulty simulated disk, checked by an oracle.

Environment: VMLEASE_MODEL_SCHEDULES (default 400) and VMLEASE_MODEL_SECONDS (default 45) bound
the run; VMLEASE_MODEL_SEED=S replays one schedule; VMLEASE_MODEL_FIRST=S starts the range at S.
"""

from __future__ import annotations

import os
import time

import pytest
from vmlease_agent.engine.directio import WriteGuard

from model.sim import Faults, Sim

SCHEDULES = int(os.environ.get("VMLEASE_MODEL_SCHEDULES", "400"))
SECONDS = float(os.environ.get("VMLEASE_MODEL_SECONDS", "45"))
FIRST = int(os.environ.get("VMLEASE_MODEL_FIRST", "0"))
REPLAY = os.environ.get("VMLEASE_MODEL_SEED")

#: dblock writes stall often and land soon after being abandoned: the item-5 race
LATE_WRITES = Faults(lease_write_timeout=0.3, late_max=1.0, latency=0.2, pause=0.2)


def _report(sim: Sim) -> str:
    return (
        f"seed {sim.seed} ({sim.faults}) at t={sim.now:.3f}: "
        f"{sim.oracle.violations + sim.failures}; replay with VMLEASE_MODEL_SEED={sim.seed}"
    )


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 300)  # each schedule is bounded; the run stops after SECONDS
def test_no_lease_is_ever_held_by_two_hosts_safety():
    seeds = [int(REPLAY)] if REPLAY else range(FIRST, FIRST + SCHEDULES)
    deadline = time.monotonic() + SECONDS
    runs = 0
    totals: dict[str, int] = {}
    for seed in seeds:
        sim = Sim(seed).run()
        runs += 1
        for k, v in sim.stats.items():
            totals[k] = totals.get(k, 0) + v
        assert not sim.oracle.violations and not sim.failures, _report(sim)
        if time.monotonic() > deadline:
            break
    print(f"\nmodel: {runs} schedules (seeds {FIRST}..{FIRST + runs - 1}), {totals}")
    assert REPLAY or runs >= min(SCHEDULES, 100)
    assert REPLAY or totals["acquired"] > 10 * runs // 2  # the schedules do contend


@pytest.mark.slow
def test_late_write_profile_holds_with_the_guard_safety():
    for seed in range(40):
        sim = Sim(seed, resources=1, faults=LATE_WRITES).run()
        assert not sim.oracle.violations and not sim.failures, _report(sim)


class _NoGuard(WriteGuard):
    """directio's guard switched off: abandoned writes are never marked, so never fence."""

    def abandon(self, write) -> None:
        pass


def test_model_catches_the_late_abandoned_write_without_the_guard():
    """The oracle must see item 5's two owners when the guard is off (a model that cannot fail
    is a defect). The simulation is deterministic per seed: seed 542 of this profile does it
    (found by scanning seeds with the guard off; a change of the engine's I/O pattern changes
    every schedule, so then scan again, looping over seeds with ``Sim(seed, resources=1,
    faults=LATE_WRITES, guard_cls=_NoGuard)``, and update the seed)."""
    sim = Sim(542, resources=1, faults=LATE_WRITES, guard_cls=_NoGuard).run()
    assert sim.oracle.violations, "without the guard seed 542 no longer fails: the model is blind"
    assert "has two owners" in sim.oracle.violations[0]
    with_guard = Sim(542, resources=1, faults=LATE_WRITES).run()
    assert not with_guard.oracle.violations and not with_guard.failures, _report(with_guard)
