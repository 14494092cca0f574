"""libvirt's qemu hook: every disk of a domain leased before QEMU opens it.

Installed as ``/etc/libvirt/hooks/qemu.d/50-vmlease`` (a shim written by ``vmlease libvirt
install-hook``), called by libvirtd as ``50-vmlease NAME OP SUBOP -`` with the domain XML on
stdin. It talks to the local agent (``api``) under the holder key ``libvirt:<uuid>``:

``prepare``    (before QEMU exists) create missing automatic lease files, then acquire every
               lease the domain needs (``virt.plan``), all or nothing. Earlier than
               libvirt's own sanlock driver, which acquires only at CPU resume, after QEMU has
               opened the images. Refused → exit 1 with ONE line on stderr, which libvirt quotes
               verbatim in its error (``virsh start`` prints it): the disk, the holder's node,
               host_id and last renewal, and the fix.
``started``    bind the key to QEMU's pid (``<pid_dir>/NAME.pid``): QEMU's death now releases the
               leases, and set the fencing command (destroy or pause through libvirt).
``stopped``,   release what the key still holds (nothing after a refused prepare: the agent's
``release``    acquire is all or nothing, and leases of other holders are never named).
``reconnect``  (libvirtd restarted, domain running) re-adopt: bind if needed, report missing
               leases loudly. Always exit 0 here: a failing reconnect hook makes libvirt kill
               the running domain.

``migrate``    (incoming live migration, on the destination) refused for a domain with leases,
               saying why: a hook cannot hand a lease over (no hook runs when the source pauses);
               libvirt's sanlock lock driver with ``vmlease-agent --sanlock-api`` can.

Any other op (``start``, ``restore``, ``attach``) is passed with exit 0. Nothing is ever written
to stdout (for ``migrate``/``restore`` libvirt would take it as replacement XML).

Never hang libvirtd: libvirt waits for the hook to exit, holding the domain's job lock. For
``prepare`` and ``reconnect``, the process libvirt waits for only reads stdin, forks a worker and
waits for it until the overall deadline (``hook_timeout``): ``virt.runner``, the fork/deadline
half of the hook; this module is the entry and the operations (what each asks the agent).
Anything that can block in the kernel — canonicalising disk paths on a dead NFS mount, writing a
lease file — happens in the worker, whose stdin/stdout/stderr are not libvirt's pipes; at the
deadline the worker is abandoned (SIGKILL; a worker stuck in uninterruptible I/O dies when the
I/O returns) and the start is refused, naming the stage that did not finish. ``started``,
``stopped`` and ``release`` do nothing that can block in the kernel (agent calls with timeouts,
libvirt's pid file on /run) and run in the hook process itself. Bad input is never let through
silently: unparseable XML, a path that cannot be canonicalised, an agent that does not answer,
all refuse the start with the reason.

Cost (``bench/libvirt_start.py``): the start path runs ``prepare`` and ``started`` in Python, so
every import counts: the shim answers the ops we ignore in ``sh``, runs Python with ``-I -S``,
this module and its helpers import only C modules and small pure modules (``rpc.wire`` instead
of ``rpc.client``; ``runner`` only for the ops that fork), a restart reuses the domain's cached
lease plan (``virt.plancache``) instead of importing the XML parser, and the process ends with
``os._exit``. The modules on these paths have no ``from __future__ import annotations`` (it
imports ``__future__``): annotations naming what only type checkers import are quoted.
``tests/unit/virt/test_libvirt_hook.py`` pins the modules each op may import.
"""

import os
import sys
import time

from vmlease_agent import engine
from vmlease_agent.virt.config import ConfigError, LibvirtConfig, load

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import the hook avoids at run time
    from collections.abc import Callable
    from typing import Any

HANDLED = ("prepare", "started", "stopped", "release", "reconnect", "migrate")
#: ops whose non-zero exit stops the start or the incoming migration (libvirt ignores failures
#: of stopped/release, and a failing reconnect would kill a running domain: always exits 0)
REFUSING = ("prepare", "started", "migrate")

