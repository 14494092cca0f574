"""The agent's libvirt watcher (``vmlease-agent --libvirt URI``): reconcile domains with leases.

The hook (``libvirt_hook``) takes and binds the leases; this watcher checks, from inside the agent,
that what runs is what is protected — after an agent restart, after a libvirtd restart, after a
resume — and reports any gap loudly (error log and an agent event, ``vmlease client events``):

* every running domain must hold the leases ``libvirt_leases.plan`` computes for it under its key
  ``libvirt:<uuid>``; a domain running without them (started before the hook was installed, a
  hot-plugged disk, a domain resumed after a ``pause`` fencing) is reported as
  ``libvirt_unprotected`` (once per change, logged on every pass);
* a held key not yet bound to QEMU is bound (from libvirt's pid file), and one without a fencing
  command gets it (``libvirt_fence``): a domain re-adopted here is fenced through libvirt too;
* a placeholder key of a domain that is not running, unbound, and older than twice the hook's
  deadline is released (``libvirt_stale_released``): only a hook abandoned at its deadline while
  the agent was still acquiring leaves one, and it would block the domain on every other node.

libvirt-python specifics: the default event loop implementation must be registered BEFORE the
connection is opened (``virEventRegisterDefaultImpl``) and run in a thread of its own; keepalive
(``setKeepAlive``) makes a hung or vanished libvirtd close the connection, after which the watcher
reconnects with a backoff and reconciles everything again (that is how a libvirtd restart is
noticed). The connection is read-only: the watcher never changes a domain (fencing is the kill
command's job, a separate process, so a hung libvirtd can never stall the agent's main loop).
Callbacks run on the event-loop thread and only queue work; a worker thread does the rest, because
calling libvirt from inside its own event callbacks can deadlock.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import threading
import time

from vmlease_agent.core.agent import Agent
from vmlease_agent.virt.config import ENV_PATH, ConfigError, LibvirtConfig, load
from vmlease_agent.virt.domain import DomainXMLError, parse_domain
from vmlease_agent.virt.plan import KEY_PREFIX, fence_command, holder_key, plan

log = logging.getLogger(__name__)

#: libvirt keepalive: a probe every 5 s, the connection closed after 3 unanswered ones, so a dead
#: or hung libvirtd is noticed within 5 * (3 + 1) = 20 s.
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3
#: Full reconcile this often even without events (a missed event must not hide a gap for long).
RECONCILE_SECONDS = 60.0
#: How long stopping waits for the watcher's threads in total.
STOP_SECONDS = 2.0
#: Reconnect backoff after libvirtd went away: 1 s doubling up to 10 s.
BACKOFF_MIN, BACKOFF_MAX = 1.0, 10.0

_impl_registered = False
_impl_lock = threading.Lock()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--libvirt",
        metavar="URI",
        default=os.environ.get("VMLEASE_LIBVIRT") or None,
        help="watch this libvirt (e.g. qemu:///system): reconcile running domains with their "
        "leases after agent or libvirtd restarts, report unprotected ones (needs libvirt-python)",
    )
    p.add_argument(
        "--libvirt-config",
        default=os.environ.get(ENV_PATH) or None,
        help="the libvirt integration's config, as the hook reads it "
        "(default /etc/vmlease/libvirt.conf)",
    )


def start(args: argparse.Namespace, agent: Agent) -> LibvirtWatcher | None:
    """Start the watcher if ``--libvirt`` was given. Problems are logged, never fatal: the agent
    is the lease process and must run even when the watcher cannot."""
    if not args.libvirt:
        return None
    try:
        cfg = load(args.libvirt_config)
    except ConfigError as e:
        log.error("libvirt watcher not started: %s", e)
        agent.event("libvirt_unavailable", error=str(e))
        return None
    watcher = LibvirtWatcher(agent, args.libvirt, cfg)
    try:
        watcher.start()
    except ImportError as e:
        log.error("libvirt watcher not started: libvirt-python does not import (%s)", e)
        agent.event("libvirt_unavailable", error=f"libvirt-python: {e}")
        return None
    return watcher


def register_event_impl() -> None:
    """libvirt's default event loop, registered once per process, before any connection opens,
    and run forever on a daemon thread (a 1 s timer keeps the loop turning)."""
    global _impl_registered
    import libvirt

    with _impl_lock:
        if _impl_registered:
            return
        libvirt.virEventRegisterDefaultImpl()
        libvirt.virEventAddTimeout(1000, lambda _timer, _opaque: None, None)

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:
                    log.exception("libvirt event loop")
                    time.sleep(1)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _impl_registered = True


class LibvirtWatcher:
    def __init__(self, agent: Agent, uri: str, cfg: LibvirtConfig) -> None:
        self.agent = agent
        self.uri = uri
        self.cfg = cfg
        self.stale_after = 2 * cfg.hook_timeout  # seconds; see the module docstring
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._work: queue.Queue[str | None] = queue.Queue()
        self._reported: dict[str, tuple[str, ...]] = {}
        self._conn = None
        self._threads: list[threading.Thread] = []
        self.passes = 0  # completed full reconciles (tests wait on it)

    # ---- threads --------------------------------------------------------------------------

    def start(self) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        register_event_impl()
        for target, name in ((self._connect_loop, "libvirt-conn"), (self._worker, "libvirt-rec")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._closed.set()
        self._work.put(None)
        # daemon threads: a libvirt call stuck on a hung libvirtd must not delay the agent's exit
        deadline = time.monotonic() + STOP_SECONDS
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def _connect_loop(self) -> None:
        import libvirt

        backoff = BACKOFF_MIN
        while not self._stop.is_set():
            conn = None
            try:
                conn = libvirt.openReadOnly(self.uri)
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
                self._closed.clear()
                conn.registerCloseCallback(lambda *_: self._closed.set(), None)
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
                )
                self._conn = conn
                backoff = BACKOFF_MIN
                self.agent.event("libvirt_connected", uri=self.uri)
                while not self._stop.is_set() and not self._closed.is_set():
                    self._work.put("*")
                    self._closed.wait(RECONCILE_SECONDS)
                if not self._stop.is_set():
                    log.warning("libvirt connection to %s closed: reconnecting", self.uri)
                    self.agent.event("libvirt_disconnected", uri=self.uri)
            except libvirt.libvirtError as e:
                log.warning("libvirt %s: %s (retrying in %.0fs)", self.uri, e, backoff)
                self._stop.wait(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
            finally:
                self._conn = None
                if conn is not None:
                    with contextlib.suppress(libvirt.libvirtError):
                        conn.close()

    def _lifecycle(self, _conn, dom, event: int, detail: int, _opaque) -> None:
        """On the event-loop thread: only queue work (see the module docstring)."""
        import libvirt

        log.info("libvirt: domain %s event %d detail %d", dom.name(), event, detail)
        if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
            self._work.put(dom.UUIDString())

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None or self._stop.is_set():
                return
            conn = self._conn
            if conn is None:
                continue
            try:
                if item == "*":
                    self.reconcile_all(conn)
                else:
                    self.check_domain(conn.lookupByUUIDString(item))
            except Exception as e:
                log.warning("libvirt reconcile (%s): %s", item, e)

    # ---- reconciling ------------------------------------------------------------------------

    def reconcile_all(self, conn) -> None:
        import libvirt

        active = {}
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                active[dom.UUIDString()] = dom
                self.check_domain(dom)
            except libvirt.libvirtError as e:
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # stopped meanwhile
                    log.warning("libvirt: checking %s: %s", dom.name(), e)
        self._release_stale(set(active))
        for uuid in set(self._reported) - set(active):
            del self._reported[uuid]
        self.passes += 1
        self.agent.event("libvirt_reconciled", uri=self.uri, running=len(active))

    def check_domain(self, dom) -> None:
        """One running domain: bind and fence its key if needed, report missing leases."""
        import libvirt

        state, reason = dom.state()
        if state == libvirt.VIR_DOMAIN_SHUTOFF or (
            state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP
        ):
            return  # not running, or still starting: the hook is in charge
        name, uuid = dom.name(), dom.UUIDString()
        key = holder_key(uuid)
        try:
            leases = parse_domain(dom.XMLDesc(0))
        except DomainXMLError as e:
            self._report(name, uuid, state, (f"cannot compute its leases: {e}",))
            return
        wants = plan(self.cfg, leases)
        holder = self.agent.holder(key)
        held = set(holder.labels) if holder is not None else set()
        bound = holder.holder.pid if holder is not None else 0
        fenced = bool(holder.kill_command) if holder is not None else False
        if held:
            pid = self._qemu_pid(name)
            if not bound and pid:
                self.agent.bind(key, pid)
                log.warning("libvirt: domain %s: leases bound to QEMU pid %d", name, pid)
            if not fenced:
                try:
                    policy = self.cfg.policy_for(leases.on_lockfailure)
                except ValueError:
                    policy = "destroy"
                self.agent.set_kill_command(key, fence_command(self.cfg, uuid, policy))
        missing = tuple(f"{w.what} ({w.label})" for w in wants if w.label not in held)
        self._report(name, uuid, state, missing)

    def _report(self, name: str, uuid: str, state: int, missing: tuple[str, ...]) -> None:
        import libvirt

        if not missing:
            if self._reported.pop(uuid, None):
                self.agent.event("libvirt_protected", domain=name, uuid=uuid)
            return
        paused = state == libvirt.VIR_DOMAIN_PAUSED
        log.log(
            logging.WARNING if paused else logging.ERROR,
            "libvirt: domain %s (%s) %s WITHOUT its leases: %s; another node could start it too%s",
            name,
            uuid,
            "is paused" if paused else "RUNS",
            "; ".join(missing),
            "; resuming it would run it unprotected" if paused else ": stop it, or find out why",
        )
        if self._reported.get(uuid) != missing:
            self._reported[uuid] = missing
            self.agent.event(
                "libvirt_unprotected",
                domain=name,
                uuid=uuid,
                state="paused" if paused else "running",
                missing=list(missing),
            )

    def _qemu_pid(self, name: str) -> int:
        try:
            with open(os.path.join(self.cfg.pid_dir, f"{name}.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return 0

    def _release_stale(self, running: set[str]) -> None:
        now = time.time()
        stale = [
            h.key
            for h in self.agent.snapshot().holders
            if not h.exiting
            and h.holder.kind == "domain"
            and h.key[len(KEY_PREFIX) :] not in running
            and h.holder.pid == 0
            and h.leases
            and all(now - x.since > self.stale_after for x in h.leases)
        ]
        for key in stale:
            try:
                released = self.agent.release(key, None)
            except Exception as e:
                log.warning("libvirt: releasing stale %s failed: %s", key, e)
                continue
            log.warning("libvirt: released %s of %s (domain not running)", released, key)
            self.agent.event("libvirt_stale_released", holder=key, leases=released)
