"""The node's watchdog: what resets the node when the agent can no longer prove it owns its leases.

Why a watchdog at all: a holder stuck in uninterruptible I/O ignores SIGKILL, and an agent that
hangs cannot fence anybody. Only a reset is certain. The agent feeds one device, and only while
every lockspace is healthy (``engine.timeouts``), so the node is reset at most W = ``fire_timeout``
seconds after the last keepalive; other hosts wait 8N + W before taking a lease, which is the
proof that a lease is never taken while its old holder could still write.

Lifecycle, as the agent uses it:
  ``arm``        before the first write of the first lease acquisition, and only while every
                 lockspace is healthy (opening a device still counting is itself a keepalive);
  ``keepalive``  every main-loop tick while every lockspace is healthy, with the W our delta
                 leases advertise if that is less than the configured one;
  ``shorten``    while a lockspace has failed and holders may live: the device runs with only the
                 time left until last keepalive + W, so that a close (an agent crash) cannot
                 postpone the reset; the next ``keepalive`` restores W;
  ``disarm``     as soon as nothing is held (no lease, no acquisition in flight): the node is NOT
                 reset, so uninstalling or stopping an agent that protects nothing is harmless;
  ``abandon``    any other exit (SIGTERM for an upgrade, a fatal error): the device keeps counting,
                 and a restarted agent must re-arm it before it fires. On Linux the close itself
                 counts as one last keepalive (see ``LinuxWatchdog``): abandon only while every
                 lockspace is still healthy, i.e. while feeding would still be allowed.

Backends (``open_watchdog(spec, W)``):
  ``/dev/watchdogN``  the Linux watchdog API (``LinuxWatchdog``);
  ``file:PATH``       a JSON file that ``watchdog_harness`` supervises like hardware would, for
                      tests and the demo (``FileWatchdog``);
  ``none``            nothing enforces fencing; development only (``NullWatchdog``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import struct
import threading
from dataclasses import asdict, dataclass
from typing import Protocol

from vmlease_agent.engine.clock import boottime

log = logging.getLogger(__name__)


class WatchdogError(Exception):
    """The watchdog cannot be used as configured; the message says what to do about it."""


class Watchdog(Protocol):
    #: Seconds from the last keepalive to the reset; what the device actually enforces.
    fire_timeout: int

    def arm(self) -> None:
        """Open the device and set its timeout; arming an armed device only feeds it."""

    def keepalive(self, seconds: int | None = None) -> None:
        """Feed the device: the reset moves to ``seconds`` (default and at most ``fire_timeout``)
        from now. A shorter ``seconds`` keeps the device within the W that other hosts judge us
        by while our delta lease still advertises a smaller W than configured (a W raised across
        an agent restart: see ``Agent``)."""

    def disarm(self) -> None:
        """Clean shutdown only: stop the device (magic close); the node is not reset."""

    def abandon(self) -> None:
        """Let go of the device without stopping it: it keeps counting and fires.

        Only while feeding would still be allowed: on Linux the close counts as a keepalive.
        """

    def shorten(self, seconds: int) -> None:
        """Make the device fire ``seconds`` from now (>= 1): the same moment it would fire
        anyway when the caller passes the time left. Used while a lockspace has failed, so that
        a later close of the device (the agent dying: a keepalive on Linux) cannot push the
        reset past it. The next ``keepalive`` restores ``fire_timeout``."""


def open_watchdog(spec: str, fire_timeout: int) -> Watchdog:
    """The backend named by ``spec`` (``/dev/watchdogN``, ``file:PATH`` or ``none``), not armed."""
    if isinstance(fire_timeout, bool) or not isinstance(fire_timeout, int) or fire_timeout < 1:
        raise ValueError(
            f"the watchdog fire timeout must be a whole number of seconds >= 1, "
            f"not {fire_timeout!r}"
        )
    if spec == "none":
        return NullWatchdog(fire_timeout)
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FileWatchdog(spec[len("file:") :], fire_timeout)
    if spec.startswith("/"):
        return LinuxWatchdog(spec, fire_timeout)
    raise ValueError(
        f"unknown watchdog {spec!r}: use a device path (/dev/watchdog0), "
        "file:PATH for the file-backed test device, or none"
    )


# ---- Linux watchdog API ---------------------------------------------------------------------

# linux/watchdog.h:   WDIOC_KEEPALIVE  = _IOR('W', 5, int)
#                     WDIOC_SETTIMEOUT = _IOWR('W', 6, int)
#                     WDIOC_GETTIMEOUT = _IOR('W', 7, int)
# asm-generic/ioctl.h: _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr,
#                     _IOC_WRITE = 1, _IOC_READ = 2, _IOR = _IOC(_IOC_READ, ...),
#                     _IOWR = _IOC(_IOC_READ | _IOC_WRITE, ...).
# With type 'W' = 0x57 and sizeof(int) = 4: KEEPALIVE = 2 << 30 | 4 << 16 | 0x57 << 8 | 5
# = 0x80045705, SETTIMEOUT = 3 << 30 | ... | 6 = 0xC0045706, GETTIMEOUT = 0x80045707.
# This is the asm-generic layout (x86-64, arm64, riscv64, s390x); powerpc, mips, sparc and
# alpha use other direction bits and are not supported.
_IOC_WRITE, _IOC_READ = 1, 2
_INT = struct.calcsize("i")


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | ord(kind) << 8 | nr


WDIOC_KEEPALIVE = _ioc(_IOC_READ, "W", 5, _INT)
WDIOC_SETTIMEOUT = _ioc(_IOC_READ | _IOC_WRITE, "W", 6, _INT)
WDIOC_GETTIMEOUT = _ioc(_IOC_READ, "W", 7, _INT)

#: Written before close, tells the driver the close is intended (WDIOF_MAGICCLOSE).
MAGIC_CLOSE = b"V"


class LinuxWatchdog:
    """``/dev/watchdogN`` through the kernel watchdog API.

    The device is opened O_CLOEXEC so that processes the agent starts (kill commands, ``client
    command``) never inherit it: a child holding it open would keep a restarted agent out (EBUSY).

    Closing without the magic character (``abandon``, or the kernel closing the fd of a crashed
    agent) does not stop the device, but the kernel counts that close as one last keepalive
    (``watchdog_release`` pings a device it could not stop): the reset comes W after the later of
    the last keepalive and the close. The agent must therefore only abandon while it would still
    be allowed to feed. A magic close is ignored when the kernel was built or loaded with
    ``nowayout``: then even a clean shutdown resets the node W later.
    """

    def __init__(self, path: str, fire_timeout: int) -> None:
        self.path = path
        self.requested = fire_timeout
        self.fire_timeout = fire_timeout
        self._fd: int | None = None
        self._current = fire_timeout  # the timeout the device runs with now (see shorten)
        # The main loop feeds while ``stop`` may close: once closed, the fd number can be reused
        # by any other open, and an ioctl or a 'V' must never reach that other file.
        self._lock = threading.Lock()

    @property
    def fd(self) -> int | None:
        """The open device (None while closed)."""
        return self._fd

    @property
    def timeout(self) -> int:
        """The timeout the device runs with now, as the driver reported it (see ``shorten``)."""
        return self._current

    def arm(self) -> None:
        with self._lock:
            if self._fd is None:
                self._fd = self._open_and_set_timeout()
                self._current = self.fire_timeout
                log.info("watchdog %s armed: %d s", self.path, self.fire_timeout)
            else:
                self._ping(self._fd)

    def keepalive(self, seconds: int | None = None) -> None:
        want = self.fire_timeout if seconds is None else min(seconds, self.fire_timeout)
        with self._lock:
            if self._fd is None:
                raise WatchdogError(f"keepalive on the watchdog {self.path}, which is not armed")
            if self._current != want:
                self._set_timeout_at_most(self._fd, want)  # the kernel pings too
            else:
                self._ping(self._fd)

    def shorten(self, seconds: int) -> None:
        with self._lock:
            if self._fd is None or seconds < 1 or seconds >= self._current:
                return
            self._set_timeout_at_most(self._fd, seconds)  # the kernel pings with the new timeout

    def _set_timeout_at_most(self, fd: int, seconds: int) -> None:
        """Make the device fire at most ``seconds`` from now, trusting only what it reads back.

        A driver may round a timeout up (granularity); then the reset would come later than
        the moment we promised, so smaller requests are tried until the value read back fits.
        ``_current`` is always what the driver reports, never what we asked for.
        """
        for ask in range(seconds, 0, -1):
            try:
                fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", ask))
                got = struct.unpack("i", fcntl.ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0)))[0]
            except OSError as e:
                raise WatchdogError(
                    f"setting the timeout of the watchdog {self.path} to {ask} s failed: "
                    f"{e.strerror}"
                ) from e
            self._current = got
            if got <= seconds:
                if ask != seconds:
                    log.warning(
                        "watchdog %s: asked %d s for a %d s limit; it runs with %d s",
                        self.path,
                        ask,
                        seconds,
                        got,
                    )
                return
        raise WatchdogError(
            f"the watchdog driver of {self.path} cannot run with a timeout of {seconds} s or "
            f"less (it reports {self._current} s): the node is reset later than promised"
        )

    def disarm(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            _magic_close(fd)
            log.info("watchdog %s disarmed (magic close)", self.path)

    def abandon(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            log.warning(
                "watchdog %s abandoned: the node is reset in %d s unless an agent re-arms it",
                self.path,
                self.fire_timeout,
            )

    def _open_and_set_timeout(self) -> int:
        fd = self._open()
        try:
            fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", self.requested))
        except OSError as e:
            if e.errno == errno.ENOTTY:
                os.close(fd)  # not a watchdog: nothing to stop, and a 'V' would reach some tty
                raise WatchdogError(
                    f"{self.path} is not a watchdog device (it does not know WDIOC_SETTIMEOUT)"
                ) from e
            _magic_close(fd)
            raise WatchdogError(
                f"the watchdog driver of {self.path} refused a {self.requested} s timeout "
                f"({e.strerror}): choose a fire timeout within the driver's range"
            ) from e
        try:
            try:
                got = fcntl.ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0))
            except OSError as e:
                raise WatchdogError(
                    f"cannot read back the timeout of the watchdog {self.path}: {e.strerror}"
                ) from e
            accepted = struct.unpack("i", got)[0]
            self.fire_timeout = accepted_timeout(self.path, self.requested, accepted)
            self._ping(fd)  # a driver without WDIOF_KEEPALIVEPING is found now, not later
        except WatchdogError:
            # Refusing to start leaves the device stopped: these are configuration errors, found
            # at the first start, and resetting the node for one would be worse. (An agent
            # restarted with a different W while holders run is the exception: keep W stable.)
            _magic_close(fd)
            raise
        return fd

    def _ping(self, fd: int) -> None:
        try:
            fcntl.ioctl(fd, WDIOC_KEEPALIVE, 0)
        except OSError as e:
            raise WatchdogError(
                f"keepalive on the watchdog {self.path} failed: {e.strerror}"
            ) from e

    def _open(self) -> int:
        try:
            # The magic close writes a byte: never to a regular file given by mistake, and an
            # O_WRONLY open of a FIFO would block; only a character device can be a watchdog.
            if not stat.S_ISCHR(os.stat(self.path).st_mode):
                raise WatchdogError(
                    f"{self.path} is not a character device, so not a watchdog: use "
                    "/dev/watchdogN, file:PATH for the file-backed test device, or none"
                )
            # O_NOCTTY: a path naming a tty by mistake must not become our controlling terminal.
            return os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise WatchdogError(_open_error(self.path, e)) from e


def accepted_timeout(path: str, requested: int, accepted: int) -> int:
    """The timeout to rely on, given what the driver accepted (drivers may round).

    Longer than requested is refused: other hosts take our leases 8N + W after our last renewal,
    so a device that fires later than W would leave a window where the old holder still writes.
    Shorter is safe (the node is reset sooner than anybody assumes) and is used.
    """
    if accepted > requested:
        raise WatchdogError(
            f"the watchdog driver of {path} rounded the requested {requested} s timeout up to "
            f"{accepted} s: other hosts would take this node's leases up to "
            f"{accepted - requested} s before it is reset; choose a fire timeout the driver "
            "supports exactly"
        )
    if accepted < 1:
        raise WatchdogError(f"the watchdog driver of {path} reports a timeout of {accepted} s")
    if accepted < requested:
        log.warning(
            "watchdog %s: the driver accepted %d s instead of %d s; using %d s",
            path,
            accepted,
            requested,
            accepted,
        )
    return accepted


def _open_error(path: str, e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return (
            f"the watchdog device {path} does not exist: load a driver (modprobe softdog) "
            "or configure --watchdog"
        )
    if e.errno == errno.EBUSY:
        return (
            f"the watchdog device {path} is busy: another process holds it open (wdmd, the "
            "watchdog daemon, systemd's RuntimeWatchdogSec=, another vmlease-agent); only one may"
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to open the watchdog device {path}: the agent must run as root"
    return f"cannot open the watchdog device {path}: {e.strerror}"


def _magic_close(fd: int) -> None:
    try:
        os.write(fd, MAGIC_CLOSE)
    finally:
        os.close(fd)


# ---- file-backed test device ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The content of a file-backed device. ``fed_at`` is CLOCK_BOOTTIME seconds
    (``engine.clock.boottime``), which every process on the machine shares, so the harness can
    compare it with its own clock."""

    armed: bool
    fire_timeout: int
    fed_at: float
    pid: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DeviceState:
        """Parse a device file; ``ValueError`` if it is not one."""
        d = json.loads(text)
        if not isinstance(d, dict) or set(d) != {"armed", "fire_timeout", "fed_at", "pid"}:
            raise ValueError(f"not a watchdog device state: {text[:80]!r}")
        return cls(bool(d["armed"]), int(d["fire_timeout"]), float(d["fed_at"]), int(d["pid"]))


