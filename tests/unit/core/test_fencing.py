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
