"""The agent-level campaign (``campaign.py``): real agents, random faults, one invariant.

Two holders of one lease never write at the same time, and a fault's holders end before another
node takes their leases. ``VMLEASE_CAMPAIGN_SEED`` replays a seed; ``VMLEASE_CAMPAIGN_SECONDS``
bounds the run with faults; ``VMLEASE_CAMPAIGN_ACQUISITIONS`` (``make torture``) ends it at that
many acquisitions instead, ``VMLEASE_CAMPAIGN_SECONDS`` then being the cap (the test fails if the
cap comes first).
"""

from __future__ import annotations

import os

import pytest

from .campaign import (
    AliveAtTakeover,
    Campaign,
    Fault,
    Interval,
    LateFence,
    campaign_seed,
    judge_faults,
    overlaps,
)

FAULT_SECONDS = float(os.environ.get("VMLEASE_CAMPAIGN_SECONDS", "150"))
ACQUISITIONS = int(os.environ.get("VMLEASE_CAMPAIGN_ACQUISITIONS", "0")) or None


def test_oracle_reports_two_overlapping_writers():
    ivs = [
        Interval("r0", "h1", "node-a", 10.0, 20.0),
        Interval("r0", "h2", "node-b", 19.5, 30.0),
        Interval("r1", "h3", "node-c", 15.0, 25.0),  # another resource: not a conflict
    ]
    found = overlaps(ivs)
    assert len(found) == 1
    v = found[0]
    assert (v.resource, v.a.holder, v.b.holder) == ("r0", "h1", "h2")
    assert "h1@node-a" in v.describe() and "h2@node-b" in v.describe()


def test_oracle_reports_a_writer_inside_another_and_a_shared_instant():
    inside = [Interval("r0", "h1", "a", 10.0, 20.0), Interval("r0", "h2", "b", 12.0, 12.0)]
    touching = [Interval("r0", "h1", "a", 10.0, 20.0), Interval("r0", "h2", "b", 20.0, 21.0)]
    assert len(overlaps(inside)) == 1
    assert len(overlaps(touching)) == 1


def test_oracle_reports_every_pair_past_a_short_one():
    ivs = [
        Interval("r0", "h1", "a", 10.0, 30.0),
        Interval("r0", "h2", "b", 11.0, 12.0),
        Interval("r0", "h3", "c", 20.0, 21.0),  # after h2 ended, still inside h1
    ]
    pairs = {(v.a.holder, v.b.holder) for v in overlaps(ivs)}
    assert pairs == {("h1", "h2"), ("h1", "h3")}


def test_oracle_accepts_adjacent_writers():
    ivs = [
        Interval("r0", "h1", "node-a", 10.0, 20.0),
        Interval("r0", "h2", "node-b", 20.001, 30.0),
        Interval("r0", "h3", "node-a", 30.0005, 31.0),
    ]
    assert overlaps(ivs) == []


def _old(**kw) -> Interval:
    d = {"first": 10.0, "last": 20.0, "ended": 20.5, "live_seen": 20.2, "how": "reset"}
    return Interval("r0", "h1", "node-a", **{**d, **kw})


def test_fault_judge_proves_a_takeover_after_the_old_holders_end():
    new = Interval("r0", "h2", "node-b", 32.0, 40.0)
    v = judge_faults(
        [Fault("agent_freeze_long", "node-a", 15.0, 30.0, ("h1",), 25.0)], [_old(), new]
    )
    assert v.violations == []
    c = v.counts
    assert (c["faults_with_holders"], c["faults_taken_over"], c["takeovers"]) == (1, 1, 1)
    assert (c["takeovers_proven_after_end"], c["takeovers_from_reset"], c["deadline_checks"]) == (
        1,
        1,
        1,
    )
    assert v.gaps == [pytest.approx(11.5)]


def test_fault_judge_reports_an_old_holder_seen_running_after_the_takeover():
    """It did not write after the takeover, but it ran, not stopped by choice: not fenced."""
    old = _old(live_seen=33.0, ended=33.1, how="exited")
    new = Interval("r0", "h2", "node-b", 32.0, 40.0)
    v = judge_faults([Fault("storage_fail", "node-a", 15.0, 30.0, ("h1",))], [old, new])
    assert len(v.violations) == 1 and isinstance(v.violations[0], AliveAtTakeover)
    assert "h1@node-a" in v.violations[0].describe()


def test_fault_judge_reports_a_holder_that_outlived_its_fault_bound():
    late = _old(last=27.0, live_seen=27.1, ended=27.2)
    faults = [Fault("storage_stall", "node-a", 15.0, 40.0, ("h1",), must_end_by=26.0)]
    v = judge_faults(faults, [late])
    assert len(v.violations) == 1 and isinstance(v.violations[0], LateFence)
    assert v.counts["faults_taken_over"] == 0


def test_fault_judge_bounds_holders_that_began_during_a_storage_fault():
    began_during = _old(first=17.0, last=27.0, live_seen=27.1, ended=27.2)
    after_bound = Interval("r1", "h9", "node-a", 26.5, 40.0)  # the lockspace was joined again
    f = Fault("storage_fail", "node-a", 15.0, 30.0, (), must_end_by=26.0, bound_all=True)
    v = judge_faults([f], [began_during, after_bound])
    assert [type(x) for x in v.violations] == [LateFence]
    assert v.violations[0].old.holder == "h1"
    f.bound_all = False  # a freeze: only holders writing when it began are bounded
    assert judge_faults([f], [began_during, after_bound]).violations == []


def test_fault_judge_counts_a_takeover_known_only_after_the_last_write():
    # released by choice (stopped at 20.1): running later is fine; its end is known late
    old = _old(ended=None, live_seen=20.1, how="stopped")
    new = Interval("r0", "h2", "node-c", 21.0, 22.0)
    same_node = Interval("r0", "h3", "node-a", 20.5, 20.8)  # not a takeover by another node
    v = judge_faults([Fault("agent_sigterm", "node-a", 15.0, 16.0, ("h1",))], [old, same_node, new])
    assert v.violations == []
    assert v.counts["takeovers_after_last_write_only"] == 1
    assert v.counts["takeovers"] == 1  # h1's; h3 started after the fault ended


def _run(tmp_path_factory, seconds: float, faults: bool, acquisitions: int | None = None) -> None:
    work = str(tmp_path_factory.mktemp("campaign", numbered=True))  # disk: O_DIRECT
    c = Campaign(work, campaign_seed(), faults=faults)
    try:
        c.start()
        c.run(seconds, acquisitions)
    finally:
        c.close()
    violations, summary = c.verdict()
    print(summary)
    assert not violations, c.report(violations)
    assert not c.anomalies, c.report(violations)
    assert c.counts["acquisitions"] > 0, summary
    assert not c.cap_hit, f"the time cap came before {acquisitions} acquisitions: {summary}"


@pytest.mark.slow
@pytest.mark.timeout(60 + 240)
def test_campaign_without_faults_safety(tmp_path_factory):
    _run(tmp_path_factory, 60, faults=False)


@pytest.mark.slow
@pytest.mark.timeout(int(FAULT_SECONDS) + 300)
def test_campaign_with_faults_safety(tmp_path_factory):
    _run(tmp_path_factory, FAULT_SECONDS, faults=True, acquisitions=ACQUISITIONS)
