"""Every timeout of vmlease, derived from two numbers, with the failure timeline they guarantee.

This module is the one place where a wait is computed; the rest of the code calls these functions.
The formulas are sanlock 3.8's (`src/timeouts.c`) so that vmlease and sanlock hosts can share a
lockspace and judge each other correctly.

The two inputs
--------------
``N`` (``io_timeout``, seconds, 1..255)
    The longest a single read or write of the lease area may take before it is abandoned and
    counted as failed. It is a property of the host that *writes* a delta lease: every host records
    its own N in its delta lease (leader ``io_timeout``), and others judge it with that value.
``W`` (``watchdog_fire_timeout``, seconds)
    How long the node's watchdog device runs after its last keepalive before it resets the node.
    sanlock 3.8.5 hard-codes 60. vmlease makes it configurable and records it in the delta lease
    (see ``ondisk`` "fire-timeout tag"); a host whose record carries no valid tag (every sanlock
    host) is judged with sanlock's 60.

The failure timeline (T = the host's last successful delta-lease renewal)
-----------------------------------------------------------------------
=============  ==========================================================================
T              last renewal written; the host renews every 2N (``id_renewal_seconds``)
T + 2N         next renewal due; each attempt is bounded by N for its read and
               ``host_dead_seconds`` for its write (sanlock: "give this write every chance")
T + 6N         still no renewal: a warning is logged (``id_renewal_warn_seconds``)
T + 8N         renewal has failed for 8N (``id_renewal_fail_seconds``): the lockspace has failed.
               The watchdog is fed only while ``now < T + 8N`` for every lockspace, so its last
               keepalive happened before T + 8N. Fencing starts: holders are asked to stop
               (SIGTERM, a kill command, or libvirt destroy/pause).
T + 8N + G     holders still alive are SIGKILLed (``kill_grace_seconds`` G < W).
T + 8N + W     at the latest, the watchdog has reset the node (last keepalive < T + 8N,
               device fires W after it). If every holder is confirmed dead earlier, the lease
               is dropped without disk I/O and the watchdog may be fed again: nobody can write.
O + 8N + W     another host, which first saw the dead host's last timestamp change at its own
               monotonic time O >= T, may now take the leases (``host_dead_seconds``).
               Since O >= T, the reset (or the holders' death) always comes first: a lease is
               never taken while its old holder could still write.
=============  ==========================================================================

Why each number
---------------
* 2N renewal: a renewal costs one read (<= N) and one write (<= N); renewing every 2N leaves
  time for a retry before 8N.
* 8N fail: four renewal intervals, so three consecutive renewals may fail (a path failover, a
  storage hiccup) before the host gives up its leases.
* 8N + W dead: the failing host's watchdog fires at most W after T + 8N; other hosts start their
  clock no earlier than T, so waiting 8N + W after the last change they saw is always enough.
* 2N after writing our delta lease on acquire: any other host that read the old record and is
  about to write its own claim has finished its read (<= N) and write (<= N) by then, so a
  re-read that still shows our record proves nobody else claimed the host_id in between.
"""

from __future__ import annotations

#: sanlock 3.8.5's constant watchdog fire timeout; also what a host without a tag is judged with.
SANLOCK_WATCHDOG_FIRE_TIMEOUT = 60

#: sanlock's default io_timeout when none is given (`DEFAULT_IO_TIMEOUT`).
DEFAULT_IO_TIMEOUT = 10

#: sanlock stores io_timeout as `N & 0xFF` when renewing: larger values would wrap.
MAX_IO_TIMEOUT = 255


def id_renewal_seconds(io_timeout: int) -> int:
    """Interval between delta-lease renewals: 2N."""
    return 2 * io_timeout


def id_renewal_warn_seconds(io_timeout: int) -> int:
    """Renewal lag after which a warning is logged: 6N."""
    return 6 * io_timeout


def id_renewal_fail_seconds(io_timeout: int) -> int:
    """Renewal lag after which the lockspace has failed and fencing starts: 8N."""
    return 8 * io_timeout


def host_dead_seconds(
    io_timeout: int, watchdog_fire_timeout: int = SANLOCK_WATCHDOG_FIRE_TIMEOUT
) -> int:
    """How long after a host's last observed renewal others may take its leases: 8N + W.

    ``io_timeout`` and ``watchdog_fire_timeout`` are the *judged* host's (from its delta lease).
    """
    return id_renewal_fail_seconds(io_timeout) + watchdog_fire_timeout


def delta_acquire_held_wait(
    io_timeout: int, watchdog_fire_timeout: int = SANLOCK_WATCHDOG_FIRE_TIMEOUT
) -> int:
    """How long acquiring a host_id held by another host instance waits before re-reading it.

    sanlock: max(host_dead_seconds, id_renewal_seconds + 6N) = 8N + W. A host that is alive
    renews at least once in that time, so an unchanged record proves it is dead (or its
    watchdog fired).
    """
    return max(
        host_dead_seconds(io_timeout, watchdog_fire_timeout),
        id_renewal_seconds(io_timeout) + 6 * io_timeout,
    )


def delta_short_delay(io_timeout: int) -> int:
    """Wait between writing our delta-lease claim and re-reading it: 2N (see module docstring)."""
    return 2 * io_timeout


def set_bitmap_seconds(io_timeout: int) -> int:
    """How long a notification bit stays set in our delta lease: 6N (three renewals)."""
    return 6 * io_timeout


def kill_grace_seconds(watchdog_fire_timeout: int) -> int:
    """Grace between asking lease holders to stop and SIGKILLing them: G.

    sanlock uses 40 s with its 60 s watchdog. It must stay below W so the SIGKILL (and the
    confirmation that every holder is gone) can happen before the watchdog resets the node;
    we keep sanlock's 2:3 ratio, never more than 40 s, never less than 1 s.
    """
    return max(1, min(40, (watchdog_fire_timeout * 2) // 3))


def paxos_owner_poll_seconds() -> float:
    """How often an acquire waiting out a silent owner re-reads its delta lease (sanlock: 1 s)."""
    return 1.0


def ballot_retry_max_sleep() -> float:
    """Upper bound of the random sleep before retrying a lost ballot (sanlock: 0..1 s)."""
    return 1.0
