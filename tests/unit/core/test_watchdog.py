"""The watchdog backends and the harness that plays the hardware for the file-backed device.

Harness tests use real processes: a simulated node is a session of its own (an "agent" that feeds
the device and a "VM" child in the same process group), supervised by a real harness. Deaths are
timed with pidfds, so the measured times are when the kernel saw the process die.

There is no /dev/watchdog here (no driver, and this kernel cannot load softdog), so the Linux
backend is tested for what is honest without one: its ioctl numbers against linux/watchdog.h,
its errors on real files that are not watchdogs, and its sequence of calls against a simulated
driver (the ioctl replaced) on a pty, whose master shows every byte written to the "device".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmlease_agent.core import watchdog
from vmlease_agent.core.watchdog import (
    WDIOC_GETTIMEOUT,
    WDIOC_KEEPALIVE,
    WDIOC_SETTIMEOUT,
    FileWatchdog,
    LinuxWatchdog,
    NullWatchdog,
    WatchdogError,
    accepted_timeout,
    open_watchdog,
    read_state,
)
from vmlease_agent.engine.clock import boottime
from vmlease_agent.sim.watchdog_harness import spawn_harness

W = 1  # fire timeout of the simulated nodes, seconds
SLACK = 0.3  # the harness polls every 0.1 s; the rest is scheduling

# A simulated node: starts a "VM" in its own process group, waits for "go" on stdin (the harness
# supervises the device by then), arms the device, feeds every 0.1 s for FEED seconds, then ENDs:
# "disarm" (then lingers LINGER s and exits 0), "abandon" (exits at once, the VM keeps running)
# or "hang" (stops feeding, stays alive).
NODE = """
import json, subprocess, sys, time
from vmlease_agent.core.watchdog import open_watchdog
device, w, feed, end, linger = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:]
vm = subprocess.Popen(["sleep", "60"])
print(json.dumps({"vm": vm.pid}), flush=True)
sys.stdin.readline()
wd = open_watchdog("file:" + device, w)
wd.arm()
print("armed", flush=True)
stop = time.monotonic() + feed
while time.monotonic() < stop:
    time.sleep(0.1)
    wd.keepalive()
if end == "disarm":
    wd.disarm()
    vm.kill()
    time.sleep(float(linger))
elif end == "abandon":
    wd.abandon()
else:
    time.sleep(60)
"""


class Node:
    """A simulated node: its agent process (a session leader) and its VM, in one process group."""

    def __init__(self, device: Path, feed: float, end: str, linger: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", NODE, str(device), str(W), str(feed), end, str(linger)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pgid = self.proc.pid
        self.agent_fd = os.pidfd_open(self.proc.pid)
        self.vm = json.loads(self.proc.stdout.readline())["vm"]
        self.vm_fd = os.pidfd_open(self.vm)

    def go(self) -> None:
        """Arm the device and start feeding it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()
        assert self.proc.stdout.readline() == b"armed\n"

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait()
        os.close(self.agent_fd)
        os.close(self.vm_fd)


