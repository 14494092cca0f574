"""A client's leases: acquire, release, inquire, read_resource(_owners), request; and
how the client is fenced: killpath, restrict."""

from __future__ import annotations

import logging

from vmlease_agent.core.agent import NotHeld
from vmlease_agent.engine import errors, leasespec, ondisk, paxos
from vmlease_agent.engine.paxos import Resource
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.base import ApiBase, _size_flags, paxos_resource
from vmlease_agent.rpc.sanlock.connection import Connection, Registration
from vmlease_agent.rpc.sanlock.errors import ConnectionNotRegistered, Unsupported

log = logging.getLogger(__name__)


#: sanlock answers -1 (python: errno 1) for the release of a lease the client does not hold
RELEASE_NOT_HELD = -1


class LeasesMixin(ApiBase):
    """The lease commands of a client, and its fencing settings."""

    def cmd_acquire(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        try:
            resources = self._read_resources(conn, h, h.data, with_disks=True)
            owner = w.options_owner(conn.read(w.OPTIONS.size))
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return

        def acquire() -> None:
            wanted = []
            lvers = {r.label: r.lver for r in resources if r.flags & w.RES_LVER}
            for res in resources:
                if len(res.disks) != 1:
                    raise Unsupported(cmd="acquire", detail=f"{res.label} on several disks")
                self._not_removing(res.lockspace)
                wanted.append((paxos_resource(res), bool(res.flags & w.RES_SHARED)))
            target = self._target("acquire", h, reg)
            with self._active("acquire", target):
                target.owner = owner  # sanlock replaces the client's name, even with ""
                if target.conn is not None:
                    self.agent.set_lifeline(target.pid, lambda: self._connected(target.pid))
                self.agent.acquire(
                    target.pid,
                    wanted,
                    owner,
                    wait=not h.cmd_flags & w.ACQUIRE_OWNER_NOWAIT,
                    lvers=lvers,
                    lvb=bool(h.cmd_flags & w.ACQUIRE_LVB),
                )

        self._run(conn, h, acquire)

    def cmd_release(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        try:
            resources = self._read_resources(conn, h, h.data, with_disks=False)
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return

        def release() -> int:
            target = self._target("release", h, reg)
            labels = None if h.cmd_flags & w.REL_ALL else [r.label for r in resources]
            with self._active("release", target):
                try:
                    self.agent.release(target.pid, labels)
                except NotHeld as e:
                    if labels is None:
                        return 0
                    log.info("sanlock release refused: %s", e)
                    return RELEASE_NOT_HELD
            return 0

        self._run(conn, h, release)

    def cmd_inquire(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        try:
            target = self._target("inquire", h, reg)
            with self._active("inquire", target):
                leases = self.agent.inquire(target.pid)
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return
        if not leases:
            conn.send(h.reply(0))
            return
        text = " ".join(
            leasespec.format_resource(
                Resource(x["lockspace"], x["resource"], x["path"], x["offset"]),
                x["lver"],
                x["shared"],
            )
            for x in leases
        )
        body = text.encode("utf-8", "surrogateescape") + b"\0"
        conn.send(h.reply(0, len(body), len(leases)) + body)

    def _read_leader(
        self, conn: Connection, h: w.Header
    ) -> tuple[w.Resource, ondisk.Leader, list[paxos.Owner]]:
        """READ_RESOURCE(_OWNERS): the resource named, its leader and owners as on disk."""
        res = self._read_resources(conn, h, 1, with_disks=True)[0]
        leader, owners = self.agent.read_owners(paxos_resource(res))
        found = w.Resource(
            res.lockspace, res.name, leader.lver, _size_flags(leader.sizes), disks=res.disks
        )
        return found, leader, owners

    def cmd_read_resource(self, conn: Connection, h: w.Header, reg: Registration | None) -> bool:
        """The resource as read (lver, size flags) with its disks; the struct follows even
        after an error, as with sanlock (the client always reads it)."""
        try:
            found, _leader, _owners = self._read_leader(conn, h)
        except errors.LeaseError as e:
            log.info("sanlock read_resource refused (%d): %s", e.code, e)
            conn.send(h.reply(e.code, w.RESOURCE.size) + bytes(w.RESOURCE.size))
            return True
        payload = found.pack()
        conn.send(h.reply(0, len(payload)) + payload)
        return True

    def cmd_read_resource_owners(
        self, conn: Connection, h: w.Header, reg: Registration | None
    ) -> None:
        """The resource as read (lver, size flags), then one sanlk_host per owner."""
        try:
            found, _leader, owners = self._read_leader(conn, h)
        except errors.LeaseError as e:
            self._result(conn, h, e)
            return
        payload = found.pack(with_disks=False) + b"".join(
            w.host(o.host_id, o.generation, o.timestamp, 0, 0) for o in owners
        )
        conn.send(h.reply(0, len(payload), len(owners)) + payload)

    def cmd_killpath(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """What the agent runs instead of SIGTERM when it must fence this client (its lockspace
        failed): the path and args, and the pid only with KILLPATH_PID, as sanlock does."""
        command = w.killpath_command(conn.read(w.KILLPATH.size))

        def killpath() -> None:
            if reg is None:  # registered connection only: data2 is not read
                raise ConnectionNotRegistered(cmd="killpath")
            self.agent.set_kill_command(
                reg.pid, command, append_pid=bool(h.cmd_flags & w.KILLPATH_PID)
            )

        self._run(conn, h, killpath)

    def cmd_request(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        """Ask a lease's owner to give it up: ``data`` is the force mode (1 force, 2 graceful,
        0 clears the request), the lver wanted is the resource's unless NEXT_LVER."""
        read = self._read_lease(conn, h)
        if read is None:
            return
        res, lease = read
        next_lver = bool(h.cmd_flags & w.REQUEST_NEXT_LVER)

        def request() -> None:
            if not next_lver and not res.lver and h.data:
                # version 0 asked for explicitly: older than any held lease (sanlock: -272);
                # the agent's request takes 0 as "the next version", so it is checked here
                leader, _owners = self.agent.read_owners(lease)
                if leader.timestamp:
                    raise errors.RequestOld(lease=lease.label, requested=0, current=leader.lver)
                return
            self.agent.request(lease, h.data, None if next_lver else res.lver)

        self._run(conn, h, request)

    def cmd_restrict(self, conn: Connection, h: w.Header, reg: Registration | None) -> None:
        def restrict() -> None:
            if reg is None:  # data2 is not read: only the registered connection restricts
                raise ConnectionNotRegistered(cmd="restrict")
            reg.restricted = h.cmd_flags  # replaced, not or-ed, as sanlock does
            self.agent.set_restrictions(reg.pid, self._restrictions(h.cmd_flags))

        self._run(conn, h, restrict)
