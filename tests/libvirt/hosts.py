"""N simulated hosts on this one machine, each a libvirtd with its own lock daemon.

Each :class:`Host` is a libvirtd + virtlogd in a mount, UTS and network namespace of its own,
with private ``/etc/libvirt``, ``/run`` (so ``/run/libvirt`` and the pidfiles),
``/var/lib/libvirt``, ``/var/log/libvirt`` and ``/var/cache/libvirt`` (bind mounts of
directories under the host's work dir, so the test process reads them at ``host.dir / ...``
without entering anything). Its
qemu.conf says ``lock_manager = "sanlock"``; its qemu-sanlock.conf gives it ``host_id = N`` and
a ``disk_lease_dir`` in the :class:`Cluster`'s shared directory, which every host sees at the
same path (it is not under any bind mount), as it sees the disk images there. libvirtd finds its
lock daemon only through its environment variable ``SANLOCK_RUN_DIR``.

**The lock daemon behind each host comes from a factory** (``Cluster(lock_daemon=...)``): a
callable taking the :class:`Host` and returning an object with ``run_dir`` (the directory whose
``sanlock.sock`` libvirtd and ``sanlock client`` talk to) and ``stop()``. The factory is called
after the host's namespaces exist and before its libvirtd starts; ``host.nsenter()`` is the
argv prefix that runs a command inside them. :func:`real_sanlock` (the reference) runs the real
sanlock 3.8 daemon there, so the killpath helper it runs (``libvirt_sanlock_helper``, which
connects to ``qemu:///system``) reaches *this* host's libvirtd. A drop-in daemon
(``vmlease-agent --sanlock-api``) is plugged in by writing a factory like it and naming it in
``VMLEASE_HOSTS_LOCK_DAEMON=module:callable`` (see :func:`lock_daemon_from_env`), or by passing
it as ``Cluster(lock_daemon=...)``.

The tests talk to each host through its socket: ``host.uri`` is
``qemu:///system?socket=<host.dir>/run/libvirt/libvirt-sock``. For migration the hosts also
listen on TCP (auth none) at ``10.213.7.<index>:16509`` on a veth into a bridge that lives in a
network namespace of its own (the hub): nothing is reachable but the hosts of one cluster.

Two things keep the simulation faithful to separate machines sharing storage:

* **QEMU's own image locking is off** (an emulator wrapper adds ``"locking":"off"`` to each
  ``file`` blockdev). On one kernel, QEMU's OFD locks on the shared image would refuse a second
  host's QEMU before libvirt ever asks the lock manager (libvirt-lab.md §3); across real hosts
  they are local, which is exactly why a lease manager is needed. With locking off, the only
  thing standing between two hosts' QEMUs is the lease.
* No cgroups (``cgroup_controllers = []``): without systemd, libvirt names a domain's cgroup
  ``machine/qemu-<id>-<name>``, and two hosts counting ids from 1 would collide on one
  cgroup tree.
* ``dynamic_ownership = 0``, images owned by ``libvirt-qemu`` from the start (as on shared
  storage with fixed ownership): otherwise a start *refused* on one host ends with that host's
  DAC driver chowning the shared image back to root, under the QEMU of the host that holds it
  (seen: a migration's destination then fails at ``cont`` with "Permission denied").

Timing: ``io_timeout = 1`` (qemu-sanlock.conf) on a fresh lease directory per cluster, so each
libvirtd's start blocks ~3 s on ``add_lockspace``; hosts start in parallel.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import libvirt
from lab import EMULATOR, TinyDomain, apply_udev_kvm_mode, restore_kvm_mode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: sanlockd
from sanlockd import SanlockDaemon

LS = "__LIBVIRT__DISKS__"
NET = "10.213.7"  # host i is NET.i/24 (the hub's bridge has no address)
PORT = 16509
SANLOCK_PLUGIN = "/usr/lib/x86_64-linux-gnu/libvirt/lock-driver/sanlock.so"
SYSTEM_CAPS = Path("/var/cache/libvirt/qemu/capabilities")

WRAPPER = r"""#!/bin/bash
# QEMU as on a separate host: its OFD image locks are host-local there, so they are off here
# (see tests/libvirt/hosts.py). Everything else is passed through; exec keeps the pid that
# libvirt registered with the lock daemon.
args=()
for a in "$@"; do
    args+=("${a//\"driver\":\"file\",/\"driver\":\"file\",\"locking\":\"off\",}")
