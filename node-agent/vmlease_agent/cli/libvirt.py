"""``vmlease libvirt ...``: install the qemu hook, create the lockspace, show a domain's leases.

``install-hook`` writes ``/etc/libvirt/hooks/qemu.d/50-vmlease``, a shim that runs
``libvirt_hook`` with this installation's Python, and SIGHUPs libvirtd (a hook added to a running
libvirtd that had none at its start is never run until then). It writes only that one file in
``qemu.d/`` — a user's own ``/etc/libvirt/hooks/qemu`` and other ``qemu.d`` scripts keep running
(libvirt runs them all) — and never replaces a ``50-vmlease`` that it did not write.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys

from vmlease_agent.engine import errors
from vmlease_agent.virt import config as libvirt_config

HOOKS_DIR = "/etc/libvirt/hooks"
HOOK_NAME = "50-vmlease"
#: The line that marks a hook file as ours (install refuses to replace files without it).
MARKER = "# vmlease-libvirt-hook: written by `vmlease libvirt install-hook`"
#: libvirt's daemons that run qemu hooks: the monolithic one, or the modular qemu driver.
DAEMON_PIDFILES = (("libvirtd", "/run/libvirtd.pid"), ("virtqemud", "/run/virtqemud.pid"))


class HookInstallError(errors.LeaseError):
    code = -1
    template = "{path}: {problem}; fix: {fix}"


def shim(config_path: str, python: str | None = None) -> str:
    """The hook file: a POSIX shell script that runs ``libvirt_hook`` with ``python -I -S``.

    Shell first: libvirt calls the hook for every step of a domain's life, and for the steps
    vmlease ignores (``start``, ``migrate``, ``restore``, ...) ``sh`` answers in about 2 ms where
    starting Python costs 10-20 ms. ``-S`` skips site-packages processing (a large share of
    Python's start-up): the directories holding ``vmlease_agent`` and ``vmlease_api`` are put on
    ``sys.path`` explicitly instead. ``-I`` ignores the environment and the user site: libvirt's
    environment is not ours to trust.
    """
    import vmlease_api

    import vmlease_agent
    from vmlease_agent.virt.hook import HANDLED

    python = python or sys.executable
    roots: list[str] = []
    for pkg in (vmlease_agent, vmlease_api):  # one site-packages when installed, two source roots
        root = os.path.dirname(os.path.dirname(os.path.abspath(pkg.__file__ or "")))
        if root not in roots:
            roots.append(root)
    code = (
        f"import sys; sys.path[:0] = {json.dumps(roots)}; "
        "from vmlease_agent.virt.hook import exit_main; exit_main()"
    )
    return (
        "#!/bin/sh\n"
        f"{MARKER}\n"
        "# libvirt runs this as: 50-vmlease DOMAIN OP SUBOP EXTRA < domain.xml (README: libvirt)\n"
        f'case "$2" in\n{"|".join(HANDLED)}) ;;\n'
        "*) exit 0 ;;  # nothing to do, and nothing on stdout (migrate/restore read it as XML)\n"
        "esac\n"
        f"exec {shlex.quote(python)} -I -S -c {shlex.quote(code)} "
        f'--config {shlex.quote(config_path)} "$@"\n'
    )


def _is_ours(path: str) -> bool:
    try:
        with open(path, errors="replace") as f:
            return MARKER in f.read(4096)
    except OSError:
        return False


def reload_libvirt() -> str:
    """SIGHUP the running libvirt daemon so it rescans its hooks; says what was done."""
    for name, pidfile in DAEMON_PIDFILES:
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != name:
                    continue
        except (OSError, ValueError):
            continue
        os.kill(pid, signal.SIGHUP)
        return f"sent SIGHUP to {name} (pid {pid}) so it rescans its hooks"
    return "libvirtd is not running: the hook is used from its next start"


def install_hook(
    hooks_dir: str, config_path: str, force: bool = False, python: str | None = None
) -> str:
    """Write ``qemu.d/50-vmlease`` atomically (the temporary file outside qemu.d: libvirt runs
    every executable in there); returns its path."""
    qemu_d = os.path.join(hooks_dir, "qemu.d")
    path = os.path.join(qemu_d, HOOK_NAME)
    if os.path.exists(path) and not _is_ours(path) and not force:
        raise HookInstallError(
            path=path,
            problem="a hook of that name exists and was not written by vmlease",
            fix="move it away (or pass --force to replace it)",
        )
    os.makedirs(qemu_d, exist_ok=True)
    tmp = os.path.join(hooks_dir, f".{HOOK_NAME}.tmp")
    with open(tmp, "w") as f:
        f.write(shim(config_path, python))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def uninstall_hook(hooks_dir: str) -> str | None:
    path = os.path.join(hooks_dir, "qemu.d", HOOK_NAME)
    if not os.path.exists(path):
        return None
    if not _is_ours(path):
        raise HookInstallError(
            path=path, problem="not written by vmlease", fix="remove it yourself if it is unused"
        )
    os.unlink(path)
    return path


def write_default_config(path: str) -> bool:
    """Write the default config unless a file exists there (never overwritten); True if written."""
    if os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "x") as f:
        f.write(libvirt_config.LibvirtConfig().render())
    return True


def _load(path: str) -> libvirt_config.LibvirtConfig:
    try:
        return libvirt_config.load(path)
    except libvirt_config.ConfigError as e:
        raise errors.InvalidArgument(what="config", detail=str(e)) from None


def cmd_install(args: argparse.Namespace) -> int:
    if write_default_config(args.config):
        print(f"wrote the default configuration to {args.config}")
    cfg = _load(args.config)
    path = install_hook(args.hooks_dir, args.config, force=args.force)
    print(f"installed {path} (config {args.config}, agent run dir {cfg.run_dir})")
    if not args.no_reload:
        print(reload_libvirt())
    if cfg.auto_disk_leases:
        print(
            f"automatic disk leases: lockspace {cfg.lockspace} in {cfg.disk_lease_dir}; "
            f"create it once with `vmlease libvirt init-lockspace`, then run vmlease-agent with "
            f"--lockspace {cfg.lockspace}:HOST_ID:{cfg.lockspace_path}:0"
        )
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    path = uninstall_hook(args.hooks_dir)
    print(f"removed {path}" if path else "no vmlease hook installed")
    return 0


def cmd_init_lockspace(args: argparse.Namespace) -> int:
    from vmlease_agent.virt.files import ensure_lockspace_file

    cfg = _load(args.config)
    if not os.path.isdir(cfg.disk_lease_dir):
        raise errors.InvalidArgument(
            what=f"disk_lease_dir {cfg.disk_lease_dir}",
            detail="does not exist; mount the shared storage there (or create the directory), "
            "it is not created here in case the mount is missing",
        )
    created = ensure_lockspace_file(cfg.lockspace, cfg.lockspace_path, cfg.io_timeout)
    print(
        f"{'created' if created else 'exists:'} {cfg.lockspace_path}; run vmlease-agent with "
        f"--lockspace {cfg.lockspace}:HOST_ID:{cfg.lockspace_path}:0:{cfg.io_timeout}"
    )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from vmlease_agent.virt.domain import DomainXMLError, parse_domain
    from vmlease_agent.virt.plan import plan

    cfg = _load(args.config)
    with open(args.xml, "rb") as f:
        xml = f.read()
    try:
        leases = parse_domain(xml)
    except DomainXMLError as e:
        raise errors.InvalidArgument(what=args.xml, detail=str(e)) from None
    for w in plan(cfg, leases):
        print(f"{w.spec}  # {w.what}")
    for disk in leases.disks:
        if disk.resource is None:
            print(f"# disk {disk.target}: no lease ({disk.reason})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("libvirt", help="libvirt integration: the qemu hook and its lockspace")
    p.add_argument(
        "--config",
        default=os.environ.get(libvirt_config.ENV_PATH, libvirt_config.DEFAULT_PATH),
        help="configuration file (default %(default)s)",
    )
    lsub = p.add_subparsers(dest="libvirt_action", required=True, metavar="ACTION")
    q = lsub.add_parser("install-hook", help=f"install qemu.d/{HOOK_NAME} and reload libvirtd")
    q.add_argument("--hooks-dir", default=HOOKS_DIR, help="default %(default)s")
    q.add_argument("--force", action="store_true", help="replace a hook vmlease did not write")
    q.add_argument("--no-reload", action="store_true", help="do not SIGHUP libvirtd")
    q.set_defaults(func=cmd_install)
    q = lsub.add_parser("uninstall-hook", help=f"remove qemu.d/{HOOK_NAME}")
    q.add_argument("--hooks-dir", default=HOOKS_DIR, help="default %(default)s")
    q.set_defaults(func=cmd_uninstall)
    q = lsub.add_parser("init-lockspace", help="create the automatic disk leases' lockspace file")
    q.set_defaults(func=cmd_init_lockspace)
    q = lsub.add_parser("plan", help="print the leases a domain XML needs (LS:RES:PATH:OFFSET)")
    q.add_argument("xml", help="domain XML file (`virsh dumpxml NAME > FILE`)")
    q.set_defaults(func=cmd_plan)