def death_time(pidfd: int, timeout: float) -> float | None:
    """Boot time at which the process died, or None if it is alive after ``timeout``."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return boottime() if p.poll(timeout * 1000) else None


def fired_events(events: Path) -> list[dict]:
    if not events.exists():
        return []
    return [json.loads(line) for line in events.read_text().splitlines()]


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "watchdog.json"
    yield path
    path.unlink(missing_ok=True)  # stops any harness still supervising it


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.close()


def supervised(
    device: Path, events: Path, nodes: list[Node], **node_args: object
) -> tuple[Node, subprocess.Popen]:
    """A node whose process group a harness supervises, feeding its device."""
    node = Node(device, **node_args)  # type: ignore[arg-type]
    nodes.append(node)
    harness = spawn_harness(device, [node.pgid], events)
    node.go()
    return node, harness


# ---- the harness, with real processes --------------------------------------------------------


def test_fed_node_is_never_killed(device: Path, tmp_path: Path, nodes: list[Node]) -> None:
    events = tmp_path / "events"
    node, harness = supervised(device, events, nodes, feed=3 * W, end="disarm")
    assert node.proc.wait(timeout=3 * W + 5) == 0  # fed for 3W, then left cleanly by itself
    assert fired_events(events) == []
    assert harness.poll() is None
    device.unlink()
    assert harness.wait(timeout=2) == 0  # a removed device stops the harness


def test_starved_node_is_killed_within_fire_timeout_safety(
    device: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    events = tmp_path / "events"
    node, harness = supervised(device, events, nodes, feed=0.5, end="hang")
    agent_died = death_time(node.agent_fd, timeout=0.5 + W + 5)
    vm_died = death_time(node.vm_fd, timeout=1)
    last_keepalive = read_state(str(device)).fed_at
    assert agent_died is not None and vm_died is not None, "the starved node was not killed"
    for died in (agent_died, vm_died):
        assert W < died - last_keepalive <= W + SLACK
    assert node.proc.wait() == -signal.SIGKILL
    # the harness is not part of the node: it survives the "reset", records it, exits by itself
    assert harness.wait(timeout=2) == 0
    (event,) = fired_events(events)
    assert event["event"] == "fired" and event["pgids"] == [node.pgid]
    assert event["fed_at"] == last_keepalive
    assert W < event["at"] - last_keepalive <= W + SLACK


def test_disarm_stops_the_harness_from_firing(
    device: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    events = tmp_path / "events"
    linger = W + 1.0
    node, harness = supervised(device, events, nodes, feed=0.3, end="disarm", linger=linger)
    assert node.proc.wait(timeout=0.3 + linger + 5) == 0  # lived W + 1 s unfed, disarmed
    assert not read_state(str(device)).armed
    assert fired_events(events) == []
    assert harness.poll() is None


def test_abandon_keeps_counting_safety(device: Path, tmp_path: Path, nodes: list[Node]) -> None:
    """The agent leaves without the magic close (a restart): the VM it leaves behind is killed."""
    events = tmp_path / "events"
    node, harness = supervised(device, events, nodes, feed=0.3, end="abandon")
    assert node.proc.wait(timeout=5) == 0
    vm_died = death_time(node.vm_fd, timeout=W + 5)
    state = read_state(str(device))
    assert state.armed, "abandon must leave the device armed"
    assert vm_died is not None, "the VM of an abandoned node was not killed"
    assert W < vm_died - state.fed_at <= W + SLACK
    assert harness.wait(timeout=2) == 0
    assert len(fired_events(events)) == 1


def test_harness_started_after_the_agent_armed_safety(
    device: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    """The demo's order (the harness needs the agent's pgid): an armed device stays armed."""
    node = Node(device, feed=0.3, end="hang")
    nodes.append(node)
    node.go()
    harness = spawn_harness(device, [node.pgid], tmp_path / "events")
    assert read_state(str(device)).armed
    vm_died = death_time(node.vm_fd, timeout=W + 5)
    assert vm_died is not None
    assert W < vm_died - read_state(str(device)).fed_at <= W + SLACK
    assert harness.wait(timeout=2) == 0


def test_harness_refuses_its_own_process_group_safety(device: Path) -> None:
    """Started in our process group and told to kill it, the harness must refuse, not run.

    Safe even if it did run: the device is never armed, so it could not fire.
    """
    cmd = [sys.executable, "-m", "vmlease_agent.sim.watchdog_harness", "--device", str(device)]
    for pgid in (os.getpgrp(), 0, 1):
        r = subprocess.run([*cmd, "--pgid", str(pgid)], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2, r.stderr
        assert "refusing" in r.stderr
    assert not device.exists()


def test_harness_keeps_counting_on_an_unreadable_device_safety(
    device: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    events = tmp_path / "events"
    node, harness = supervised(device, events, nodes, feed=0.3, end="hang")
    time.sleep(0.5)
    last_keepalive = read_state(str(device)).fed_at
    device.write_text("{garbage")
    vm_died = death_time(node.vm_fd, timeout=W + 5)
    assert vm_died is not None
    assert W < vm_died - last_keepalive <= W + SLACK
    assert harness.wait(timeout=2) == 0


# ---- FileWatchdog and NullWatchdog -----------------------------------------------------------


def test_file_watchdog_states(device: Path) -> None:
    wd = open_watchdog(f"file:{device}", 7)
    assert isinstance(wd, FileWatchdog)
    before = boottime()
    wd.arm()
    s = read_state(str(device))
    assert s.armed and s.fire_timeout == 7 and s.pid == os.getpid() and s.fed_at >= before
    wd.keepalive()
    assert read_state(str(device)).fed_at >= s.fed_at
    wd.disarm()
    assert not read_state(str(device)).armed
    with pytest.raises(WatchdogError, match="not armed"):
        wd.keepalive()  # a late keepalive must not re-arm a disarmed device
    assert not read_state(str(device)).armed
    wd.arm()
    armed = read_state(str(device))
    wd.abandon()
    assert read_state(str(device)) == armed  # left as it is: still counting
    assert not list(device.parent.glob("*.tmp"))


def test_none_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    wd = open_watchdog("none", 10)
    assert isinstance(wd, NullWatchdog) and wd.fire_timeout == 10
    with caplog.at_level(logging.WARNING):
        wd.arm()
    assert "nothing resets this node" in caplog.text
    wd.keepalive()
    wd.disarm()


@pytest.mark.parametrize("spec", ["", "file:", "watchdog0", "dev/watchdog0", "None"])
def test_open_watchdog_rejects_unknown_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown watchdog"):
        open_watchdog(spec, 10)


@pytest.mark.parametrize("w", [0, -1, 1.5, True])
def test_open_watchdog_rejects_bad_fire_timeouts(w: object) -> None:
    with pytest.raises(ValueError, match="fire timeout"):
        open_watchdog("none", w)  # type: ignore[arg-type]


# ---- LinuxWatchdog ---------------------------------------------------------------------------


def test_ioctl_numbers_match_linux_watchdog_h() -> None:
    # Values printed by a C program including <linux/watchdog.h> (x86-64, Linux 6.x headers).
    assert WDIOC_KEEPALIVE == 0x80045705
    assert WDIOC_SETTIMEOUT == 0xC0045706
    assert WDIOC_GETTIMEOUT == 0x80045707


def test_linux_missing_device(tmp_path: Path) -> None:
    wd = open_watchdog(str(tmp_path / "watchdog0"), 10)
    assert isinstance(wd, LinuxWatchdog)
    with pytest.raises(WatchdogError) as e:
        wd.arm()
    assert str(e.value) == (
        f"the watchdog device {tmp_path / 'watchdog0'} does not exist: load a driver "
        "(modprobe softdog) or configure --watchdog"
    )


def test_linux_refuses_a_regular_file_and_leaves_it_alone(tmp_path: Path) -> None:
    f = tmp_path / "precious"
    f.write_bytes(b"data")
    with pytest.raises(WatchdogError, match="not a character device"):
        LinuxWatchdog(str(f), 10).arm()
    assert f.read_bytes() == b"data"


def test_linux_refuses_a_character_device_that_is_not_a_watchdog() -> None:
    with pytest.raises(WatchdogError, match="/dev/null is not a watchdog device"):
        LinuxWatchdog("/dev/null", 10).arm()


def test_linux_busy_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """EBUSY is what a second opener of a watchdog gets; simulated, as there is no device."""

    def busy(path: str, flags: int) -> int:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)

    monkeypatch.setattr(watchdog.os, "open", busy)
    with pytest.raises(WatchdogError, match="/dev/null is busy: another process holds it open"):
        LinuxWatchdog("/dev/null", 10).arm()


class FakeDriver:
    """The kernel side of the watchdog ioctls, standing in for a driver (``fcntl.ioctl``)."""

    def __init__(self, granularity: int = 1) -> None:
        self.granularity = granularity
        self.timeout = 60
        self.calls: list[int] = []

    def ioctl(self, fd: int, request: int, arg: int | bytes = 0) -> int | bytes:
        self.calls.append(request)
        if request == WDIOC_SETTIMEOUT:
            want = struct.unpack("i", arg)[0]
            self.timeout = -(-want // self.granularity) * self.granularity
            return struct.pack("i", self.timeout)
        if request == WDIOC_GETTIMEOUT:
            return struct.pack("i", self.timeout)
        if request == WDIOC_KEEPALIVE:
            return 0
        raise OSError(errno.ENOTTY, "not a watchdog ioctl")


@pytest.fixture
def pty_device(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int, FakeDriver]]:
    """A character device whose bytes we can see (a pty), driven by a ``FakeDriver``."""
    master, slave = os.openpty()  # slave stays open: no hangup (EIO) when the agent closes
    driver = FakeDriver()
    monkeypatch.setattr(watchdog.fcntl, "ioctl", driver.ioctl)
    yield os.ttyname(slave), master, driver
    monkeypatch.undo()
    os.close(slave)
    os.close(master)


def written(master: int) -> bytes:
    return os.read(master, 100) if select.select([master], [], [], 0.2)[0] else b""


def test_linux_arm_keepalive_disarm(pty_device: tuple[str, int, FakeDriver]) -> None:
    path, master, driver = pty_device
    wd = open_watchdog(path, 10)
    wd.arm()
    assert driver.calls == [WDIOC_SETTIMEOUT, WDIOC_GETTIMEOUT, WDIOC_KEEPALIVE]
    assert driver.timeout == 10 and wd.fire_timeout == 10
    fd = wd.fd  # the fd must not leak into processes the agent starts
    assert fd is not None and fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert stat.S_ISCHR(os.fstat(fd).st_mode)
    wd.arm()  # idempotent: no second open, only a keepalive
    wd.keepalive()
    assert driver.calls[3:] == [WDIOC_KEEPALIVE, WDIOC_KEEPALIVE]
    assert written(master) == b""  # keepalives are ioctls, nothing is written
    wd.disarm()
    assert written(master) == b"V"  # the magic close
    with pytest.raises(WatchdogError, match="not armed"):
        wd.keepalive()


def test_linux_abandon_writes_no_magic_character_safety(
    pty_device: tuple[str, int, FakeDriver],
) -> None:
    path, master, _ = pty_device
    wd = open_watchdog(path, 10)
    wd.arm()
    wd.abandon()
    assert written(master) == b""
    wd.disarm()  # nothing left to close: no 'V' reaches the device afterwards
    assert written(master) == b""


def test_linux_refuses_a_longer_timeout_safety(pty_device: tuple[str, int, FakeDriver]) -> None:
    path, master, driver = pty_device
    driver.granularity = 4  # the driver rounds 10 up to 12
    with pytest.raises(WatchdogError, match="rounded the requested 10 s timeout up to 12 s"):
        open_watchdog(path, 10).arm()
    assert written(master) == b"V"  # refused to start: the device is stopped, not left running


def test_linux_uses_a_shorter_timeout(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert accepted_timeout("/dev/watchdog0", 10, 8) == 8
    assert "accepted 8 s instead of 10 s" in caplog.text
    assert accepted_timeout("/dev/watchdog0", 10, 10) == 10
    with pytest.raises(WatchdogError, match="reports a timeout of 0 s"):
        accepted_timeout("/dev/watchdog0", 10, 0)


def test_linux_timeout_refused_by_the_driver(
    pty_device: tuple[str, int, FakeDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, master, driver = pty_device

    def out_of_range(fd: int, request: int, arg: int | bytes = 0) -> int | bytes:
        if request == WDIOC_SETTIMEOUT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return driver.ioctl(fd, request, arg)

    monkeypatch.setattr(watchdog.fcntl, "ioctl", out_of_range)
    with pytest.raises(WatchdogError, match="refused a 100000 s timeout"):
        open_watchdog(path, 100_000).arm()
    assert written(master) == b"V"


def test_linux_shorten_keeps_the_reset_where_it_was_safety(
    pty_device: tuple[str, int, FakeDriver],
) -> None:
    path, _, driver = pty_device
    wd = open_watchdog(path, 10)
    wd.arm()
    driver.calls.clear()
    wd.shorten(4)  # the time left: a later close (a keepalive) now only buys 4 s, not 10
    assert driver.timeout == 4 and driver.calls == [WDIOC_SETTIMEOUT, WDIOC_GETTIMEOUT]
    wd.shorten(7)  # never lengthened by shorten
    wd.shorten(0)  # nothing below a second
    assert driver.timeout == 4
    wd.keepalive()  # healthy again: the full fire timeout comes back
    assert driver.timeout == 10


def test_linux_shorten_trusts_the_timeout_read_back_safety(
    pty_device: tuple[str, int, FakeDriver],
) -> None:
    """A driver that rounds up (granularity 4: 7 -> 8) must not push the reset past the time
    left: smaller values are asked until the one read back fits."""
    path, _, driver = pty_device
    driver.granularity = 4
    wd = open_watchdog(path, 12)
    wd.arm()
    wd.shorten(7)
    assert driver.timeout <= 7
    assert driver.timeout == wd.timeout == 4  # what the device runs with, as read back
    wd.keepalive(seconds=6)  # an effective W below the configured one: never rounded up either
    assert driver.timeout == 4
    wd.keepalive()
    assert driver.timeout == 12


def test_linux_shorten_that_cannot_fit_is_an_error(pty_device: tuple[str, int, FakeDriver]) -> None:
    path, _, driver = pty_device
    driver.granularity = 10
    wd = open_watchdog(path, 10)
    wd.arm()
    with pytest.raises(WatchdogError, match="cannot run with a timeout of 5 s or less"):
        wd.shorten(5)


def test_keepalive_runs_with_an_effective_timeout_no_longer_than_configured(
    pty_device: tuple[str, int, FakeDriver], device: Path
) -> None:
    path, _, driver = pty_device
    wd = open_watchdog(path, 10)
    wd.arm()
    wd.keepalive(seconds=6)
    assert driver.timeout == 6
    wd.keepalive(seconds=30)  # never more than the configured W
    assert driver.timeout == 10
    fw = open_watchdog(f"file:{device}", 10)
    fw.arm()
    fw.keepalive(seconds=6)
    assert read_state(str(device)).fire_timeout == 6
    fw.keepalive(seconds=30)
    assert read_state(str(device)).fire_timeout == 10


def test_file_shorten_moves_the_harness_deadline(device: Path) -> None:
    wd = open_watchdog(f"file:{device}", 30)
    wd.arm()
    before = boottime()
    wd.shorten(3)
    s = read_state(str(device))
    assert s.armed and s.fire_timeout == 3 and s.fed_at >= before
    wd.keepalive()
    assert read_state(str(device)).fire_timeout == 30


def test_reset_command_resets_a_container_node_safety(device: Path, tmp_path: Path) -> None:
    """A kind node is a container: the harness runs the reset command (``docker kill NODE`` in
    the e2e tier) once the device is starved, records when it ran, and kills nothing else."""
    events = tmp_path / "events"
    marker = tmp_path / "reset"
    harness = spawn_harness(device, [], events, reset_command=f"touch {marker}")
    watchdog = FileWatchdog(str(device), 1)
    watchdog.arm()
    watchdog.keepalive()
    last_keepalive = read_state(str(device)).fed_at
    assert harness.wait(timeout=1 + 5) == 0
    assert marker.exists(), "the reset command did not run"
    (event,) = fired_events(events)
    assert event["reset"] == ["touch", str(marker)] and event["status"] == 0
    assert 1 < event["at"] - last_keepalive <= 1 + SLACK


def test_harness_refuses_to_run_with_nothing_to_reset(device: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vmlease_agent.sim.watchdog_harness", "--device", str(device)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "nothing to reset" in done.stderr
