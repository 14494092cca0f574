"""From a parsed domain to the agent's resource specs: what the hook acquires and the agent checks.

Shared by the hook (``virt.hook``) and the agent's libvirt watcher (``virt.watcher``) so the
two can never disagree about which leases protect a domain. Light imports only: the hook loads
this on every call.
"""

import sys

TYPE_CHECKING = False  # no typing/dataclasses: ``started`` and ``stopped`` need only holder_key
if TYPE_CHECKING:
    from vmlease_agent.virt.config import LibvirtConfig
    from vmlease_agent.virt.domain import DomainLeases

#: Prefix of the agent holder key of a domain: ``libvirt:<uuid>`` (see ``api`` "key").
KEY_PREFIX = "libvirt:"


def holder_key(uuid: str) -> str:
    return KEY_PREFIX + uuid


def _escape(path: str) -> str:
    """A path inside ``LS:RES:PATH:OFFSET`` (``leasespec.escape_path``; not imported: it pulls
    in the engine, which the hook does not need on most calls)."""
    return path.replace("\\", "\\\\").replace(":", "\\:")


class Want:
    """One lease a domain needs."""

    __slots__ = ("auto", "disk", "lockspace", "offset", "path", "resource", "shared", "what")

    def __init__(
        self,
        lockspace: str,
        resource: str,
        path: str,
        offset: int,
        shared: bool,
        what: str,
        auto: bool,
        disk: str | None = None,
    ) -> None:
        self.lockspace = lockspace
        self.resource = resource
        self.path = path
        self.offset = offset
        self.shared = shared
        self.what = what  # for people: "disk vda (/images/a.qcow2)" or "<lease> key 'vm-key'"
        self.auto = auto  # an automatic disk lease (its file is created on first use)
        #: what an automatic disk lease's name hashes: the canonical path, or the identity
        #: (never starting with "/"); the agent shows it on the DiskLease
        self.disk = disk

    def __repr__(self) -> str:
        return f"Want({self.spec!r}, {self.what!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Want) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__
        )

    def __hash__(self) -> int:
        return hash(self.spec)

    @property
    def label(self) -> str:
        return f"{self.lockspace}:{self.resource}"

    @property
    def spec(self) -> str:
        text = f"{self.lockspace}:{self.resource}:{_escape(self.path)}:{self.offset}"
        return text + ":SH" if self.shared else text


def plan(cfg: "LibvirtConfig", leases: "DomainLeases") -> list[Want]:
    """Every lease of the domain, one per resource, sorted by label.

    Sorted so that every node takes a domain's leases in the same order: two nodes racing for
    two domains that share disks then collide on the first shared lease instead of each taking
    one and both failing.
    """
    from vmlease_agent.virt.domain import LeaseMode

    wants: dict[str, Want] = {}
    if cfg.auto_disk_leases:
        modes = leases.disk_resources()
        for disk in leases.disks:
            if disk.resource is None or disk.resource in wants:
                continue
            shared = modes[disk.resource] is LeaseMode.SHARED
            what = f"disk {disk.target} ({disk.source})"
            if disk.identity is not None:
                what = f"disk {disk.target} ({disk.source}, identity {disk.identity!r})"
            wants[disk.resource] = Want(
                cfg.lockspace,
                disk.resource,
                cfg.lease_path(disk.resource),
                0,
                shared,
                what,
                True,
                disk.identity if disk.identity is not None else disk.path,
            )
    out = {w.label: w for w in wants.values()}
    for lease in leases.leases:
        w = Want(
            lease.lockspace,
            lease.key,
            lease.path,
            lease.offset,
            lease.shared,
            f"<lease> key {lease.key!r} ({lease.path}:{lease.offset})",
            False,
        )
        out.setdefault(w.label, w)
    return [out[k] for k in sorted(out)]


def fence_command(
    cfg: "LibvirtConfig", uuid: str, policy: str, python: str | None = None
) -> list[str]:
    """The agent's kill command for a domain (``set_kill_command``; the agent appends the pid).

    A separate process, like sanlock's killpath ``libvirt_sanlock_helper``: fencing must work even
    when the agent was started without ``--libvirt``, and a hung libvirtd must not block the
    agent's main loop (the agent does not wait for it; its SIGKILL follows at D + G anyway).
    """
    return [
        python or sys.executable,
        "-m",
        "vmlease_agent.virt.fence",
        "--uri",
        cfg.uri,
        "--uuid",
        uuid,
        "--policy",
        policy,
        "--run-dir",
        cfg.run_dir,
        "--pid-dir",
        cfg.pid_dir,
    ]
