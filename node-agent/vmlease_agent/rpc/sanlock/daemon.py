"""The daemon's own commands: version, shutdown(_wait), status (``sanlock client status
-D``: its text records here) and host_status."""

from __future__ import annotations

import errno
import logging
import threading
import time

from vmlease_agent.core.lockspace import FAILED, JOINING, RENEWAL_HISTORY_SIZE
from vmlease_agent.core.snapshot import AgentSnapshot, HolderSnapshot, LockspaceSnapshot
from vmlease_agent.engine import errors, timeouts
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase, wire_lockspace
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.errors import LockspaceInUse

log = logging.getLogger(__name__)


# ---- status -D: the keys of sanlock's records the agent has a true value for ---------------
# (sanlock's internals without a counterpart here, e.g. helper_pid, fd or res_id, are left out)


def _daemon_text(snap: AgentSnapshot) -> str:
    return " ".join(
        [
            f"our_host_name={snap.node}",
            f"use_watchdog={int(snap.watchdog.enforced)}",
            f"renewal_history_size={RENEWAL_HISTORY_SIZE}",
            f"kill_grace_seconds={timeouts.kill_grace_seconds(snap.watchdog.fire_timeout)}",
            f"monotime={int(snap.taken_at)}",
            "version_str=3.8.5 version_num=3.8.5 version_hex=03080500 smproto_hex=00000001",
        ]
    )


def _client_text(pid: int, reg: Registration | None) -> str:
    if reg is None:
        return f"pid={pid}"
    return f"pid={pid} restricted={reg.restricted} cmd_active={int(reg.active)}"


def _lockspace_text(s: LockspaceSnapshot, used_outside: bool, now: float) -> str:
    """``renewal_last_success`` on the agent's clock, as ``monotime`` (sanlock: its own)."""
    which = "add" if s.state == JOINING else "spaces"
    text = f"list={which} io_timeout={s.io_timeout} host_generation={s.generation}"
    text += f" space_dead={int(s.state == FAILED)}"
    text += f" external_used={int(used_outside)}"
    if s.last_renewal_ago is not None:
        text += f" renewal_last_success={int(now - s.last_renewal_ago)}"
    return text


class DaemonMixin(ApiBase):
    """The daemon commands."""

    def cmd_version(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        conn.send(w.Header(w.Cmd.VERSION, data2=w.DAEMON_VERSION).pack())

    def cmd_shutdown(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """No reply. Without force, only an agent with no lockspace stops; with force, the
        holders are killed first (as sanlock does), then the agent stops cleanly."""
        force = bool(h.data)
        if not force and self.agent.snapshot().lockspaces:
            log.info("sanlock shutdown ignored: lockspaces are joined (use force)")
            return True
        try:
            if force:
                self._kill_holders(lambda _ls: True, "forced sanlock shutdown")
            self.agent.check_clean_stop()
        except errors.LeaseError as e:
            log.error("sanlock shutdown refused: %s", e)
            return True
        threading.Thread(target=self.on_shutdown, args=(True,), daemon=True).start()
        return True

    def cmd_shutdown_wait(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """``shutdown -w 1``: -EBUSY at once while a lockspace is joined; otherwise the agent
        stops cleanly and the reply is sanlock's exit header (cmd 0). It comes as the stop
        begins, not at the exit: with nothing joined there is nothing left to wait for."""
        if self.agent.snapshot().lockspaces:
            self._result(conn, h, LockspaceInUse(lockspace="(any)", detail="still joined"))
            return True
        threading.Thread(target=self.on_shutdown, args=(True,), daemon=True).start()
        conn.send(w.Header(0).pack())
        return True

    def cmd_status(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """Records until close: the daemon, clients, lockspaces, resources (``data`` stops
        after the daemon (1), the clients (2) or the lockspaces (3); 0 sends everything)."""
        snap = self.agent.snapshot()
        stop = h.data or 4
        out = [h.reply(0)]
        out.append(w.state_record(w.STATE_DAEMON, snap.node, _daemon_text(snap)))
        if stop >= 2:
            out += self._client_records(snap.holders)
        if stop >= 3:
            for s in snap.lockspaces:
                tail = wire_lockspace(s).pack()
                text = _lockspace_text(s, self.agent.used_outside(s.name), snap.taken_at)
                out.append(w.state_record(w.STATE_LOCKSPACE, s.name, text, 0, s.host_id, tail))
        if stop >= 4:
            # one list for the whole daemon, newest first, as sanlock's resources_held
            held = [(le, x.holder.pid) for x in snap.holders for le in x.leases]
            for le, pid in sorted(held, key=lambda item: item[0].since, reverse=True):
                res = w.Resource(
                    le.lockspace,
                    le.resource,
                    le.lver,
                    w.RES_SHARED if le.shared else 0,
                    disks=[w.Disk(le.path, le.offset)],
                )
                text = f"list=held flags={res.flags} lver={le.lver}"
                out.append(
                    w.state_record(w.STATE_RESOURCE, le.resource, text, pid, le.lver, res.pack())
                )
        conn.send(b"".join(out))
        return True

    def _client_records(self, holders: tuple[HolderSnapshot, ...]) -> list[bytes]:
        """sanlock lists its client slots: its helper and listener, every registered process,
        and the status connection itself; holders the agent adopted are listed as clients."""
        regs = self.registrations()
        names = [(-1, "helper"), (-1, "listener")]
        names += [(r.pid, r.owner) for r in regs]
        seen = {r.pid for r in regs}
        names += [
            (x.holder.pid, x.holder.owner or str(x.holder.pid))
            for x in holders
            if x.holder.pid and x.holder.pid not in seen and x.leases
        ]
        names.append((-1, "status"))
        by_pid = {r.pid: r for r in regs}
        return [
            w.state_record(w.STATE_CLIENT, name, _client_text(pid, by_pid.get(pid)), pid)
            for pid, name in names
        ]

    def cmd_host_status(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        ls = conn.lockspace()
        try:
            hosts = self._hosts(ls.name)
        except errors.LeaseError:
            conn.send(h.reply(-errno.ENOSPC))  # what sanlock answers for a lockspace unknown
            return True
        now = time.monotonic()
        out = [h.reply(0)]
        for r in hosts:
            last = int(now - r["renewed_ago"])
            text = (
                f"last_check={last} last_live={last} last_req=0 owner_id={r['host_id']} "
                f"owner_generation={r['generation']} timestamp={r['timestamp']} "
                f"io_timeout={r['io_timeout']} owner_name={r['name']}"
            )
            out.append(w.state_record(w.STATE_HOST, "", text, r["host_id"], r["timestamp"]))
        conn.send(b"".join(out))
        return True
