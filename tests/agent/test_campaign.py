"""The agent-level campaign (``campaign.py``): real agents, random faults, one invariant.

Two holders of one lease never write at the same time. ``VMLEASE_CAMPAIGN_SEED`` replays a seed,
``VMLEASE_CAMPAIGN_SECONDS`` bounds the run with faults (``make torture`` runs it longer).
"""

from __future__ import annotations

import os

import pytest

from .campaign import Campaign, Interval, campaign_seed, overlaps

FAULT_SECONDS = float(os.environ.get("VMLEASE_CAMPAIGN_SECONDS", "150"))


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


def test_oracle_accepts_adjacent_writers():
    ivs = [
        Interval("r0", "h1", "node-a", 10.0, 20.0),
        Interval("r0", "h2", "node-b", 20.001, 30.0),
        Interval("r0", "h3", "node-a", 30.0005, 31.0),
    ]
    assert overlaps(ivs) == []


def _run(tmp_path_factory, seconds: float, faults: bool) -> None:
    work = str(tmp_path_factory.mktemp("campaign", numbered=True))  # disk: O_DIRECT
    c = Campaign(work, campaign_seed(), faults=faults)
    try:
        c.start()
        c.run(seconds)
    finally:
        c.close()
    violations, summary = c.verdict()
    print(summary)
    assert not violations, c.report(violations)
    assert not c.anomalies, c.report(violations)
    assert c.counts["acquisitions"] > 0, summary


@pytest.mark.slow
@pytest.mark.timeout(60 + 240)
def test_campaign_without_faults_safety(tmp_path_factory):
    _run(tmp_path_factory, 60, faults=False)


@pytest.mark.slow
@pytest.mark.timeout(int(FAULT_SECONDS) + 300)
def test_campaign_with_faults_safety(tmp_path_factory):
    _run(tmp_path_factory, FAULT_SECONDS, faults=True)
