"""Configuration of the libvirt integration: one small file read by the hook, the agent and the CLI.

Why a file: libvirt runs its hooks with an empty environment (``LC_ALL=C PATH=... HOME=...``),
so nothing the administrator exports reaches the hook. The installer writes the file's path into
the hook shim; the agent reads the same file (``--libvirt-config``) so that both compute the same
leases for a domain.

Format: libvirt's own ``key = value`` lines (as in ``/etc/libvirt/qemu-sanlock.conf``), ``#``
comments, strings in double quotes, numbers and booleans (0/1) bare. Unknown keys are an error,
not ignored: a typo (``auto_disk_lease``) would otherwise silently change what is protected.

==========================  ==================================  ================================
key                         default                             meaning
==========================  ==================================  ================================
``run_dir``                 ``/run/vmlease``                    the agent's run dir (its socket)
``uri``                     ``qemu:///system``                  libvirt URI, used when fencing
``lockspace``               ``__LIBVIRT__DISKS__``              lockspace of automatic disk leases
``disk_lease_dir``          ``/var/lib/libvirt/sanlock``        shared dir: lockspace + lease files
``auto_disk_leases``        ``1``                               a lease per disk (0: only <lease>)
``on_lockfailure``          ``"destroy"``                       policy of domains that have no
                                                                ``<on_lockfailure>``: destroy|pause
``io_timeout``              ``10``                              N written by ``init-lockspace``
``acquire_wait``            ``0``                               seconds a start retries a lease
                                                                held by another live holder
``hook_timeout``            ``30``                              the hook's overall deadline
``pid_dir``                 ``/run/libvirt/qemu``               where libvirt writes NAME.pid
``log_file``                ``/var/log/vmlease/libvirt-hook.log``  one line per hook call ("" off)
==========================  ==================================  ================================

The defaults for ``lockspace`` and ``disk_lease_dir`` are libvirt's sanlock driver's
(``auto_disk_leases``, ``disk_lease_dir``): the lockspace and lease files are the same on disk, so
nodes running libvirt's sanlock driver and nodes running vmlease exclude each other.

This module imports nothing heavy: the hook loads it on every call.
"""

import os

from vmlease_agent.engine import Templated

TYPE_CHECKING = False  # typing itself is not imported: the hook loads this module on every call
if TYPE_CHECKING:
    from typing import ClassVar

DEFAULT_PATH = "/etc/vmlease/libvirt.conf"
#: Where the config is read from when no path is given (the installer's ``--config``).
ENV_PATH = "VMLEASE_LIBVIRT_CONFIG"

POLICIES = ("destroy", "pause")


class ConfigError(Templated, ValueError):
    """The config file cannot be used; the message names the file, the line and the fix."""

    template = "{path}: {problem}; fix: {fix}"


