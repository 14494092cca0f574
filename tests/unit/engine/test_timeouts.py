"""Timeout formulas (sanlock 3.8.5 src/timeouts.c) and the ordering they must guarantee."""

from __future__ import annotations

import pytest
from vmlease_agent.engine import timeouts as t


@pytest.mark.parametrize(
    ("n", "renew", "warn", "fail", "dead", "short", "bitmap"),
    [(10, 20, 60, 80, 140, 20, 60), (2, 4, 12, 16, 76, 4, 12), (1, 2, 6, 8, 68, 2, 6)],
)
def test_formulas_match_sanlocks_table(n, renew, warn, fail, dead, short, bitmap):
    assert t.id_renewal_seconds(n) == renew
    assert t.id_renewal_warn_seconds(n) == warn
    assert t.id_renewal_fail_seconds(n) == fail
    assert t.host_dead_seconds(n) == dead
    assert t.delta_acquire_held_wait(n) == dead  # max(8N+60, 2N+6N)
    assert t.delta_short_delay(n) == short
    assert t.set_bitmap_seconds(n) == bitmap


def test_sanlock_constants():
    assert t.SANLOCK_WATCHDOG_FIRE_TIMEOUT == 60
    assert t.DEFAULT_IO_TIMEOUT == 10
    assert t.MAX_IO_TIMEOUT == 255
    assert t.paxos_owner_poll_seconds() == 1.0
    assert t.ballot_retry_max_sleep() == 1.0


def test_host_dead_uses_the_judged_hosts_watchdog_timeout():
    assert t.host_dead_seconds(1, 20) == 28
    assert t.host_dead_seconds(10, 30) == 110
    assert t.delta_acquire_held_wait(1, 20) == 28
    assert t.delta_acquire_held_wait(10, 1) == 81  # never below 2N + 6N = 8N ... plus W


@pytest.mark.parametrize(("w", "grace"), [(60, 40), (30, 20), (20, 13), (3, 2), (2, 1), (1, 1)])
def test_kill_grace(w, grace):
    assert t.kill_grace_seconds(w) == grace


def test_timeline_ordering_safety():
    """For every N and W: a failing host stops feeding its watchdog (8N) before others may take
    its leases (8N + W); its holders get SIGKILLed (8N + G) before the watchdog fires (G < W);
    the delta-acquire wait is at least host_dead_seconds; renewals happen well before failure."""
    for n in range(1, t.MAX_IO_TIMEOUT + 1):
        assert t.id_renewal_seconds(n) < t.id_renewal_warn_seconds(n) < t.id_renewal_fail_seconds(n)
        for w in range(2, 121):
            dead = t.host_dead_seconds(n, w)
            assert dead > t.id_renewal_fail_seconds(n)
            assert t.delta_acquire_held_wait(n, w) >= dead
            assert 1 <= t.kill_grace_seconds(w) < w
            assert t.id_renewal_fail_seconds(n) + t.kill_grace_seconds(w) < dead
