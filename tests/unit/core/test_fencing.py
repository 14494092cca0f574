"""Fencing one holder: ask, then SIGKILL after the grace, never before the deadline."""

from vmlease_agent.core import fencing

D, G = 100.0, 6.0


def walk(has_command: bool, times: list[float]) -> list[str]:
    state: dict = {}
    kinds = []
    for t in times:
        a = fencing.next_action(t, D, G, state, has_command)
        fencing.record(a, t, state)
        kinds.append(a.kind)
    return kinds


def test_nothing_happens_before_the_deadline_safety():
    assert walk(False, [0, 50, 99.9]) == [fencing.WAIT] * 3


def test_sigterm_then_sigkill_after_grace():
    kinds = walk(False, [100, 100.5, 101, 105.9, 106, 106.5, 107])
    assert kinds == ["SIGTERM", "wait", "SIGTERM", "SIGTERM", "SIGKILL", "wait", "SIGKILL"]


def test_kill_command_runs_once_then_sigkill():
    kinds = walk(True, [100, 101, 102, 106])
    assert kinds == ["command", "wait", "wait", "SIGKILL"]


def test_kill_command_gets_the_pid_unless_told_not_to(tmp_path):
    """sanlock's killpath appends the pid only with SANLK_KILLPATH_PID (libvirt's helper takes
    exactly its own arguments); the agent's own kill commands always get it."""
    import sys
    import time

    from vmlease_agent.core.holders import Client

    seen = []
    for appends in (True, False):
        out = tmp_path / f"argv-{appends}"
        script = f"import sys; open({str(out)!r}, 'w').write(repr(sys.argv[1:]))"
        client = Client("pid:42", 42, 1, "qemu", kill_command=[sys.executable, "-c", script, "a"])
        client.kill_appends_pid = appends
        fencing.apply(fencing.Action(fencing.COMMAND, "test"), client, 0.0, {})
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        seen.append(out.read_text())
    assert seen == ["['a', '42']", "['a']"]


def test_sigkill_comes_before_the_watchdog_could_fire_safety():
    # grace is always shorter than the watchdog fire timeout, so the kill is attempted in time
    from vmlease_agent.engine import timeouts

    for w in (3, 10, 30, 60, 120):
        assert timeouts.kill_grace_seconds(w) < w


def test_restricted_signals_are_swapped_as_sanlock_does():
    """kill_pids (fencing, removal): SIGKILL -> SIGTERM, then SIGTERM -> SIGKILL, so a holder
    restricted both ways still gets SIGKILL; do_request (requests): one swap only."""
    import signal

    kill, term = signal.SIGKILL, signal.SIGTERM
    both = fencing.NO_SIGKILL | fencing.NO_SIGTERM
    swap = fencing.restricted_signal
    assert [swap(kill, 0), swap(term, 0)] == [kill, term]
    assert [swap(kill, fencing.NO_SIGKILL), swap(term, fencing.NO_SIGTERM)] == [term, kill]
    assert [swap(kill, both), swap(term, both)] == [kill, kill]
    assert [swap(kill, both, once=True), swap(term, both, once=True)] == [term, kill]


def test_a_restricted_holder_gets_the_other_signal(tmp_path):
    """Fencing's SIGTERM goes to a NO_SIGTERM holder as SIGKILL; a request's force (SIGKILL)
    to a NO_SIGKILL holder as SIGTERM."""
    import signal
    import subprocess

    from vmlease_agent.core import requests
    from vmlease_agent.core.holders import Client

    cases = [
        (fencing.Action(fencing.TERM, "test"), fencing.NO_SIGTERM, signal.SIGKILL),
        (requests.action(requests.FORCE, False), fencing.NO_SIGKILL, signal.SIGTERM),
        (requests.action(requests.GRACEFUL, False), fencing.NO_SIGTERM, signal.SIGKILL),
    ]
    for action, restrict, expected in cases:
        proc = subprocess.Popen(["sleep", "60"])
        client = Client(f"pid:{proc.pid}", proc.pid, 1, "sleep", restrict=restrict)
        fencing.apply(action, client, 0.0, {})
        assert proc.wait(timeout=10) == -expected, action
