"""The model's fakes (tests/model/sim.py) behave as O_DIRECT storage does: a completed write is
visible to every later read, a failing write lands only whole sectors, and an abandoned write
lands late, through directio's real guard."""

from __future__ import annotations

import pytest
from vmlease_agent.engine import errors
from vmlease_agent.engine.directio import WriteGuard

from model.sim import SIZES, Actor, Faults, Sim, SimDisk, SimHost, SimStorage

SS = SIZES.sector_size


def test_completed_write_is_visible_to_later_reads():
    disk = SimDisk(4 * SS)
    disk.write(SS, b"\1" * SS)
    assert disk.read(SS, SS) == b"\1" * SS and disk.read(0, SS) == bytes(SS)


def test_torn_write_lands_whole_sectors_only():
    disk = SimDisk(4 * SS)
    disk.write(0, b"\1" * SS + b"\2" * SS + b"\3" * SS, sectors={0, 2})
    assert disk.read(0, 3 * SS) == b"\1" * SS + bytes(SS) + b"\3" * SS
    with pytest.raises(AssertionError):
        disk.write(100, b"\1" * SS)  # never a partial sector


def _one_write(seed: int, faults: Faults) -> tuple[Sim, list]:
    """One actor writes a sector, then writes it again; returns what each write raised."""
    sim = Sim(seed, hosts=0, resources=1, faults=faults)
    host = SimHost(9, 0.0)
    st = SimStorage(sim, host, WriteGuard())
    outcomes: list = []

    def body() -> None:
        for byte in (b"\1", b"\2"):
            try:
                st.write(SIZES.align_size, byte * SS, 1)
                outcomes.append(None)
            except errors.LeaseError as e:
                outcomes.append(type(e))
            sim.sleep(0.01)

    actor = Actor(sim, host, "writer", body)
    sim.at(0.0, "resume", (actor, None))
    sim.run()
    actor.kill()
    return sim, outcomes


def test_abandoned_write_lands_late_and_fences_our_next_write():
    for seed in range(100):
        sim, outcomes = _one_write(seed, Faults(timeout=1.0, never=0.0, late_max=5.0))
        if sim.stats["late"]:
            break
    else:
        pytest.fail("no abandoned write in 100 seeds")
    assert outcomes[0] is errors.IoTimeout
    assert outcomes[1] is errors.WriteAbandoned  # refused: the first may still land
    assert sim.disk.read(SIZES.align_size, SS) == b"\1" * SS  # ...and it did, late