#: ops that run in the hook process itself, without the worker: they do no I/O that can block in
#: the kernel (only calls on the agent's unix socket, bounded by timeouts, and a read of libvirt's
#: pid file on /run), and a fork is a tenth of ``started``'s cost, which is on the start path
INLINE = ("started", "stopped", "release")

#: agent error codes meaning "a ballot collided or a lease file is being created": retried
#: until the deadline. A lost ballot, a concurrent acquire, no lease magic (a node that creates
#: the file libvirt's way has not initialised it yet).
RETRY_TRANSIENT = {
    engine.SANLK_DBLOCK_LVER,
    engine.SANLK_DBLOCK_MBAL,
    engine.SANLK_ACQUIRE_OWNED,
    engine.SANLK_ACQUIRE_OTHER,
    engine.SANLK_LEADER_MAGIC,
}
#: codes meaning "someone holds it": retried only for ``acquire_wait`` seconds. A live host, a
#: silent host not yet known dead; and two errnos, added by :func:`_holder_codes` (``errno`` is
#: not imported on the lean paths): -EAGAIN shared holders block an exclusive lease, -EEXIST held
#: by another process on this node.
RETRY_HOLDER = {engine.SANLK_ACQUIRE_IDLIVE, engine.SANLK_ACQUIRE_OWNED_RETRY}
RETRY_PAUSE = 0.25  # seconds between attempts: a ballot takes a few I/Os

#: What an unanswered call means for each op (for the error message).
CONSEQUENCES = {
    "prepare": "the start is refused because its disks cannot be leased",
    "started": "the start is refused because its leases cannot be tied to QEMU",
    "stopped": "its leases are released by the agent when it sees QEMU gone, if it held them",
    "release": "its leases are released by the agent when it sees QEMU gone, if it held them",
    "reconnect": "the running domain could not be re-adopted; the agent reconciles it later",
}

#: The hook log is renamed to ``.1`` beyond this size (one ~150-byte line per call: ~30,000 calls).
LOG_ROTATE_BYTES = 4 << 20

#: Seconds kept from the deadline for the worker to report and the hook to exit.
REPORT_MARGIN = 0.5


# ---- errors ---------------------------------------------------------------------------------


class HookError(engine.Templated):
    """Why the hook refuses; one line, naming the domain's disk, the cause and the fix."""

    one_line = True


class AgentDown(HookError):
    template = (
        "domain {domain!r}: the vmlease agent did not answer ({detail}); {consequence}; fix: "
        "start vmlease-agent, or set run_dir in {config}"
    )


class LeaseRefused(HookError):
    template = "domain {domain!r}, {what}: {message} [error {code}]"


class LeaseFileError(HookError):
    template = (
        "domain {domain!r}, {what}: cannot create its lease file {path}: {detail}; fix: create "
        "disk_lease_dir ({directory}) on storage shared by every node, writable by root"
    )


class NoQemuPid(HookError):
    template = (
        "domain {domain!r}: cannot read QEMU's pid from {path} ({detail}), so its leases cannot "
        "be tied to QEMU; fix: set pid_dir in {config} to libvirt's qemu state dir"
    )


class HookTimeout(HookError):
    template = (
        "domain {domain!r}: the vmlease hook did not finish {op} within {timeout:g}s (hook_timeout "
        "in {config}) while {stage}; the start is refused; check that storage and the agent "
        "respond"
    )


class MigrationRefused(HookError):
    template = (
        "domain {domain!r}: live migration is refused on this host: vmlease's qemu hook cannot "
        "hand over {leases} (libvirt calls no hook when the source pauses, so this host would "
        "need them while the source still holds them); fix: migrate under libvirt's sanlock "
        "lock driver with vmlease-agent --sanlock-api (README: sanlock's client API), or "
        "shut the domain down and start it here"
    )


class WorkerFailed(HookError):
    template = "domain {domain!r}: the vmlease hook failed during {op}: {detail}"


# ---- the agent ------------------------------------------------------------------------------