done
exec __EMULATOR__ "${args[@]}"
"""


class SharedDomain(TinyDomain):
    """A :class:`TinyDomain` whose images belong to ``libvirt-qemu`` (hosts do not chown)."""

    def define(self) -> libvirt.virDomain:
        dom = super().define()
        qemu = pwd.getpwnam("libvirt-qemu")
        for dev in ("vda", "vdb", "vdc"):
            with contextlib.suppress(FileNotFoundError):
                os.chown(self.image(dev), qemu.pw_uid, qemu.pw_gid)
        return dom


def hosts_skip_reason() -> str | None:
    """Why the simulated hosts cannot run here (None: they can). Cheap checks only."""
    if os.geteuid() != 0:
        return "namespaces, bind mounts and libvirtd need root"
    missing = [b for b in ("unshare", "nsenter", "ip", "tc", "sanlock") if not shutil.which(b)]
    if missing:
        return f"{', '.join(missing)} missing: run `bash scripts/install-libvirt.sh`"
    if not Path(SANLOCK_PLUGIN).exists():
        return f"no {SANLOCK_PLUGIN}: apt-get install libvirt-sanlock (scripts/install-libvirt.sh)"
    r = subprocess.run(["unshare", "--mount", "--uts", "--net", "true"], capture_output=True,
                       check=False)  # fmt: skip
    if r.returncode != 0:
        return f"cannot create mount/UTS/network namespaces: {r.stderr.decode().strip()}"
    return None


def resource_of(path: str | Path) -> str:
    """The lease name libvirt's sanlock driver gives a disk: MD5 of its path as written."""
    return hashlib.md5(str(path).encode(), usedforsecurity=False).hexdigest()


class LockDaemon(Protocol):
    """What a host needs from its lock daemon: where its sanlock.sock is, and a way to stop."""

    run_dir: str

    def stop(self) -> None: ...


LockDaemonFactory = Callable[["Host"], LockDaemon]


def real_sanlock(host: Host) -> LockDaemon:
    """The reference: sanlock 3.8 (``sanlock daemon -D -w 0``) inside the host's namespaces."""
    return SanlockDaemon(prefix=host.nsenter())


class VmleaseSanlockApi:
    """``vmlease-agent --sanlock-api`` as a host's lock daemon (issue 12's drop-in), inside the
    host's namespaces. The agent is ``$VMLEASE_AGENT`` or the one beside this interpreter; an
    agent without ``--sanlock-api`` raises :class:`LockDaemonUnavailable` (tests skip)."""

    def __init__(self, host: Host, fire_timeout: int = 10) -> None:
        agent = os.environ.get("VMLEASE_AGENT") or str(
            Path(sys.executable).parent / "vmlease-agent"
        )
        help_text = subprocess.run([agent, "--help"], capture_output=True, text=True,
                                   timeout=60, check=False).stdout  # fmt: skip
        if "--sanlock-api" not in help_text:
            raise LockDaemonUnavailable(f"{agent} has no --sanlock-api (issue 12 not merged)")
        base = Path(tempfile.mkdtemp(prefix="vmlease-hostagent-", dir="/var/tmp"))
        self.base = base
        self.run_dir = str(base / "sanlock")
        (base / "agent").mkdir()
        self.log = (base / "agent.log").open("w")
        self.argv = [
            *host.nsenter(), agent, "--run-dir", str(base / "agent"), "--node-name", host.name,
            "--watchdog", f"file:{base / 'watchdog'}", "--watchdog-fire-timeout",
            str(fire_timeout), "--sanlock-api", "--sanlock-run-dir", self.run_dir,
        ]  # fmt: skip
        self._spawn()

    def _spawn(self) -> None:
        base = self.base
        self.proc = subprocess.Popen(
            self.argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            sock = Path(self.run_dir, "sanlock.sock")
            _wait(lambda: sock.exists() or self.proc.poll() is not None, 30, "sanlock.sock")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"vmlease-agent exited: {(base / 'agent.log').read_text()[-2000:]}")

    def restart(self) -> None:
        """Stop the agent (SIGTERM: holders keep running, their leases stay on disk) and start
        another with the same run directories, which adopts them: the upgrade or crash that,
        with the sanlock daemon, would kill every VM."""
        self.proc.terminate()
        self.proc.wait(timeout=30)
        Path(self.run_dir, "sanlock.sock").unlink(missing_ok=True)
        self._spawn()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if os.environ.get("VMLEASE_KEEP_AGENT_LOGS"):  # for a failure to be read afterwards
            print(f"vmlease-agent log kept: {self.base / 'agent.log'}")
            return
        shutil.rmtree(self.base, ignore_errors=True)


