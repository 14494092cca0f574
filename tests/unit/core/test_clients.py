"""Process-lifetime leases: the registry notices exits at once and never trusts a reused pid."""

import subprocess
import threading
import time

import pytest
from vmlease_agent.core.holders import ClientRegistry, process_start_time


@pytest.fixture
def registry():
    exited = []
    done = threading.Event()

    def on_exit(c):
        exited.append((c.pid, time.monotonic()))
        done.set()

    r = ClientRegistry(on_exit)
    r.exited, r.done = exited, done
    yield r
    r.close()


def test_exit_is_reported_within_a_second(registry):
    p = subprocess.Popen(["sleep", "30"])
    registry.get(p.pid)
    t = time.monotonic()
    p.kill()
    p.wait()
    assert registry.done.wait(2)
    assert registry.exited[0][0] == p.pid
    assert registry.exited[0][1] - t < 1.0
    assert f"pid:{p.pid}" not in registry.clients


def test_wrong_start_time_is_refused_safety(registry):
    p = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(ProcessLookupError):
            registry.get(p.pid, start_time=process_start_time(p.pid) + 1)
    finally:
        p.kill()
        p.wait()


def test_placeholder_is_alive_until_bound_and_dies_with_its_process(registry):
    c = registry.placeholder("libvirt:abc", "vm1")
    assert registry.alive(c)
    p = subprocess.Popen(["sleep", "30"])
    registry.bind("libvirt:abc", p.pid)
    assert c.pid == p.pid and registry.alive(c)
    p.kill()
    p.wait()
    assert registry.done.wait(2)
    assert registry.exited[0][0] == p.pid


def test_missing_process_is_refused(registry):
    with pytest.raises(ProcessLookupError):
        registry.get(2**22 + 12345)


def test_a_holder_whose_lifeline_is_open_outlives_its_pid_safety(registry):
    """sanlock's registered connection shared with a forked child: the pid's exit must not end
    the holder (its child may write) until the lifeline closes; its pid is never signalled."""
    open_ = [True]
    p = subprocess.Popen(["sleep", "30"])
    c = registry.get(p.pid)
    c.lifeline = lambda: open_[0]
    p.kill()
    p.wait()
    time.sleep(0.5)  # the pidfd has fired
    assert not registry.done.is_set() and c.exited and c.key in registry.clients
    assert registry.alive(c)
    open_[0] = False
    assert not registry.alive(c)
