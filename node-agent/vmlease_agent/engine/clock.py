"""Time as the lease algorithms see it: local boot-time seconds, and waits that can be aborted.

Why CLOCK_BOOTTIME and not CLOCK_MONOTONIC (sanlock's ``monotime``): CLOCK_MONOTONIC stops while
the machine is suspended, but the other hosts' clocks do not. A node suspended for ten minutes
would wake believing its lockspace deadline T + 8N still lies ahead and feed its watchdog, while
its peers, who saw it silent for 8N + W, have already taken its leases. CLOCK_BOOTTIME counts the
suspended time, so on resume every deadline has passed and fencing starts at once.

On-disk timestamps are the writer's boot-time clock in whole seconds: other hosts never compare
them with their own clock, they only watch them *change*, so this is invisible to sanlock hosts.
Zero means "free", so a timestamp is never 0 while held.

The algorithms take a ``Clock`` so tests can run hours of protocol time in milliseconds (the fake
is tested against the real one in tests/unit/engine/test_clock.py).
"""

from __future__ import annotations

import threading
import time


class Aborted(Exception):
    """A wait was cut short because the caller asked to stop (rem_lockspace, shutdown)."""


def boottime() -> float:
    """CLOCK_BOOTTIME seconds: monotonic, shared by every process of the machine, and counting
    suspended time (module docstring). Every local deadline of vmlease is on this clock."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Clock:
    """The real clock: CLOCK_BOOTTIME, and sleeps that wake early when ``abort`` is set."""

    def now(self) -> float:
        return boottime()

    def monotime(self) -> int:
        """Whole monotonic seconds, never 0 (0 is "free" on disk)."""
        return max(1, int(self.now()))

    def sleep(self, seconds: float, abort: threading.Event | None = None) -> None:
        if seconds <= 0:
            return
        if abort is None:
            time.sleep(seconds)
        elif abort.wait(seconds):
            raise Aborted()


class FakeClock(Clock):
    """Manual time for unit tests: ``sleep`` advances ``now`` instantly (and runs hooks)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []
        self.on_sleep: list = []  # callables run after each sleep (simulate other hosts)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def sleep(self, seconds: float, abort: threading.Event | None = None) -> None:
        if abort is not None and abort.is_set():
            raise Aborted()
        self.sleeps.append(seconds)
        self._now += max(0.0, seconds)
        for hook in list(self.on_sleep):
            hook(self)


REAL_CLOCK = Clock()
