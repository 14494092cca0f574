"""A real libvirtd + QEMU (TCG) on this machine, for tests, without systemd.

Plain Python (no pytest) so the later hook and agent tests, and a human at a REPL, can use it.
Recipe and numbers: /work/shared/reference/libvirt-lab.md. What this module relies on:

* Debian 12 has no modular daemons: ``virtlogd -d`` then ``libvirtd -d`` (pidfiles
  ``/run/virtlogd.pid``, ``/run/libvirtd.pid``). The first libvirtd start probes QEMU's
  capabilities into /var/cache/libvirt/qemu (4.6 s measured here with the ``/dev/kvm`` mode
  below, 8-12 s without it); later starts take ~0.2 s.
* :class:`Lab` reuses daemons that already run and remembers which ones it started, so
  :meth:`Lab.stop` stops only those. (A second test session reusing the daemons of a first one
  loses them when the first one stops.)
* Hooks: libvirtd decides at startup, and again on SIGHUP, *whether* any ``qemu`` hook exists
  (``virHookInitialize``); if none did, a script added later is never run. Once one did, every
  executable in ``qemu.d/`` is run on each call. :meth:`Lab.install_hook` therefore sends
  SIGHUP (the reload thread rescans hooks first thing; verified 8/8 with a start issued right
  after the signal). Removing a hook needs nothing: ``qemu.d/`` is listed at each call.
* ``/dev/kvm``: the domains are ``type='qemu'`` (TCG), but when ``/dev/kvm`` exists with the
  kernel's default ``root:root 0600`` (no udev daemon here), libvirt's capability cache flips on
  every lookup (the probe gets KVM, the ``libvirt-qemu`` user does not) and each define/start
  re-probes QEMU for ~3.5 s. :class:`Lab` gives the node the ``root:kvm 0660`` that Debian's
  udev rule (``50-udev-default.rules``) sets on a booted system, and restores it on stop.
"""

from __future__ import annotations

import grp
import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4
from xml.sax.saxutils import escape, quoteattr

import libvirt

URI = "qemu:///system"
HOOKS = Path("/etc/libvirt/hooks")
HOOK_DIR = HOOKS / "qemu.d"
KVM_DEVICE = Path("/dev/kvm")
EMULATOR = "/usr/bin/qemu-system-x86_64"


@dataclass(frozen=True)
class Daemon:
    name: str
    pidfile: Path


VIRTLOGD = Daemon("virtlogd", Path("/run/virtlogd.pid"))  # the qemu driver logs through it
LIBVIRTD = Daemon("libvirtd", Path("/run/libvirtd.pid"))


def apply_udev_kvm_mode() -> tuple[int, int] | None:
    """Give /dev/kvm the ``root:kvm 0660`` Debian's udev rule sets (module docstring: without
    it libvirt re-probes QEMU on every start); returns the (gid, mode) to restore, if changed."""
    try:
        st = KVM_DEVICE.stat()
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return None
    if st.st_gid == kvm_gid and st.st_mode & 0o660 == 0o660:
        return None
    os.chown(KVM_DEVICE, -1, kvm_gid)
    os.chmod(KVM_DEVICE, 0o660)
    return st.st_gid, stat.S_IMODE(st.st_mode)


def restore_kvm_mode(saved: tuple[int, int] | None) -> None:
    if saved is not None:
        os.chown(KVM_DEVICE, -1, saved[0])
        os.chmod(KVM_DEVICE, saved[1])


def _comm_and_state(pid: int) -> tuple[str, str] | None:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    close = status.rindex(")")  # the command name may itself contain ")"
    return status[status.index("(") + 1 : close], status[close + 2]


