"""What a request does to a holder (sanlock ``do_request``), and when it is pending."""

from __future__ import annotations

import pytest
from vmlease_agent.core import fencing, requests
from vmlease_agent.core.lockspace import JoinedLockspace, LockspaceConfig
from vmlease_agent.engine import errors, ondisk
from vmlease_agent.engine.clock import FakeClock
from vmlease_agent.engine.ondisk import RequestRecord


def test_only_a_request_for_a_newer_version_with_a_force_mode_is_pending():
    assert requests.pending(RequestRecord(lver=5, force_mode=1), held_lver=4)
    assert not requests.pending(RequestRecord(lver=4, force_mode=1), held_lver=4)  # old news
    assert not requests.pending(RequestRecord(lver=5, force_mode=0), held_lver=4)  # cleared


def test_force_kills_graceful_runs_the_kill_command_or_terminates():
    assert requests.action(requests.FORCE, has_kill_command=True).kind == fencing.KILL
    assert requests.action(requests.GRACEFUL, has_kill_command=True).kind == fencing.COMMAND
    assert requests.action(requests.GRACEFUL, has_kill_command=False).kind == fencing.TERM


@pytest.mark.parametrize("mode", [3, -1])
def test_an_unknown_force_mode_is_refused_naming_the_choices(mode):
    with pytest.raises(errors.InvalidArgument, match=r"must be 1 \(force"):
        requests.check_mode(mode)


def test_a_notified_hosts_bit_is_carried_for_6n_then_dropped(tmp_path):
    """6N: the owner scans every 2N, so it reads at least two renewals carrying its bit."""
    path = tmp_path / "ls"
    path.write_bytes(bytes(1 << 20))
    clock = FakeClock(start=100)
    cfg = LockspaceConfig("ls", 1, str(path), 0, io_timeout=2)
    ls = JoinedLockspace(cfg, "n1", 60, clock=clock)
    try:
        assert not any(ls.carried_bitmap(clock.now()))
        ls.notify(5)
        clock.advance(11.9)
        bitmap = ls.carried_bitmap(clock.now())
        assert ondisk.bitmap_test(bitmap, 5) and not ondisk.bitmap_test(bitmap, 4)
        clock.advance(0.2)
        assert not any(ls.carried_bitmap(clock.now()))
    finally:
        ls.stop(release=False)