def write_state(path: str, state: DeviceState) -> None:
    """Replace the device file atomically (temp file + rename): readers never see half a state.

    No fsync: the harness reads through the page cache, and after a real crash of the machine
    there is no test device left to supervise.
    """
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(state.to_json())
    os.replace(tmp, path)


def read_state(path: str) -> DeviceState:
    with open(path) as f:
        return DeviceState.from_json(f.read())


class FileWatchdog:
    """A JSON file that ``watchdog_harness`` supervises as hardware would (tests, the demo).

    Arming creates the file if the harness has not yet (a harness needs the pgid of the agent, so
    it may start after it). Unlike the Linux device, closing it never counts as a keepalive:
    ``abandon`` leaves the file as it is, so the harness fires W after the last real keepalive.
    """

    def __init__(self, path: str, fire_timeout: int) -> None:
        self.path = path
        self.fire_timeout = fire_timeout
        self._armed = False
        # ``disarm`` from the stopping thread must not be overwritten by a late keepalive.
        self._lock = threading.Lock()

    def arm(self) -> None:
        with self._lock:
            self._write(armed=True)
            self._armed = True

    def keepalive(self, seconds: int | None = None) -> None:
        want = self.fire_timeout if seconds is None else min(seconds, self.fire_timeout)
        with self._lock:
            if not self._armed:
                raise WatchdogError(f"keepalive on the watchdog {self.path}, which is not armed")
            write_state(self.path, DeviceState(True, want, boottime(), os.getpid()))

    def shorten(self, seconds: int) -> None:
        with self._lock:
            if self._armed and seconds >= 1:
                write_state(self.path, DeviceState(True, seconds, boottime(), os.getpid()))

    def disarm(self) -> None:
        with self._lock:
            if self._armed:
                self._write(armed=False)
                self._armed = False

    def abandon(self) -> None:
        with self._lock:
            self._armed = False

    def _write(self, armed: bool) -> None:
        write_state(self.path, DeviceState(armed, self.fire_timeout, boottime(), os.getpid()))


# ---- no watchdog ----------------------------------------------------------------------------


class NullWatchdog:
    """No device at all, for development: nothing resets the node, so nothing enforces fencing."""

    def __init__(self, fire_timeout: int) -> None:
        self.fire_timeout = fire_timeout

    def arm(self) -> None:
        log.warning(
            "NO WATCHDOG (--watchdog none): nothing resets this node if the agent hangs or its "
            "storage stalls, so other hosts may take leases while local holders still write. "
            "Development only."
        )

    def keepalive(self, seconds: int | None = None) -> None:
        pass

    def shorten(self, seconds: int) -> None:
        pass

    def disarm(self) -> None:
        pass

    def abandon(self) -> None:
        pass
