"""A watchdog that records what the agent does to it, on one timeline with other events.

It keeps the one property of a real device the agent's safety rests on: the moment it would
reset the node (``fires_at``: the last arm/keepalive/shorten + the timeout then in force; closing
without the magic character counts as a keepalive, as on Linux), so tests can compare that
moment with the deadlines other hosts count from.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from vmlease_agent.engine.clock import boottime


@dataclass
class RecordingWatchdog:
    fire_timeout: int
    timeline: list[tuple[str, float, int | None]] = field(default_factory=list)
    armed: bool = False
    timeout: int = 0  # what the device runs with now
    fed_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, op: str, seconds: int | None = None) -> None:
        self.timeline.append((op, boottime(), seconds))

    def ops(self) -> list[str]:
        return [op for op, _, _ in self.timeline]

    def when(self, op: str) -> list[float]:
        return [at for o, at, _ in self.timeline if o == op]

    @property
    def fires_at(self) -> float | None:
        return self.fed_at + self.timeout if self.armed or self.timeout else None

    def arm(self) -> None:
        with self._lock:
            if not self.armed:
                self.armed, self.timeout, self.fed_at = True, self.fire_timeout, boottime()
            self._record("arm")

    def keepalive(self, seconds: int | None = None) -> None:
        with self._lock:
            assert self.armed, "keepalive on a watchdog that is not armed"
            want = self.fire_timeout if seconds is None else min(seconds, self.fire_timeout)
            self.timeout, self.fed_at = want, boottime()
            self._record("keepalive", want)

    def shorten(self, seconds: int) -> None:
        with self._lock:
            if self.armed and 1 <= seconds < self.timeout:
                self.timeout, self.fed_at = seconds, boottime()
                self._record("shorten", seconds)

    def disarm(self) -> None:
        with self._lock:
            if self.armed:
                self.armed, self.timeout = False, 0
                self._record("disarm")

    def abandon(self) -> None:
        with self._lock:
            if self.armed:
                self.armed, self.fed_at = False, boottime()  # the close is a keepalive
                self._record("abandon", self.timeout)