class LockDaemonUnavailable(RuntimeError):
    """The lock daemon asked for cannot run here (the tests skip, saying why)."""


def vmlease_sanlock_api(host: Host) -> LockDaemon:
    return VmleaseSanlockApi(host)


def lock_daemons_from_env() -> list[str]:
    """The lock daemons the hosts tests run against: ``VMLEASE_HOSTS_LOCK_DAEMON`` (one name for
    :func:`lock_daemon_named`), or by default both the reference and the drop-in."""
    spec = os.environ.get("VMLEASE_HOSTS_LOCK_DAEMON")
    return [spec] if spec else ["sanlock", "vmlease"]


def lock_daemon_named(spec: str) -> LockDaemonFactory:
    """``sanlock`` → :func:`real_sanlock`; ``vmlease`` → :func:`vmlease_sanlock_api`; otherwise
    ``module:callable``, a factory importable from tests/ or the venv."""
    if spec == "sanlock":
        return real_sanlock
    if spec == "vmlease":
        return vmlease_sanlock_api
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Lease:
    """One ``r`` line of ``sanlock client status``."""

    lockspace: str
    resource: str
    path: str
    offset: int
    lver: int
    pid: int


_R_LINE = re.compile(r"^r (?P<ls>[^:]+):(?P<res>[^:]+):(?P<path>.+):(?P<off>\d+):(?P<lver>\d+)"
                     r"(?: \S+)* p (?P<pid>\d+)")  # fmt: skip


def parse_status(text: str) -> list[Lease]:
    leases = []
    for line in text.splitlines():
        m = _R_LINE.match(line)
        if m:
            leases.append(Lease(m["ls"], m["res"], m["path"], int(m["off"]), int(m["lver"]),
                                int(m["pid"])))  # fmt: skip
    return leases


# ---- session-wide kit: the emulator wrapper and a warm capability cache ------------------------


@dataclass
class Kit:
    """Shared by every cluster of a session: the emulator wrapper (its capabilities are probed
    once, ~4 s, then copied into each host's cache) and the ``/dev/kvm`` mode (see lab.py)."""

    dir: Path
    _kvm_restore: tuple[int, int] | None = None

    @classmethod
    def create(cls, dir: Path) -> Kit:
        dir.mkdir(parents=True, exist_ok=True)
        dir.chmod(0o755)
        (dir / "caps").mkdir(exist_ok=True)
        emu = dir / "qemu-unlocked"
        emu.write_text(WRAPPER.replace("__EMULATOR__", EMULATOR))
        emu.chmod(0o755)
        kit = cls(dir)
        kit._kvm_restore = apply_udev_kvm_mode()
        return kit

    @property
    def emulator(self) -> str:
        return str(self.dir / "qemu-unlocked")

    @property
    def caps(self) -> Path:
        return self.dir / "caps"

    def close(self) -> None:
        restore_kvm_mode(self._kvm_restore)
        self._kvm_restore = None
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- namespaces ----------------------------------------------------------------------------


