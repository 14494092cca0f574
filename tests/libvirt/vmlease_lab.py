"""vmlease on top of the libvirt lab: simulated hosts, the hook, its config (tests and the bench).

Two simulated hosts share one directory standing for shared storage (``leases/``): agent A
(host_id 1) serves this machine's libvirtd (the hook's config names its run dir), other agents
(host_id 2, 3, ...) stand for other nodes that hold a domain's disk leases. Plain Python, no
pytest: ``bench/libvirt_start.py`` uses it too.

Timings: io_timeout N = 1 s and watchdog fire timeout W = 6 s, so a dead host's leases are free
8N + W = 14 s after its last renewal; the kill grace G = 4 s (D + G: SIGKILL of a holder that
fencing through libvirt did not stop) leaves libvirt's destroy (1-2 s under TCG) time to work.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lab import URI, Lab
from vmlease_agent.sim.node import SimNode
from vmlease_agent.virt.config import LibvirtConfig
from waiting import wait_for

N = 1
W = 6
G = 4
SAFE = 8 * N + W
LS = "__LIBVIRT__DISKS__"
VMLEASE = os.path.join(os.path.dirname(sys.executable), "vmlease")


def resource_of(path: str | Path) -> str:
    """The lease name libvirt's sanlock driver gives a disk: MD5 of the path as written."""
    return hashlib.md5(str(path).encode(), usedforsecurity=False).hexdigest()


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class VmleaseLab:
    lab: Lab
    workdir: Path
    nodes: list[SimNode] = field(default_factory=list)
    hook: Path | None = None
    settings: dict[str, object] = field(default_factory=dict)
    _next_host: int = 2

    @property
    def leases(self) -> Path:
        return self.workdir / "leases"

    @property
    def config(self) -> Path:
        return self.workdir / "libvirt.conf"

    @property
    def hook_log(self) -> Path:
        return self.workdir / "hook.log"

    @property
    def lockspace_path(self) -> Path:
        return self.leases / LS

    def lease_path(self, resource: str) -> Path:
        return self.leases / resource

    def spec(self, resource: str, shared: bool = False) -> str:
        return f"{LS}:{resource}:{self.lease_path(resource)}:0" + (":SH" if shared else "")

    # ---- setup ----

    def setup(self, **settings: object) -> None:
        """The shared directory, the lockspace in it, the config (agent A's run dir)."""
        self.leases.mkdir(parents=True, exist_ok=True)
        self.write_config(**settings)
        subprocess.run(
            [VMLEASE, "libvirt", "--config", str(self.config), "init-lockspace"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def write_config(self, **settings: object) -> LibvirtConfig:
        self.settings = {
            "run_dir": str(self.workdir / "node-a"),
            "disk_lease_dir": str(self.leases),
            "io_timeout": N,
            "log_file": str(self.hook_log),
            "hook_timeout": 15.0,
            **settings,
        }
        cfg = LibvirtConfig(str(self.config), **self.settings)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(cfg.render())
        tmp.replace(self.config)
        return cfg

    @contextmanager
    def config_changed(self, **settings: object) -> Iterator[LibvirtConfig]:
        saved = dict(self.settings)
        try:
            yield self.write_config(**{**saved, **settings})
        finally:
            self.write_config(**saved)

    def install_hook(self) -> Path:
        """`vmlease libvirt install-hook` (it SIGHUPs libvirtd); the lab removes it at the end."""
        out = subprocess.run(
            [VMLEASE, "libvirt", "--config", str(self.config), "install-hook"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        self.hook = Path(out.split("installed ", 1)[1].split(" ", 1)[0])
        self.lab.hooks.add(self.hook)
        time.sleep(0.2)  # libvirtd's reload thread rescans the hooks (see lab.Lab.reload)
        return self.hook

    def uninstall_hook(self) -> None:
        if self.hook is not None:
            self.lab.remove_hook(self.hook.name)
            self.hook = None

    # ---- simulated hosts ----

    def start_node(
        self,
        name: str,
        host_id: int,
        *,
        ls_path: Path | str | None = None,
        libvirt: bool = False,
        node: SimNode | None = None,
    ) -> SimNode:
        """Start (or restart, given ``node``) an agent joined to the lockspace; wait until it
        can take leases (joined, no earlier holder of its host_id to wait out; the watchdog is
        armed by the first acquisition). ``libvirt``: with the libvirt watcher."""
        if node is None:
            node = SimNode(
                name,
                str(self.workdir),
                io_timeout=N,
                fire_timeout=W,
                kill_grace=G,
                lockspaces=[f"{LS}:{host_id}:{ls_path or self.lockspace_path}:0:{N}"],
            )
            self.nodes.append(node)
        with _env(VMLEASE_LIBVIRT=URI if libvirt else "", VMLEASE_LIBVIRT_CONFIG=str(self.config)):
            node.start()
        node.wait_joined(LS)
        wait_for(
            lambda: node.client.call("status")["watchdog"]["new_leases_wait"] == "",
            30,
            f"{node.name} to accept new leases",
        )
        if libvirt:
            wait_for(lambda: self.events(node, "libvirt_reconciled"), 20, "the libvirt watcher")
        return node

    def start_a(self, **kw) -> SimNode:
        return self.start_node("node-a", 1, libvirt=True, **kw)

    def other_host(self, **kw) -> SimNode:
        host_id = self._next_host
        self._next_host += 1
        return self.start_node(f"node-b{host_id}", host_id, **kw)

    @staticmethod
    def host_id(node: SimNode) -> int:
        return int(node.lockspaces[0].split(":")[1])

    def hold(self, node: SimNode, resource: str, owner: str = "vm-elsewhere"):
        """A process on ``node`` holding the disk lease (``vmlease client command ... sleep``)."""
        from vmlease_agent.virt.files import ensure_lease_file

        ensure_lease_file(LS, resource, str(self.lease_path(resource)), 30)
        proc = node.spawn_holder([self.spec(resource)], ["sleep", "600"], owner=owner)
        wait_for(
            lambda: proc.poll() is not None or node.client.call("inquire", pid=proc.pid),
            30,
            f"{node.name} to take {resource}",
        )
        if proc.poll() is not None:
            raise AssertionError(f"{node.name} could not take {resource}: {proc.stderr.read()}")
        return proc

    @staticmethod
    def events(node: SimNode, kind: str | None = None) -> list[dict]:
        return [e for e in node.client.call("events") if kind is None or e["event"] == kind]

    @staticmethod
    def leases_of(node: SimNode, holder: str | None = None) -> list[dict]:
        leases = node.client.call("status")["leases"]
        return [x for x in leases if holder is None or x["holder"] == holder]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()
        self.uninstall_hook()
