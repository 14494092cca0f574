"""Events: one per real transition, named reasons, messages that name node, id and lockspace."""

from __future__ import annotations

import datetime

import pytest
from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import HostState, LeasePhase
from vmlease_operator import events, metrics


def _rec(state: HostState | None, **kw) -> HostIdRecord:
    return HostIdRecord(name="ls.3", lockspace="ls", node="n1", host_id=3, state=state, **kw)


def test_allocation_event_names_node_id_and_lockspace():
    event = events.allocated(_rec(None), conflicts=2)
    assert (event.type, event.reason) == ("Normal", "HostIdAllocated")
    assert event.message == "node n1 got host_id 3 in lockspace ls after 2 id(s) taken concurrently"


@pytest.mark.parametrize(
    ("old", "new", "reason", "on_node"),
    [
        (HostState.JOINING, HostState.LIVE, events.LOCKSPACE_JOINED, False),
        (HostState.LIVE, HostState.FAILING, events.FENCING_STARTED, True),
        (HostState.FAILING, HostState.DEAD, events.HOST_DEAD, True),
        (HostState.LIVE, HostState.FREE, events.LOCKSPACE_LEFT, False),
        (HostState.FAILING, HostState.LIVE, events.LOCKSPACE_JOINED, False),
    ],
)
def test_host_transitions(old, new, reason, on_node):
    event = events.host_transition(old, _rec(new), failover_seconds=18)
    assert event.reason == reason and event.on_node is on_node
    assert "node n1 (host_id 3) in lockspace ls" in event.message


def test_fencing_started_says_when_the_node_is_reset_at_the_latest():
    last = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
    event = events.host_transition(HostState.LIVE, _rec(HostState.FAILING, last_renewal=last), 18)
    assert event is not None and "by 2026-12-06T12:00:18+00:00 (last renewal + 18 s)" in (
        event.message
    )


def test_no_event_without_a_transition():
    assert events.host_transition(HostState.LIVE, _rec(HostState.LIVE), 18) is None
    assert events.host_transition(None, _rec(None), 18) is None
    assert events.host_transition(None, _rec(HostState.JOINING), 18) is None


def _view(phase, node=None, host_id=None, owner=None) -> events.LeaseView:
    return events.LeaseView(phase=phase, node=node, host_id=host_id, owner=owner)


HELD = _view(LeasePhase.HELD, "n1", 1)


def test_lease_move_names_both_holders():
    old = _view(LeasePhase.HELD, "n1", 1, "vm1")
    new = _view(LeasePhase.HELD, "n2", 2, "vm1")
    event = events.lease_transition("ls.abc", old, new)
    assert event.reason == events.LEASE_MOVED and event.on_node  # on n1: taken over from it
    assert event.message == (
        "lease ls.abc moved from node n1 (host_id 1, vm1) to node n2 (host_id 2, vm1)"
    )


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (_view(LeasePhase.FREE), _view(LeasePhase.HELD, "n1", 1), events.LEASE_ACQUIRED),
        (_view(LeasePhase.HELD, "n1", 1), _view(LeasePhase.FREE), events.LEASE_RELEASED),
        (
            _view(LeasePhase.HELD, "n1", 1),
            _view(LeasePhase.ORPHANED, "n1", 1),
            events.LEASE_ORPHANED,
        ),
        (
            _view(LeasePhase.HELD, "n1", 1),
            _view(LeasePhase.CONTENDED, "n1", 1),
            events.LEASE_CONTENDED,
        ),
        (_view(LeasePhase.HELD, "n1", 1), _view(LeasePhase.HELD, "n1", 1), None),
    ],
)
def test_lease_transitions(old, new, reason):
    event = events.lease_transition("ls.abc", old, new)
    assert (event.reason if event else None) == reason
    if event is not None:  # said on the holder's Node too where it concerns the machine
        assert event.on_node is (reason == events.LEASE_ORPHANED)


def test_disklease_phases_are_counted_per_lockspace_and_left_phases_drop_to_zero():
    def count(lockspace: str, phase: str) -> float | None:
        for family in metrics.DISKLEASES.collect():
            for sample in family.samples:
                if sample.labels == {"lockspace": lockspace, "phase": phase}:
                    return sample.value
        return None

    for name, phase in (("cnt.vm1", "Held"), ("cnt.vm2", "Orphaned"), ("cnt.vm3", "Orphaned")):
        metrics.count_disklease(name, phase, 1)
    assert count("cnt", "Orphaned") == 2 and count("cnt", "Held") == 1
    metrics.count_disklease("cnt.vm2", "Orphaned", -1)  # taken over: Held again
    metrics.count_disklease("cnt.vm2", "Held", 1)
    metrics.count_disklease("cnt.vm3", "Orphaned", -1)  # deleted
    assert count("cnt", "Orphaned") == 0 and count("cnt", "Held") == 2