class Context:
    """One hook call: config, domain name, deadline, and a way to report the current stage."""

    def __init__(self, cfg: LibvirtConfig, name: str, op: str, deadline: float) -> None:
        self.cfg = cfg
        self.name = name
        self.op = op
        self.deadline = deadline
        #: in a worker, tells the waiting parent the stage (``runner``); inline, nobody waits
        self.report: Callable[[str], None] | None = None

    def stage(self, text: str) -> None:
        if self.report is not None:
            self.report(text)

    def left(self) -> float:
        return max(0.05, self.deadline - time.monotonic() - REPORT_MARGIN)

    def call(self, op: str, **args: object) -> "Any":
        from vmlease_agent.rpc.wire import Unreachable, call

        self.stage(f"asking the agent at {self.cfg.run_dir} ({op})")
        try:
            return call(self.cfg.run_dir, self.left(), op, **args)
        except Unreachable as e:
            raise AgentDown(
                domain=self.name,
                detail=str(e),
                consequence=CONSEQUENCES.get(self.op, "nothing was changed"),
                config=self.cfg.path or "defaults",
            ) from None


def _is_refusal(e: BaseException, code: int | None = None) -> bool:
    from vmlease_agent.rpc.wire import Refused

    return isinstance(e, Refused) and (code is None or e.code == code)


def _element_text(xml: bytes, tag: bytes, last: bool = False) -> str | None:
    """The text of a top-level element of libvirt's own domain XML, found by a byte search.

    ``started`` and ``stopped`` run on every start and stop and need only the uuid and the
    lock-failure policy; importing an XML parser costs more than the rest of those calls. This is
    sound for the XML libvirt writes: ``<uuid>`` is its second element (before ``<metadata>``,
    the only place users put their own elements), and ``<on_lockfailure>`` comes after
    ``<metadata>`` and before ``<devices>``, so the last match before ``<devices>`` is the real one.
    """
    end = xml.find(b"<devices")
    head = xml if end < 0 else xml[:end]
    opening, closing = b"<" + tag + b">", b"</" + tag + b">"
    i = head.rfind(opening) if last else head.find(opening)
    if i < 0:
        return None
    j = head.find(closing, i)
    if j < 0:
        return None
    return head[i + len(opening) : j].decode(errors="replace").strip() or None


def _uuid_of(xml: bytes, name: str) -> tuple[str, str | None]:
    """uuid and ``<on_lockfailure>`` (``started``, ``stopped``: no path canonicalisation)."""
    uuid = _element_text(xml, b"uuid")
    if uuid is None:
        raise HookError(detail=f"domain {name!r}: the domain XML has no <uuid>")
    return uuid, _element_text(xml, b"on_lockfailure", last=True)


def _qemu_pid(ctx: Context) -> int:
    path = os.path.join(ctx.cfg.pid_dir, f"{ctx.name}.pid")
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError) as e:
        raise NoQemuPid(
            domain=ctx.name, path=path, detail=str(e), config=ctx.cfg.path or "defaults"
        ) from None


def _alive(pid: int) -> bool:
    return pid > 0 and os.path.exists(f"/proc/{pid}")


# ---- the operations ---------------------------------------------------------------------------


def _parse(ctx: Context, xml: bytes, resolve=None):
    """The domain's leases; errors name the domain once (``virt.domain``'s messages mostly do)."""
    from vmlease_agent.virt.domain import (
        DomainXMLError,
        UnparseableDomainXML,
        canonical_path,
        parse_domain,
    )

    ctx.stage("parsing the domain XML and canonicalising its disk paths")
    try:
        leases = parse_domain(xml, resolve=resolve or canonical_path)
    except UnparseableDomainXML as e:
        raise HookError(detail=f"domain {ctx.name!r}: {e}") from None
    except DomainXMLError as e:
        raise HookError(detail=str(e)) from None
    if not leases.uuid:
        raise HookError(detail=f"domain {ctx.name!r}: the domain XML has no <uuid>")
    return leases


