"""Fencing: what happens to lease holders when their lockspace can no longer be renewed.

Timeline (see ``engine.timeouts``; D = the lockspace's deadline T + 8N, G = kill grace, W = the
watchdog fire timeout, G < W):
  D        the lockspace has failed; the watchdog is no longer fed (it fires by D + W at the
           latest); every holder of a lease in it is asked to stop: its kill command (e.g. a
           libvirt destroy) runs once, otherwise SIGTERM, repeated every second;
  D + G    holders still alive get SIGKILL, repeated every second;
  any time every holder is confirmed dead (pidfd), its leases are dropped WITHOUT disk I/O (our
           host_id lease is stale, so we must not write) and the lockspace is left; the watchdog
           may then be fed again, as nothing of ours can still write under that lockspace.
Other hosts wait 8N + W after they last saw our timestamp change (>= T) before taking a lease, so
by then either every holder is dead or the node has been reset.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vmlease_agent.core.holders import Client, ClientRegistry
from vmlease_agent.core.lockspace import JoinedLockspace
from vmlease_agent.core.snapshot import FencedSnapshot

log = logging.getLogger(__name__)

TERM, KILL, COMMAND, WAIT = "SIGTERM", "SIGKILL", "command", "wait"

#: Seconds between repeated signals to the same holder (sanlock: once per second).
RESEND_SECONDS = 1.0

#: A holder's restrictions (``Client.restrict``; sanlock's SANLK_RESTRICT_SIGKILL and
#: SANLK_RESTRICT_SIGTERM, same bits): it gets SIGTERM instead of SIGKILL, or SIGKILL
#: instead of SIGTERM (e.g. a process that must be able to clean up, or one that would only
#: linger on SIGTERM). The watchdog still stands behind a holder that ignores SIGTERM.
NO_SIGKILL, NO_SIGTERM = 0x2, 0x4


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    reason: str
    #: a request's signal (sanlock ``do_request``): swapped at most once; fencing's and a
    #: removal's (``kill_pids``) go through both swaps in turn, so with both restrictions a
    #: holder still gets SIGKILL there
    request: bool = False


def restricted_signal(sig: signal.Signals, restrict: int, once: bool = False) -> signal.Signals:
    """The signal sanlock sends instead of ``sig`` to a client restricted with ``restrict``
    (``kill_pids``: SIGKILL -> SIGTERM, then SIGTERM -> SIGKILL; ``once``: ``do_request``,
    which swaps only the signal it chose)."""
    if sig == signal.SIGKILL and restrict & NO_SIGKILL:
        if once:
            return signal.SIGTERM
        sig = signal.SIGTERM
    if sig == signal.SIGTERM and restrict & NO_SIGTERM:
        return signal.SIGKILL
    return sig


def next_action(
    now: float, deadline: float, grace: float, state: dict, has_command: bool
) -> Action:
    """What to do to one holder at ``now``; ``state`` remembers what was done (per holder)."""
    if now < deadline:
        return Action(WAIT, "lockspace still within its renewal deadline")
    last = state.get("last_signal_at", -1e9)
    if now >= deadline + grace:
        if now - state.get("last_kill_at", -1e9) >= RESEND_SECONDS:
            return Action(KILL, f"still alive {now - deadline:.0f}s after the lockspace failed")
        return Action(WAIT, "SIGKILL sent")
    if has_command and not state.get("command_run"):
        return Action(COMMAND, "lockspace failed: running the holder's kill command")
    if not has_command and now - last >= RESEND_SECONDS:
        return Action(TERM, "lockspace failed: asking the holder to stop")
    return Action(WAIT, "waiting for the holder to stop")


def record(action: Action, now: float, state: dict) -> None:
    """Remember in ``state`` that ``action`` was taken at ``now`` (what next_action reads)."""
    if action.kind == COMMAND:
        state["command_run"] = True
    elif action.kind in (TERM, KILL):
        state["last_kill_at" if action.kind == KILL else "last_signal_at"] = now
        state.setdefault("signals", []).append((action.kind, now))


def apply(action: Action, client: Client, now: float, state: dict) -> None:
    """Carry out ``action`` on ``client`` (a process), recording it in ``state``."""
    if action.kind == WAIT:
        return
    record(action, now, state)
    if action.kind == COMMAND and client.kill_command:
        cmd = list(client.kill_command)
        if client.kill_appends_pid:
            cmd.append(str(client.pid or client.key))
        log.warning("fencing %s (%s): %s", client.key, client.owner or client.name, cmd)
        try:
            subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            log.error("fencing %s: kill command failed to start: %s", client.key, e)
        return
    if client.pid == 0 or client.exited:
        # a placeholder without a process, or an exited pid (it may be reused) whose lifeline
        # lives on in processes we cannot name: only its kill command or the watchdog can act
        return
    chosen = signal.SIGKILL if action.kind == KILL else signal.SIGTERM
    sig = restricted_signal(chosen, client.restrict, once=action.request)
    log.warning(
        "fencing pid %d (%s): %s (%s)",
        client.pid,
        client.owner or client.name,
        sig.name,
        action.reason if sig == chosen else f"{action.reason}; {chosen.name} is restricted",
    )
    send(client, sig)


def send(client: Client, sig: signal.Signals) -> None:
    """Signal the holder's process: through its pidfd (a reused pid is never hit) when the
    agent has one; a process already gone is not an error."""
    try:
        if client.pidfd >= 0:
            signal.pidfd_send_signal(client.pidfd, sig)
        else:
            os.kill(client.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class _Fenced:
    """What ``FencingDriver`` did under one failed lockspace (the last failure only)."""

    since: float
    error: str
    actions: dict[str, list[str]] = field(default_factory=dict)  # holder label -> actions
    done: bool = False

    def snapshot(self, lockspace: str) -> FencedSnapshot:
        lines = tuple(
            f"{who}: {', '.join(acts) or 'gone before a signal'}"
            for who, acts in self.actions.items()
        )
        return FencedSnapshot(lockspace, self.since, self.error, lines, self.done)


def _who(client: Client) -> str:
    name = client.owner or client.name or client.key
    return f"{name} (pid {client.pid})" if client.pid else name


class FencingDriver:
    """The escalation above, driven by the agent's main loop once per pass for each failed
    lockspace that still has holders of ours: the kill command or SIGTERM, SIGKILL after the
    grace, and the leases of a holder confirmed dead dropped WITHOUT disk I/O. Which holders to
    fence, and leaving the lockspace once there are none, is the agent's decision."""

    def __init__(
        self,
        registry: ClientRegistry,
        lock: threading.RLock,
        grace: float,
        event: Callable[..., Any],
    ) -> None:
        self._registry = registry
        self._lock = lock  # the agent's: client.leases changes under it
        self._grace = grace
        self._event = event
        self._fencing: set[str] = set()  # lockspaces whose fencing was announced
        self._records: dict[str, _Fenced] = {}  # under ``lock``

    def records(self) -> tuple[FencedSnapshot, ...]:
        """Under the agent's lock: the last fencing of each lockspace, for its snapshot."""
        return tuple(r.snapshot(name) for name, r in sorted(self._records.items()))

    def rejoining(self, lockspace: str) -> None:
        """``lockspace`` is joined afresh: a later failure is a new fencing (its record stays,
        as the last one, until then)."""
        self._fencing.discard(lockspace)

    def finished(self, lockspace: str) -> None:
        """Every holder of ours under ``lockspace`` is gone (the agent leaves it)."""
        with self._lock:
            if lockspace in self._records:
                self._records[lockspace].done = True

    def escalate(self, ls: JoinedLockspace, holders: Iterable[Client], now: float) -> None:
        holders = list(holders)
        if ls.name not in self._fencing:
            self._fencing.add(ls.name)
            self._event("fencing", lockspace=ls.name, holders=[c.key for c in holders])
            with self._lock:
                self._records[ls.name] = _Fenced(time.time(), ls.error)
        record = self._records[ls.name]
        for client in holders:
            who = _who(client)
            with self._lock:  # the record is read by snapshots, under the same lock
                acts = record.actions.setdefault(who, [])
            if not self._registry.alive(client):
                self._drop(client, ls.name)
                continue
            st = client.kill_state.setdefault(ls.name, {})
            action = next_action(now, ls.deadline(), self._grace, st, bool(client.kill_command))
            if action.kind != WAIT:
                self._event("fence", lockspace=ls.name, holder=client.key, action=action.kind)
                with self._lock:
                    if action.kind not in acts:
                        acts.append(action.kind)
            apply(action, client, now, st)

    def _drop(self, client: Client, lockspace: str) -> None:
        with self._lock:
            for label in [k for k, h in client.leases.items() if h.res.lockspace == lockspace]:
                client.leases.pop(label)
                self._event("dropped", lease=label, holder=client.key, reason="lockspace failed")
