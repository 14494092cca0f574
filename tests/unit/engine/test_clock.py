"""The clock the algorithms run on, and the fake that lets tests run protocol time instantly:
the fake is checked against the real clock (same accounting of time for the same algorithm)."""

from __future__ import annotations

import threading
import time

import pytest
from leasekit import make_lockspace
from vmlease_agent.engine import clock as clock_module
from vmlease_agent.engine.clock import REAL_CLOCK, Aborted, Clock, FakeClock, boottime


def test_monotime_is_whole_boot_time_seconds():
    before = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    m = Clock().monotime()
    after = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    assert isinstance(m, int)
    assert before <= m <= after


def test_deadlines_count_suspended_time_safety(monkeypatch):
    """A suspend must not stop our clock (CLOCK_MONOTONIC does): peers keep counting, so after
    resume our deadlines must have moved on by the suspended time, never less."""
    real = time.clock_gettime
    suspended = 600.0

    def after_suspend(clk: int) -> float:
        return real(clk) + (suspended if clk == time.CLOCK_BOOTTIME else 0.0)

    monkeypatch.setattr(clock_module.time, "clock_gettime", after_suspend)
    assert Clock().now() - time.monotonic() >= suspended - 1
    assert boottime() - time.monotonic() >= suspended - 1


def test_monotime_is_never_zero_because_zero_means_free():
    assert FakeClock(start=0.2).monotime() == 1
    assert FakeClock(start=0.0).monotime() == 1
    assert FakeClock(start=5.9).monotime() == 5


def test_real_sleep_is_cut_short_by_abort():
    abort = threading.Event()
    threading.Timer(0.1, abort.set).start()
    t0 = boottime()
    with pytest.raises(Aborted):
        REAL_CLOCK.sleep(10, abort)
    assert boottime() - t0 < 2


def test_real_sleep_sleeps():
    t0 = boottime()
    REAL_CLOCK.sleep(0.2, threading.Event())
    REAL_CLOCK.sleep(0)
    REAL_CLOCK.sleep(-1)
    assert 0.2 <= boottime() - t0 < 1


def test_fake_sleep_advances_time_and_runs_hooks():
    clock = FakeClock(start=100)
    seen = []
    clock.on_sleep.append(lambda c: seen.append(c.now()))
    clock.sleep(2.5)
    clock.sleep(-3)  # never goes back in time
    clock.advance(1)
    assert clock.now() == 103.5
    assert clock.sleeps == [2.5, -3]
    assert seen == [102.5, 102.5]


def test_fake_sleep_honours_abort():
    clock = FakeClock()
    abort = threading.Event()
    abort.set()
    with pytest.raises(Aborted):
        clock.sleep(1, abort)
    assert clock.now() == 1000.0


def test_fake_clock_accounts_time_like_the_real_clock(lease_dir):
    """The same delta-lease acquire (io_timeout 1: waits 2N = 2 s) on both clocks: the fake's
    elapsed time equals the real elapsed time, up to the I/O time the fake does not count."""
    ls = make_lockspace(lease_dir)
    fake = FakeClock(start=boottime())
    fake_start = fake.now()
    ls.lease(1, fake, name="a").acquire()
    fake_elapsed = fake.now() - fake_start

    real = Clock()
    t0 = real.now()
    rec = ls.lease(2, real, name="b").acquire()
    real_elapsed = real.now() - t0
    assert fake_elapsed == 2.0
    assert fake_elapsed <= real_elapsed < fake_elapsed + 0.5
    # and both write the same kind of timestamp: whole boot-time seconds near "now"
    assert abs(rec.timestamp - boottime()) <= 3