def _plan(ctx: Context, xml: bytes):
    """The domain's lease plan: from the cache when provably unchanged (``virt.plancache``),
    else parsed (and cached for the next start)."""
    from vmlease_agent.virt import plancache as cache
    from vmlease_agent.virt.plan import plan

    uuid = _element_text(xml, b"uuid")
    if uuid:
        ctx.stage("canonicalising the disk paths of the cached lease plan")
        hit = cache.load(ctx.cfg, uuid, xml)
        if hit is not None:
            return hit
    paths: dict[str, str] = {}

    def resolve(source: str) -> str:
        paths[source] = cache.canonical(source)
        return paths[source]

    leases = _parse(ctx, xml, resolve)
    result = cache.Plan(leases.name, leases.uuid, leases.on_lockfailure, plan(ctx.cfg, leases))
    _policy(ctx, result.on_lockfailure)
    cache.store(ctx.cfg, xml, result, paths)
    return result


def _policy(ctx: Context, on_lockfailure: str | None) -> str:
    try:
        return ctx.cfg.policy_for(on_lockfailure)
    except ValueError as e:
        raise HookError(detail=f"domain {ctx.name!r}: {e}") from None


def prepare(ctx: Context, xml: bytes) -> str:
    from vmlease_agent.virt.plan import holder_key

    plan = _plan(ctx, xml)
    if not plan.wants:
        return "no leases needed"
    _policy(ctx, plan.on_lockfailure)
    key = holder_key(plan.uuid)
    for w in plan.wants:
        if w.auto and not os.path.exists(w.path):
            _create_lease_file(ctx, w)
    _acquire(ctx, key, plan.name, plan.wants)
    return "acquired " + " ".join(f"{w.label}{':SH' if w.shared else ''}" for w in plan.wants)


def _create_lease_file(ctx: Context, w) -> None:
    from vmlease_agent.engine.errors import LeaseError
    from vmlease_agent.virt.files import ensure_lease_file

    ctx.stage(f"creating the lease file {w.path} for {w.what}")
    try:
        ensure_lease_file(w.lockspace, w.resource, w.path, write_timeout=ctx.left())
    except (OSError, LeaseError) as e:
        raise LeaseFileError(
            domain=ctx.name,
            what=w.what,
            path=w.path,
            detail=getattr(e, "strerror", None) or str(e),
            directory=ctx.cfg.disk_lease_dir,
        ) from None


def _holder_codes() -> set[int]:
    import errno

    return RETRY_HOLDER | {-errno.EAGAIN, -errno.EEXIST}


def _acquire(ctx: Context, key: str, owner: str, wants: list) -> None:
    specs = [w.spec for w in wants]
    disks = {w.label: w.disk for w in wants if w.disk}
    holder_until = time.monotonic() + ctx.cfg.acquire_wait
    stale_dropped = False
    while True:
        try:
            ctx.call("acquire", key=key, resources=specs, owner=owner, wait=False, disks=disks)
            return
        except AgentDown:
            # our request may still complete in the agent: drop whatever it took
            try:  # noqa: SIM105 - contextlib costs the hook milliseconds per call
                _release_unbound(ctx, key, stale=True)
            except Exception:
                pass  # the next prepare, or the agent's reconcile, drops it
            raise
        except Exception as e:
            if not _is_refusal(e):
                raise
            import errno  # (on refusals only: not on the lean paths)

            code = e.code  # type: ignore[attr-defined]
            if code == -errno.EEXIST and key in str(e) and not stale_dropped:
                # held by this very key: libvirt prepares only a domain that does not run
                # here, so it is left from a start that never finished (a hook abandoned at
                # its deadline while the agent was still acquiring): drop it, try again
                _release_unbound(ctx, key, stale=True)
                stale_dropped = True
                continue
            now = time.monotonic()
            if now + RETRY_PAUSE < ctx.deadline - REPORT_MARGIN and (
                code in RETRY_TRANSIENT or (code in _holder_codes() and now < holder_until)
            ):
                time.sleep(RETRY_PAUSE)
                continue
            raise _refusal(ctx, wants, e) from None