def running_pid(daemon: Daemon) -> int | None:
    """The daemon's pid if its pidfile names a live (not zombie) process of that name."""
    try:
        pid = int(daemon.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    found = _comm_and_state(pid)
    return pid if found is not None and found[0] == daemon.name and found[1] != "Z" else None


def _gone(pid: int) -> bool:
    """Exited; a zombie counts (PID 1 here reaps daemonized children late)."""
    found = _comm_and_state(pid)
    return found is None or found[1] == "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Lab:
    """The daemons, hooks and ``/dev/kvm`` mode of one test session; undone by :meth:`stop`."""

    def __init__(self, workdir: Path, uri: str = URI) -> None:
        self.workdir = workdir
        self.uri = uri
        self.started: dict[str, int] = {}  # daemon name → pid, only those this lab started
        self.hooks: set[Path] = set()
        self._kvm_restore: tuple[int, int] | None = None  # (gid, mode) found on /dev/kvm

    # ---- daemons ----

    def start(self, timeout: float = 120.0) -> None:
        """Bring virtlogd and libvirtd up (reusing running ones) and wait for ``self.uri``."""
        self._apply_udev_kvm_mode()
        for daemon in (VIRTLOGD, LIBVIRTD):
            if running_pid(daemon) is None:
                self.started[daemon.name] = self._spawn(daemon)
        self.wait_ready(timeout)

    def _spawn(self, daemon: Daemon) -> int:
        # The daemon's own log goes to the work dir: the first place to look when a test fails.
        env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{self.workdir}/{daemon.name}.log")
        subprocess.run([daemon.name, "-d"], env=env, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while (pid := running_pid(daemon)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{daemon.name} -d returned but {daemon.pidfile} names no live process"
                )
            time.sleep(0.02)
        return pid

    def wait_ready(self, timeout: float) -> None:
        """Until the URI answers: the first libvirtd start probes QEMU for seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect().close()
                return
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def connect(self) -> libvirt.virConnect:
        # libvirt prints every error to stderr by default; callers get the exception anyway.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        return libvirt.open(self.uri)

    def reload(self) -> None:
        """SIGHUP libvirtd: it rescans the hooks (see the module docstring)."""
        pid = running_pid(LIBVIRTD)
        if pid is None:
            raise RuntimeError("libvirtd is not running")
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.2)  # the reload thread rescans hooks first; margin for a loaded machine

    def stop(self, timeout: float = 30.0) -> None:
        """Remove our hooks, stop the daemons this lab started (libvirtd first), restore kvm."""
        for path in self.hooks:
            path.unlink(missing_ok=True)
        self.hooks.clear()
        for name in ("libvirtd", "virtlogd"):
            pid = self.started.pop(name, None)
            if pid is None or _gone(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, timeout):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, timeout)
        restore_kvm_mode(self._kvm_restore)
        self._kvm_restore = None

    def _apply_udev_kvm_mode(self) -> None:
        self._kvm_restore = apply_udev_kvm_mode()

    # ---- hooks ----

    def install_hook(self, name: str, script: str, *, reload: bool = True) -> Path:
        """Install ``qemu.d/<name>`` (mode 755, atomically) and, by default, SIGHUP libvirtd.

        ``reload=False`` exists to show that a hook added to a running libvirtd that had no
        hooks at its start is not run.
        """
        HOOK_DIR.mkdir(parents=True, exist_ok=True)
        path = HOOK_DIR / name
        tmp = HOOKS / f".{name}.tmp"  # outside qemu.d: libvirt runs every executable in there
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(path)
        self.hooks.add(path)
        if reload:
            self.reload()
        return path

    def remove_hook(self, name: str) -> None:
        path = HOOK_DIR / name
        path.unlink(missing_ok=True)
        self.hooks.discard(path)


def recording_hook(log_dir: Path) -> str:
    """A bash hook: appends ``NAME OP SUBOP`` to ``log_dir/calls``, saves stdin (the domain XML)
    as ``log_dir/NAME-OP.xml``, and while ``log_dir/deny-NAME`` exists refuses ``prepare`` with
    that file's content on stderr (and a line on stdout, which libvirt drops)."""
    d = str(log_dir)
    return f"""#!/bin/bash
xml=$(cat)
echo "$1 $2 $3" >> '{d}/calls'
printf '%s\\n' "$xml" > '{d}/'"$1-$2.xml"
if [ "$2" = prepare ] && [ -e '{d}/'"deny-$1" ]; then
    echo "stdout of the refusing hook"
    cat '{d}/'"deny-$1" >&2
    exit 1
fi
exit 0
"""


def hook_calls(log_dir: Path, domain: str) -> list[str]:
    """``"OP SUBOP"`` for each call of :func:`recording_hook` for ``domain``, in order."""
    try:
        lines = (log_dir / "calls").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == domain]


@dataclass(frozen=True)
class LeaseSpec:
    """A ``<lease>`` element (libvirt accepts it with the default ``nop`` lock manager)."""

    lockspace: str
    key: str
    path: Path
    offset: int = 0


@dataclass
class TinyDomain:
    """A 64 MiB TCG domain with one qcow2 disk in ``directory``; it sits in SeaBIOS.

    Options add a read-only disk (``vdb``), a ``<shareable/>`` raw disk (``vdc``; QEMU allows
    concurrent access only for raw), a ``<lease>``, a ``<serial>`` on ``vda`` and raw
    ``<metadata>`` children. ``directory`` must be traversable by the ``libvirt-qemu`` user.
    """

    conn: libvirt.virConnect
    name: str
    directory: Path
    readonly_disk: bool = False
    shareable_disk: bool = False
    lease: LeaseSpec | None = None
    serial: str | None = None
    metadata: str = ""
    uuid: str = field(default_factory=lambda: str(uuid4()))
    emulator: str = EMULATOR
    extra: str = ""  # raw XML after <devices>, e.g. <on_lockfailure>poweroff</on_lockfailure>

    def image(self, dev: str) -> Path:
        return self.directory / f"{self.name}-{dev}.img"

    def xml(self) -> str:
        disks = [
            self._disk(
                "vda", "qcow2", f"<serial>{escape(self.serial)}</serial>" if self.serial else ""
            )
        ]
        if self.readonly_disk:
            disks.append(self._disk("vdb", "raw", "<readonly/>"))
        if self.shareable_disk:
            disks.append(self._disk("vdc", "raw", "<shareable/>", cache="none"))
        lease = ""
        if self.lease is not None:
            lease = (
                f"<lease><lockspace>{escape(self.lease.lockspace)}</lockspace>"
                f"<key>{escape(self.lease.key)}</key>"
                f"<target path={quoteattr(str(self.lease.path))} offset='{self.lease.offset}'/>"
                "</lease>"
            )
        metadata = f"<metadata>{self.metadata}</metadata>" if self.metadata else ""
        return f"""<domain type='qemu'>
  <name>{escape(self.name)}</name>
  <uuid>{self.uuid}</uuid>
  {metadata}
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>{escape(self.emulator)}</emulator>
    {"".join(disks)}
    {lease}
    <serial type='pty'/>
    <console type='pty'/>
    <memballoon model='none'/>
  </devices>
  {self.extra}
</domain>"""

    def _disk(self, dev: str, fmt: str, extra: str, cache: str | None = None) -> str:
        cache_attr = f" cache='{cache}'" if cache else ""
        return (
            f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'{cache_attr}/>"
            f"<source file={quoteattr(str(self.image(dev)))}/>"
            f"<target dev='{dev}' bus='virtio'/>{extra}</disk>"
        )

    def define(self) -> libvirt.virDomain:
        """Create the images (if missing) and define the domain persistently."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.image("vda").exists():
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(self.image("vda")), "64M"],
                check=True,
                timeout=30,
            )
        for dev, wanted in (("vdb", self.readonly_disk), ("vdc", self.shareable_disk)):
            if wanted and not self.image(dev).exists():
                with self.image(dev).open("wb") as f:
                    f.truncate(16 << 20)
        return self.conn.defineXML(self.xml())

    def domain(self) -> libvirt.virDomain:
        return self.conn.lookupByName(self.name)

    def start(self) -> None:
        self.domain().create()

    def destroy(self) -> None:
        """Power off (TCG QEMU takes 1-2 s to exit); nothing if it does not run."""
        dom = self.domain()
        if dom.isActive():
            dom.destroy()

    def undefine(self) -> None:
        """Destroy if needed and undefine; nothing if it is not defined. Images stay."""
        try:
            dom = self.domain()
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        if dom.isActive():
            dom.destroy()
        dom.undefine()

    def qemu_pid(self) -> int:
        """QEMU's pid from libvirt's pidfile (no trailing newline)."""
        return int(Path(f"/run/libvirt/qemu/{self.name}.pid").read_text())