def _mnt_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _pids_in_mnt_ns(ino: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _mnt_ns(int(entry)) == ino:
            pids.append(int(entry))
    return pids


def alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st[st.rindex(")") + 2] != "Z"


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30, **kw)


_HOLDER = """set -e
hostname "$1"
for pair in "run:/run" "etc:/etc/libvirt" "lib:/var/lib/libvirt" "log:/var/log/libvirt" \
            "cache:/var/cache/libvirt"; do
    mount --bind "$2/${pair%%:*}" "${pair#*:}"
done
ip link set lo up
echo ready
exec sleep infinity
"""


class Hub:
    """A network namespace with a bridge; each host plugs a veth into it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        _wait(lambda: _net_ns(self.proc.pid) != _net_ns(os.getpid()), 10, "the hub namespace")
        self.ip("link", "add", "br0", "type", "bridge")
        self.ip("link", "set", "br0", "up")

    def ip(self, *args: str) -> None:
        _run(["nsenter", "-t", str(self.proc.pid), "-n", "--", "ip", *args])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _net_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


# ---- hosts ---------------------------------------------------------------------------------


@dataclass
class HostConfig:
    """qemu-sanlock.conf of every host (host_id is the host's index), and its lock manager:
    ``"nop"`` (libvirt's default: no leases at all) is the control for the safety tests and the
    baseline for the benchmark."""

    lock_manager: str = "sanlock"
    auto_disk_leases: bool = True
    require_lease_for_disks: bool | None = None  # None: libvirt's default (= not auto)
    io_timeout: int = 1


class Host:
    """One simulated host; made and started by :class:`Cluster`."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"vmlh{index}"
        self.dir = cluster.workdir / self.name
        self.ip = f"{NET}.{index}"
        self.host_uuid = str(uuid.uuid4())
        self.holder: subprocess.Popen | None = None
        self.daemon: LockDaemon | None = None
        self.virtlogd: subprocess.Popen | None = None
        self.libvirtd: subprocess.Popen | None = None
        self._mnt: int | None = None
        self._conn: libvirt.virConnect | None = None
        self.start_seconds: float | None = None  # libvirtd start until it answers

    # ---- addresses ----

    @property
    def socket(self) -> Path:
        return self.dir / "run/libvirt/libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def tcp_uri(self) -> str:
        return f"qemu+tcp://{self.ip}/system"

    @property
    def migrate_uri(self) -> str:
        return f"tcp://{self.ip}"

    def nsenter(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-u", "-n", "--"]

    # ---- setup ----

    def _prepare_dirs(self) -> None:
        for sub in ("run", "lib", "log", "cache"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "log").chmod(0o700)
        # /etc/libvirt: the machine's, minus hooks (a hook another test installs system-wide
        # must not run here) and persistent domains.
        shutil.copytree("/etc/libvirt", self.dir / "etc", symlinks=True,
                        ignore=shutil.ignore_patterns("hooks", "*.xml.*"))  # fmt: skip
        for xml in (self.dir / "etc/qemu").glob("*.xml"):
            xml.unlink()
        (self.dir / "etc/hooks").mkdir()
        # /var/lib/libvirt: the directory tree (owners and modes matter: QEMU runs as
        # libvirt-qemu), none of the files.
        src = Path("/var/lib/libvirt")
        for d, dirs, _files in os.walk(src):
            dirs[:] = [x for x in dirs if not x.startswith("domain-")]
            rel = Path(d).relative_to(src)
            dst = self.dir / "lib" / rel
            dst.mkdir(exist_ok=True)
            st = os.stat(d)
            os.chown(dst, st.st_uid, st.st_gid)
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        # A warm capability cache: QEMU's probe takes seconds per emulator otherwise.
        caps = self.dir / "cache/qemu/capabilities"
        caps.mkdir(parents=True)
        for cache in (SYSTEM_CAPS, self.cluster.kit.caps):
            if cache.is_dir():
                for f in cache.glob("*.xml"):
                    shutil.copy2(f, caps / f.name)
        self._write_config()

    def _write_config(self) -> None:
        cfg = self.cluster.config
        etc = self.dir / "etc"
        with (etc / "libvirtd.conf").open("a") as f:
            f.write(
                "\n# tests/libvirt/hosts.py\n"
                f'listen_tls = 0\nlisten_tcp = 1\nlisten_addr = "{self.ip}"\n'
                f'auth_tcp = "none"\nhost_uuid = "{self.host_uuid}"\n'
                'log_filters = "1:locking 3:*"\n'
                'log_outputs = "1:file:/var/log/libvirt/libvirtd.log"\n'
            )
        with (etc / "qemu.conf").open("a") as f:
            f.write(
                "\n# tests/libvirt/hosts.py\n"
                "cgroup_controllers = [ ]\ndynamic_ownership = 0\n"
                f'lock_manager = "{cfg.lock_manager}"\n'
                f'migration_address = "{self.ip}"\nmigration_host = "{self.ip}"\n'
            )
        lines = [
            f"auto_disk_leases = {int(cfg.auto_disk_leases)}",
            f"host_id = {self.index}",
            f'disk_lease_dir = "{self.cluster.leases}"',
            f"io_timeout = {cfg.io_timeout}",
        ]
        if cfg.require_lease_for_disks is not None:
            lines.append(f"require_lease_for_disks = {int(cfg.require_lease_for_disks)}")
        (etc / "qemu-sanlock.conf").write_text("\n".join(lines) + "\n")

    def _start_namespaces(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--net", "--propagation", "private", "--",
             "bash", "-c", _HOLDER, "holder", self.name, str(self.dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            err = self.holder.stderr.read() if self.holder.stderr else ""
            raise RuntimeError(f"{self.name}: namespaces failed: {err}")
        self._mnt = _mnt_ns(self.holder.pid)
        hub = self.cluster.hub
        hub.ip("link", "add", f"{self.name}-br", "type", "veth", "peer", "name", "eth0",
               "netns", str(self.holder.pid))  # fmt: skip
        hub.ip("link", "set", f"{self.name}-br", "master", "br0", "up")
        _run([*self.nsenter(), "ip", "addr", "add", f"{self.ip}/24", "dev", "eth0"])
        _run([*self.nsenter(), "ip", "link", "set", "eth0", "up"])

    def start(self) -> None:
        """Namespaces, lock daemon, virtlogd, libvirtd; returns when libvirtd answers."""
        self._prepare_dirs()
        self._start_namespaces()
        if self.cluster.prepare_host is not None:
            self.cluster.prepare_host(self)
        self.daemon = self.cluster.lock_daemon(self)
        env = dict(os.environ, SANLOCK_RUN_DIR=self.daemon.run_dir)
        env.pop("LD_PRELOAD", None)
        logs = self.dir / "log"
        with (logs / "virtlogd.out").open("w") as out:
            self.virtlogd = subprocess.Popen(
                [*self.nsenter(), "virtlogd"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(lambda: (self.dir / "run/libvirt/virtlogd-sock").exists(), 10, "virtlogd")
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no "not yet" noise
        t0 = time.monotonic()
        with (logs / "libvirtd.out").open("w") as out:
            self.libvirtd = subprocess.Popen([*self.nsenter(), "libvirtd", "--listen"], env=env,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 90
        while True:
            if self.libvirtd.poll() is not None:
                raise RuntimeError(f"{self.name}: libvirtd exited: {self.log_tail()}")
            try:
                libvirt.open(self.uri).close()
                break
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.start_seconds = time.monotonic() - t0

    # ---- use ----

    def connect(self) -> libvirt.virConnect:
        if self._conn is None or not self._conn.isAlive():
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            self._conn = libvirt.open(self.uri)
        return self._conn

    def domain(self, name: str, directory: Path | None = None, **options) -> TinyDomain:
        """A :class:`TinyDomain` on this host whose image is in the shared directory (the same
        name on two hosts is the same disk), run by the lock-free emulator wrapper."""
        return SharedDomain(
            self.connect(),
            name,
            directory or self.cluster.images,
            emulator=self.cluster.kit.emulator,
            **options,
        )

    def qemu_pid(self, name: str) -> int:
        return int((self.dir / f"run/libvirt/qemu/{name}.pid").read_text())

    def sanlock(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``sanlock client ...`` against this host's lock daemon (the same CLI for any
        daemon that speaks sanlock's protocol)."""
        assert self.daemon is not None
        env = dict(os.environ, SANLOCK_RUN_DIR=self.daemon.run_dir)
        env.pop("LD_PRELOAD", None)
        return subprocess.run(["sanlock", "client", *args], env=env, capture_output=True,
                              text=True, timeout=30, check=check)  # fmt: skip

    def leases(self) -> list[Lease]:
        return parse_status(self.sanlock("status").stdout)

    def lockspace_joined(self) -> bool:
        return any(
            line.startswith(f"s {LS}:{self.index}:") and "ADD" not in line
            for line in self.sanlock("status").stdout.splitlines()
        )

    def log_tail(self, n: int = 40) -> str:
        out = []
        for name in ("libvirtd.out", "libvirtd.log"):
            with contextlib.suppress(OSError):
                out += (self.dir / "log" / name).read_text().splitlines()[-n:]
        return "\n".join(out)

    # ---- teardown ----

    def stop(self) -> None:
        """Destroy the domains (their leases go back), stop libvirtd, virtlogd and the lock
        daemon, then kill whatever is left in the host's mount namespace (a QEMU whose libvirtd
        died, the holder): the namespaces and their mounts go with the last process."""
        with contextlib.suppress(libvirt.libvirtError):
            conn = self.connect() if self.libvirtd and self.libvirtd.poll() is None else None
            if conn is not None:
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
        for proc in (self.libvirtd, self.virtlogd):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None
        if self._mnt is not None:
            for _ in range(50):
                pids = _pids_in_mnt_ns(self._mnt)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
                if not [p for p in pids if alive(p)]:
                    break
        if self.holder is not None:
            self.holder.wait(timeout=10)
        for proc in (self.libvirtd, self.virtlogd):
            if proc is not None:
                proc.wait(timeout=10)


# ---- the cluster ---------------------------------------------------------------------------


@dataclass
class Cluster:
    """``n`` hosts sharing ``workdir/shared`` (leases/ and images/); see the module docstring."""

    workdir: Path
    kit: Kit
    n: int = 2
    lock_daemon: LockDaemonFactory = real_sanlock
    config: HostConfig = field(default_factory=HostConfig)
    #: Called with each host once its namespaces exist, before its lock daemon starts (e.g. to
    #: bind-mount a stallable file over the lockspace in that host's view only).
    prepare_host: Callable[[Host], None] | None = None
    hosts: list[Host] = field(default_factory=list)
    hub: Hub | None = None

    @property
    def shared(self) -> Path:
        return self.workdir / "shared"

    @property
    def leases(self) -> Path:
        return self.shared / "leases"

    @property
    def images(self) -> Path:
        return self.shared / "images"

    def lease_path(self, resource: str) -> Path:
        return self.leases / resource

    def start(self) -> Cluster:
        """Start every host (in parallel: each blocks ~3 s on add_lockspace); on any failure
        stop what started and raise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # QEMU (libvirt-qemu) must reach shared/images
        for d in (self.shared, self.leases, self.images):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        try:
            self.hub = Hub()
            self.hosts = [Host(self, i) for i in range(1, self.n + 1)]
            # Host 1 alone first: its libvirtd creates and initialises the __LIBVIRT__DISKS__
            # lockspace file (O_EXCL create, then write_lockspace); a libvirtd started beside it
            # finds the file created but not yet written and its add_lockspace fails (-223),
            # which libvirt 9.0 only logs: that host then refuses every start with -ENOSPC.
            # (Real hosts started at the same moment on a fresh lease directory race the same
            # way; the window is wider when the lock daemon's write_lockspace is slower.)
            self.hosts[0].start()
            if not any(self.kit.caps.iterdir()):
                self._save_caps(self.hosts[0])  # probed the wrapper once: the others copy it
            rest = self.hosts[1:]
            errors: list[BaseException] = []

            def run(host: Host) -> None:
                try:
                    host.start()
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(h,)) for h in rest]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        except BaseException:
            self.stop()
            raise
        return self

    def _save_caps(self, host: Host) -> None:
        host.connect().getDomainCapabilities(self.kit.emulator, "x86_64", "pc", "qemu")
        for f in (host.dir / "cache/qemu/capabilities").glob("*.xml"):
            shutil.copy2(f, self.kit.caps / f.name)

    def add_lockspace(self, name: str) -> Path:
        """A lockspace of our own for manual ``<lease>`` elements (libvirt joins only
        ``__LIBVIRT__DISKS__``, and only with auto_disk_leases): ``sanlock direct init`` of a
        file in leases/, then every host's lock daemon joins it as host_id = index, through
        python-sanlock (``sanlock client add_lockspace`` cannot set io_timeout). Hosts join in
        parallel (~3 s)."""
        path = self.leases / name
        with path.open("wb") as f:
            f.truncate(1 << 20)
        # -o: the io_timeout written into every delta lease; a join waits 2x what it finds
        # there (20 s for the default 10).
        _run(["sanlock", "direct", "init", "-o", str(self.config.io_timeout), "-s",
              f"{name}:0:{path}:0"])  # fmt: skip
        procs = []
        for host in self.hosts:
            assert host.daemon is not None
            env = dict(os.environ, SANLOCK_RUN_DIR=host.daemon.run_dir)
            env.pop("LD_PRELOAD", None)
            code = (
                "import sanlock, sys; sanlock.add_lockspace(sys.argv[1].encode(), "
                "int(sys.argv[2]), sys.argv[3], 0, iotimeout=int(sys.argv[4]))"
            )
            procs.append(subprocess.Popen(
                [sys.executable, "-c", code, name, str(host.index), str(path),
                 str(self.config.io_timeout)],
                env=env, stderr=subprocess.PIPE, text=True,
            ))  # fmt: skip
        for host, proc in zip(self.hosts, procs, strict=True):
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise RuntimeError(f"{host.name}: add_lockspace {name}: {err}")
        return path

    def init_resource(self, lockspace: str, key: str) -> Path:
        """A resource lease file for a manual ``<lease>`` (``sanlock direct init -r``)."""
        path = self.leases / key
        with path.open("wb") as f:
            f.truncate(1 << 20)
        _run(["sanlock", "direct", "init", "-r", f"{lockspace}:{key}:{path}:0"])
        return path

    def __getitem__(self, index: int) -> Host:
        """Hosts by their index (= host_id), from 1."""
        return self.hosts[index - 1]

    def holders(self, resource: str, hosts: Iterable[Host] | None = None) -> dict[int, Lease]:
        """Host index → the lease on ``resource`` its lock daemon reports."""
        found = {}
        for host in hosts if hosts is not None else self.hosts:
            if host.daemon is None:
                continue
            for lease in host.leases():
                if lease.resource == resource:
                    found[host.index] = lease
        return found

    def stop(self) -> None:
        for host in reversed(self.hosts):
            try:
                host.stop()
            except Exception as e:  # keep tearing the others down
                print(f"hosts: stopping {host.name}: {e!r}", file=sys.stderr)
        if self.hub is not None:
            self.hub.stop()
            self.hub = None