def _refusal(ctx: Context, wants: list, e) -> LeaseRefused:
    message = str(e)
    w = next((w for w in wants if w.resource in message), None)
    what = w.what if w is not None else "its leases"
    if e.code == engine.SANLK_ACQUIRE_OWNED_RETRY and w is not None:
        message += _holder_detail(ctx, w.lockspace, message)
    return LeaseRefused(domain=ctx.name, what=what, message=message, code=e.code)


def _holder_detail(ctx: Context, lockspace: str, message: str) -> str:
    """Node name and last renewal of the host a -247 message names ("owned by host N")."""
    import re

    m = re.search(r"owned by host (\d+)", message)
    if m is None:
        return ""
    try:
        rows = ctx.call("host_status", lockspace=lockspace)
    except Exception:
        return ""
    for row in rows or []:
        if row.get("host_id") == int(m.group(1)):
            return (
                f" (host {row['host_id']} is node {row.get('name') or '?'}, "
                f"last renewed {row.get('renewed_ago')}s ago, state {row.get('state')})"
            )
    return ""


def _release_unbound(ctx: Context, key: str, stale: bool = False) -> str:
    """Release what ``key`` holds unless a live QEMU holds it (then its death releases it)."""
    held = ctx.call("inquire", key=key) or []
    if not held:
        return "nothing held"
    pid = held[0].get("pid") or 0
    if pid and _alive(pid) and not stale:
        return f"held by live pid {pid}: released when it exits"
    try:
        ctx.call("release", key=key)
    except Exception as e:
        import errno

        if _is_refusal(e, -errno.ENOENT):  # released meanwhile (QEMU's exit seen by the agent)
            return "released by the agent"
        raise
    return "released " + " ".join(h["lease"] for h in held)


def started(ctx: Context, xml: bytes) -> str:
    from vmlease_agent.virt.plan import fence_command, holder_key

    uuid, olf = _uuid_of(xml, ctx.name)
    key = holder_key(uuid)
    try:
        pid = _qemu_pid(ctx)
    except NoQemuPid:
        if not ctx.call("inquire", key=key):
            return "no leases held"
        raise
    try:
        ctx.call("bind", key=key, pid=pid)  # (binding the same pid again is a no-op)
    except Exception as e:
        import errno

        if _is_refusal(e, -errno.ENOENT):  # the key holds nothing (the domain needs no lease)
            return "no leases held"
        raise
    try:
        policy = ctx.cfg.policy_for(olf)
    except ValueError:
        policy = "destroy"  # prepare refused these; keep the safe action regardless
    ctx.call("set_kill_command", key=key, command=fence_command(ctx.cfg, uuid, policy))
    return f"bound to pid {pid}, fencing: {policy}"


def stopped(ctx: Context, xml: bytes) -> str:
    from vmlease_agent.virt.plan import holder_key

    uuid, _ = _uuid_of(xml, ctx.name)
    return _release_unbound(ctx, holder_key(uuid))


def reconnect(ctx: Context, xml: bytes) -> str:
    from vmlease_agent.virt.plan import fence_command, holder_key, plan

    leases = _parse(ctx, xml)
    key = holder_key(leases.uuid)
    wants = {w.label: w for w in plan(ctx.cfg, leases)}
    held = ctx.call("inquire", key=key) or []
    labels = {h["lease"] for h in held}
    notes = []
    if held:
        pid = _qemu_pid(ctx)
        if held[0].get("pid") != pid:
            ctx.call("bind", key=key, pid=pid)
            notes.append(f"bound to pid {pid}")
        try:
            policy = ctx.cfg.policy_for(leases.on_lockfailure)
        except ValueError:
            policy = "destroy"
        ctx.call("set_kill_command", key=key, command=fence_command(ctx.cfg, leases.uuid, policy))
    missing = [w for label, w in wants.items() if label not in labels]
    if missing:
        raise HookError(
            detail=f"domain {ctx.name!r} runs WITHOUT the leases of "
            + ", ".join(f"{w.what} ({w.label})" for w in missing)
            + "; another node could start it too: stop it, or check the agent's state"
        )
    return ", ".join(notes) or f"adopted ({len(labels)} leases)"