class LibvirtConfig:
    """The settings (see the module docstring). A plain class, not a dataclass: importing
    ``dataclasses`` costs the hook more than everything else it does on most calls."""

    #: name → default; the default's type is the setting's type
    DEFAULTS: "ClassVar[dict[str, object]]" = {  # noqa: RUF012 - a ClassVar, quoted
        "run_dir": "/run/vmlease",
        "uri": "qemu:///system",
        "lockspace": "__LIBVIRT__DISKS__",
        "disk_lease_dir": "/var/lib/libvirt/sanlock",
        "auto_disk_leases": True,
        "on_lockfailure": "destroy",
        "io_timeout": 10,
        # 0: a lease held by a live host is refused at once (the usual case is a VM running
        # elsewhere, and waiting only delays the refusal)
        "acquire_wait": 0.0,
        # libvirt holds the domain's job lock while the hook runs and `virsh start` waits for
        # it. A healthy acquire takes milliseconds; 30 s covers an acquire whose I/O is slow but
        # working (each of its reads and writes is bounded by the agent's io_timeout) and still
        # returns the start's verdict while an operator is waiting for it.
        "hook_timeout": 30.0,
        "pid_dir": "/run/libvirt/qemu",
        "log_file": "/var/log/vmlease/libvirt-hook.log",
    }

    run_dir: str
    uri: str
    lockspace: str
    disk_lease_dir: str
    auto_disk_leases: bool
    on_lockfailure: str
    io_timeout: int
    acquire_wait: float
    hook_timeout: float
    pid_dir: str
    log_file: str

    def __init__(self, path: str = "", **values: object) -> None:
        unknown = set(values) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}")
        for key, default in self.DEFAULTS.items():
            setattr(self, key, values.get(key, default))
        self.path = path  # the file it was read from ("" for defaults)

    def replace(self, **values: object) -> "LibvirtConfig":
        return LibvirtConfig(self.path, **{**self.values(), **values})

    def values(self) -> dict[str, object]:
        return {key: getattr(self, key) for key in self.DEFAULTS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LibvirtConfig) and self.values() == other.values()

    def __repr__(self) -> str:
        return f"LibvirtConfig({self.path!r}, {self.values()!r})"

    @property
    def lockspace_path(self) -> str:
        return os.path.join(self.disk_lease_dir, self.lockspace)

    def lease_path(self, resource: str) -> str:
        return os.path.join(self.disk_lease_dir, resource)

    def policy_for(self, on_lockfailure: str | None) -> str:
        """The fencing action for a domain's ``<on_lockfailure>`` (None: the configured default).

        ``poweroff`` is libvirt's word for destroy. ``restart`` and ``ignore`` are refused, as
        libvirt's sanlock driver refuses them ("not supported by sanlock"): a restart would need
        the very lease that was just lost, and ignoring means writing without a lease.
        """
        if on_lockfailure is None:
            return self.on_lockfailure
        if on_lockfailure == "poweroff":
            return "destroy"
        if on_lockfailure == "pause":
            return "pause"
        raise ValueError(
            f"<on_lockfailure>{on_lockfailure}</on_lockfailure> is not supported with disk "
            "leases (as with libvirt's sanlock driver); use poweroff or pause"
        )

    def render(self) -> str:
        """The file text for these values (what the installer writes)."""
        lines = ["# vmlease libvirt integration (see README.md, section libvirt)"]
        for name, value in self.values().items():
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, int | float):
                text = f"{value:g}" if isinstance(value, float) else str(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{name} = {text}")
        return "\n".join(lines) + "\n"


_KINDS = {name: type(default).__name__ for name, default in LibvirtConfig.DEFAULTS.items()}


def _value(raw: str, kind: str, where: str, key: str) -> object:
    raw = raw.strip()
    if kind == "str":
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            return raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        raise ConfigError(
            path=where, problem=f"{key} = {raw} is not a quoted string", fix=f'write {key} = "..."'
        )
    try:
        number = float(raw)
    except ValueError:
        raise ConfigError(
            path=where, problem=f"{key} = {raw} is not a number", fix=f"write {key} = 1 (or 0)"
        ) from None
    if kind == "bool":
        if number not in (0, 1):
            raise ConfigError(path=where, problem=f"{key} = {raw}", fix=f"write {key} = 0 or 1")
        return bool(number)
    if number < 0:
        raise ConfigError(path=where, problem=f"{key} = {raw} is negative", fix="use 0 or more")
    return int(number) if kind == "int" else number


def parse(text: str, path: str = "<text>") -> LibvirtConfig:
    values: dict[str, object] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        key, sep, raw = line.partition("=")
        key = key.strip()
        if not sep or key not in _KINDS:
            raise ConfigError(
                path=where,
                problem=f"{line!r} is not a known setting",
                fix="use key = value with one of " + ", ".join(_KINDS),
            )
        if "#" in raw and not raw.strip().startswith('"'):
            raw = raw.split("#", 1)[0]
        values[key] = _value(raw, str(_KINDS[key]), where, key)
    cfg = LibvirtConfig(path, **values)
    if cfg.on_lockfailure not in POLICIES:
        raise ConfigError(
            path=path,
            problem=f"on_lockfailure = {cfg.on_lockfailure!r}",
            fix="use " + " or ".join(f'"{p}"' for p in POLICIES),
        )
    for key in ("run_dir", "disk_lease_dir", "pid_dir"):
        if not os.path.isabs(getattr(cfg, key)):
            raise ConfigError(
                path=path, problem=f"{key} is not an absolute path", fix="give an absolute path"
            )
    if not 1 <= cfg.io_timeout <= 255:
        raise ConfigError(path=path, problem=f"io_timeout = {cfg.io_timeout}", fix="use 1..255")
    if cfg.hook_timeout < 1:
        raise ConfigError(
            path=path, problem=f"hook_timeout = {cfg.hook_timeout:g}", fix="use 1 or more seconds"
        )
    return cfg


def load(path: str | None = None) -> LibvirtConfig:
    """The config at ``path`` (default ``$VMLEASE_LIBVIRT_CONFIG`` or :data:`DEFAULT_PATH`).

    A missing file at the default location means "all defaults"; a missing file that was named
    explicitly is an error (a typo in the shim must not silently fall back to defaults).
    """
    explicit = path or os.environ.get(ENV_PATH)
    path = explicit or DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                path=path,
                problem="the file does not exist",
                fix="create it (`vmlease libvirt install-hook --config PATH` writes one)",
            ) from None
        return LibvirtConfig()
    except OSError as e:
        raise ConfigError(path=path, problem=e.strerror or str(e), fix="make it readable") from None
    return parse(text, path)
