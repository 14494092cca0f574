"""One way for every tier to wait for a condition: poll until it holds, or fail naming it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    every: float = 0.05,
    describe: Callable[[], object] | None = None,
) -> T:
    """Poll ``check`` every ``every`` seconds until it returns something truthy, and return
    that; after ``timeout`` seconds fail naming ``what`` (and what ``describe`` says of the
    state at the end, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(every)