def migrate(ctx: Context, xml: bytes) -> str:
    """Incoming live migration (libvirt calls this on the destination, before ``prepare``):
    refused for a domain that needs leases, with the reason, instead of the destination's
    ``prepare`` being refused because the source holds them."""
    plan = _plan(ctx, xml)
    if not plan.wants:
        return "no leases needed: migration allowed"
    raise MigrationRefused(domain=ctx.name, leases=", ".join(w.what for w in plan.wants))


OPS = {
    "migrate": migrate,
    "prepare": prepare,
    "started": started,
    "stopped": stopped,
    "release": stopped,
    "reconnect": reconnect,
}


# ---- the process libvirt waits for ------------------------------------------------------------


def attempt(ctx: Context, xml: bytes) -> tuple[bool, str]:
    """Run ``ctx.op``: (succeeded, one-line message); never raises."""
    try:
        return True, " ".join(OPS[ctx.op](ctx, xml).split())
    except HookError as e:
        return False, str(e)
    except BaseException as e:  # a bug must refuse the start, not let it through
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        return False, str(WorkerFailed(domain=ctx.name, op=ctx.op, detail=detail))


def run(cfg: LibvirtConfig, name: str, op: str, xml: bytes) -> tuple[bool, str]:
    """Run ``op`` within ``cfg.hook_timeout``: (succeeded, one-line message). The ops of
    :data:`INLINE` run in this process; the others in a worker of ``runner`` (the module
    docstring says why), which is imported only then."""
    ctx = Context(cfg, name, op, time.monotonic() + cfg.hook_timeout)
    if op in INLINE:
        return attempt(ctx, xml)
    from vmlease_agent.virt import runner

    def work(report: "Callable[[str], None]") -> tuple[bool, str]:
        ctx.report = report
        return attempt(ctx, xml)

    def timed_out(stage: str) -> str:
        return str(
            HookTimeout(
                domain=name,
                op=op,
                timeout=cfg.hook_timeout,
                config=cfg.path or "defaults",
                stage=stage,
            )
        )

    return runner.run(work, ctx.deadline, timed_out)


def _log(cfg: LibvirtConfig, text: str) -> None:
    if not cfg.log_file:
        return
    try:
        os.makedirs(os.path.dirname(cfg.log_file), exist_ok=True)
        try:
            if os.stat(cfg.log_file).st_size > LOG_ROTATE_BYTES:
                os.replace(cfg.log_file, cfg.log_file + ".1")
        except FileNotFoundError:
            pass
        with open(cfg.log_file, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {text}\n")
    except OSError:
        pass  # the log is for people; the verdict goes to libvirt either way


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if argv[:1] == ["--config"] and len(argv) >= 2:
        config_path, argv = argv[1], argv[2:]
    if len(argv) < 2:
        print(
            "usage: libvirt_hook [--config PATH] DOMAIN OP SUBOP EXTRA < domain.xml",
            file=sys.stderr,
        )
        return 2
    name, op = argv[0], argv[1]
    if op not in HANDLED:
        return 0  # nothing to do; no stdout (migrate/restore would read it as XML)
    started_at = time.monotonic()
    xml = sys.stdin.buffer.read()
    try:
        cfg = load(config_path)
    except ConfigError as e:
        print(f"vmlease: domain {name!r}: {e}", file=sys.stderr)
        return 1 if op in REFUSING else 0
    ok, message = run(cfg, name, op, xml)
    ms = (time.monotonic() - started_at) * 1000
    _log(cfg, f"{name} {op}: {'ok' if ok else 'FAILED'} in {ms:.0f} ms: {message}")
    if not ok:
        print(f"vmlease: {message}", file=sys.stderr)
    if op == "reconnect":
        return 0
    return 0 if ok else 1


def exit_main() -> None:
    """The shim's entry point: ``main`` then ``os._exit``, skipping the interpreter's teardown
    (milliseconds of module and GC cleanup per call, for nothing: the hook holds no state)."""
    code = main()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
