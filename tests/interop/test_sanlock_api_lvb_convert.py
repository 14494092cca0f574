"""The lock value block (SET_LVB, GET_LVB, acquire with SANLK_ACQUIRE_LVB) and CONVERT through
vmlease-agent's sanlock API, against the real sanlock 3.8.5 daemon.

The comparison tests run the same python-sanlock calls (convert through libsanlock, which
python-sanlock 3.8 lacks) and CLI commands against each daemon, with lease files of its own, and
assert the same replies and the same LVB bytes on disk. The safety tests put the real sanlock
daemon (host_id 1) and the agent (host_id 2) in one lockspace and check, at every step of
converting both ways, that neither host holds the lease exclusively while the other holds it.
"""

from __future__ import annotations

import difflib
import errno

import pytest
from sanlockd import SanlockClient, SanlockError
from test_sanlock_api import LS, N, Side, normalise

pytestmark = pytest.mark.interop

LVB_AT = 2002 * 512  # sanlock's LVB_SECTOR, inside the 1 MiB area of 512-byte sectors


def on_disk(side: Side, name: str = "res") -> str:
    """The first bytes of a resource's LVB sector as the storage has them."""
    with open(side.res(name), "rb") as f:
        f.seek(LVB_AT)
        return f.read(16).decode("latin-1")


def lease(side: Side, name: str = "RES", file: str = "res") -> dict:
    return {"lockspace": LS, "resource": name, "path": side.res(file)}


class Transcript:
    """Calls and their results (or errno), with pids and paths normalised."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.out: list = []
        self.pids: dict[int, str] = {}

    def call(self, c: SanlockClient, op: str, **kw) -> None:
        try:
            result = c.call(op, **kw)
        except SanlockError as e:
            result = {"errno": e.errno}
        args = {k: v for k, v in kw.items() if k not in ("lockspace", "path")}
        self.out.append([op, *(normalise(repr(x), self.side, self.pids) for x in (args, result))])

    def note(self, what: str, value) -> None:
        self.out.append([what, normalise(repr(value), self.side, self.pids)])


def assert_same(ours: list, theirs: list) -> None:
    assert ours == theirs, "\n".join(
        difflib.unified_diff(
            [repr(x) for x in theirs], [repr(x) for x in ours], "sanlock", "vmlease", lineterm=""
        )
    )


def lvb_transcript(side: Side) -> list:
    admin, holder = side.python(), side.python(register=True)
    t = Transcript(side)
    res, res2 = lease(side), lease(side, "RES2", "res2")
    try:
        admin.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
        t.call(admin, "get_lvb", size=16, **res)  # ENOENT: not held on this host
        t.call(admin, "set_lvb", data="x", **res)  # ENOENT
        t.call(holder, "acquire", **res)
        t.call(admin, "get_lvb", size=16, **res)  # EINVAL: held without its LVB
        t.call(admin, "set_lvb", data="x", **res)  # EINVAL
        t.call(holder, "release", **res)
        t.call(holder, "acquire", lvb=True, **res)
        t.call(admin, "get_lvb", size=16, **res)  # zeros: never written
        t.call(admin, "set_lvb", data="hello world", **res)  # by any process on the host
        t.call(holder, "get_lvb", size=16, **res)
        t.call(admin, "set_lvb", data="x" * 513, **res)  # E2BIG: more than a sector
        t.call(admin, "set_lvb", data="x" * 4097, **res)  # E2BIG: more than sanlock reads
        t.note("on disk while held", on_disk(side))  # in memory until the release
        t.call(holder, "release", **res)
        t.note("on disk after the release", on_disk(side))
        t.call(admin, "get_lvb", size=16, **res)  # ENOENT again
        t.call(holder, "acquire", lvb=True, **res)
        t.call(admin, "get_lvb", size=16, **res)  # read back at acquire
        t.call(admin, "set_lvb", data="HE", **res)  # a prefix: the rest stays
        t.call(admin, "get_lvb", size=600, **res)  # one sector, zero-padded by python
        t.call(holder, "release", **res)
        t.note("on disk after the second release", on_disk(side))
        t.call(holder, "acquire", shared=True, lvb=True, **res2)
        t.call(admin, "set_lvb", data="shared", **res2)
        t.call(admin, "get_lvb", size=8, **res2)
        t.call(holder, "release", **res2)
        t.note("a shared holder writes no LVB", on_disk(side, "res2"))
    finally:
        holder.close()
        admin.close()
    return t.out


def test_lvb_calls_get_the_same_replies_and_bytes_as_with_the_sanlock_daemon(both):
    ours, theirs = lvb_transcript(both["vmlease"]), lvb_transcript(both["sanlock"])
    assert_same(ours, theirs)
    assert ["on disk after the release", repr("hello world\0\0\0\0\0")] in ours


def convert_transcript(side: Side) -> list:
    admin, holder = side.python(), side.python(register=True)
    t = Transcript(side)
    hp, ap = holder.call("pid"), admin.call("pid")
    t.pids = {hp: "HOLDER", ap: "ADMIN"}
    res = lease(side)
    spec = f"{LS}:RES:{side.res()}:0"

    def owners() -> None:
        found = admin.call("read_resource_owners", **res)
        t.note("owners", [[o["host_id"], bool(o["timestamp"])] for o in found])

    try:
        admin.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
        t.call(holder, "convert", shared=True, **res)  # ENOENT: not held
        t.call(holder, "acquire", lvb=True, **res)
        t.call(holder, "convert", shared=False, **res)  # EALREADY
        t.call(admin, "set_lvb", data="before sharing", **res)
        t.call(holder, "convert", shared=True, **res)
        t.note("on disk after EX->SH", on_disk(side))  # written by the exclusive holder
        t.call(holder, "inquire")
        owners()
        t.call(holder, "convert", shared=True, **res)  # EALREADY
        t.call(admin, "get_lvb", size=14, **res)  # kept in memory through the convert
        t.call(admin, "convert", pid=hp, shared=False, nowait=True, **res)
        t.call(holder, "inquire")
        owners()
        t.call(admin, "convert", pid=ap, shared=True, **res)  # ESRCH: not registered
        t.note("cli", side.cli("convert", "-r", f"{spec}:SH", "-p", str(hp)))
        t.note("cli", side.cli("convert", "-r", f"{spec}:SH", "-p", str(hp)))  # EALREADY
        t.note("cli", side.cli("convert", "-r", spec, "-p", str(hp)))
        t.call(holder, "inquire")
        t.call(holder, "release", **res)
        t.call(holder, "convert", shared=True, **res)  # ENOENT: released
    finally:
        holder.close()
        admin.close()
    return [normalise_cli(x) for x in t.out]


def normalise_cli(row: list) -> list:
    """The CLI prints the daemon's own words for the command; keep only the result lines."""
    if row[0] != "cli":
        return row
    return [row[0], "|".join(line for line in row[1].split("\\n") if "done" in line)]


def test_convert_calls_get_the_same_replies_as_from_the_sanlock_daemon(both):
    ours, theirs = convert_transcript(both["vmlease"]), convert_transcript(both["sanlock"])
    assert_same(ours, theirs)
    already = ["convert", "{'shared': False, 'resource': 'RES'}", "{'errno': 114}"]  # EALREADY
    assert already in ours and ["cli", "convert done 0"] in ours  # the session did run


def test_convert_beside_a_local_sharer_is_refused_where_sanlock_allows_it_safety(both):
    """Two processes of one host share a lease; one asks for it exclusively. sanlock's check
    counts SHARED marks on disk, one per host, and lets it pass: the other process then shares
    a lease held exclusively. The agent refuses (-EAGAIN) until the other one lets go."""
    results = {}
    for kind, side in both.items():
        admin = side.python()
        first, second = side.python(register=True), side.python(register=True)
        res = lease(side)
        try:
            admin.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
            first.call("acquire", shared=True, **res)
            second.call("acquire", shared=True, **res)
            results[kind] = convert(first, False, res)
            if kind == "vmlease":
                second.call("release", **res)
                assert convert(first, False, res) == 0  # alone now
        finally:
            for c in (first, second, admin):
                c.close()
    assert results == {"sanlock": 0, "vmlease": errno.EAGAIN}


# ---- one lockspace, two hosts: the real sanlock daemon at host_id 1, the agent at 2 -------------


def convert(c: SanlockClient, shared: bool, res: dict, nowait: bool = False) -> int:
    try:
        c.call("convert", shared=shared, nowait=nowait, **res)
    except SanlockError as e:
        return e.errno
    return 0


def acquire(c: SanlockClient, res: dict, shared: bool = False) -> int:
    try:
        c.call("acquire", shared=shared, **res)
    except SanlockError as e:
        return e.errno
    return 0


def held_shared(c: SanlockClient) -> bool:
    (held,) = c.call("inquire")
    return bool(held["flags"] & 0x4)  # SANLK_RES_SHARED


def test_convert_never_leaves_an_exclusive_holder_beside_another_hosts_holder_safety(mixed):
    """Both ways, with the real sanlock daemon as the other host: a holder converts to
    exclusive only when no other host holds the lease, and a refused convert leaves it shared
    on disk, so the other host's own convert is refused too (a release there instead would
    have let both become exclusive)."""
    ours, theirs = mixed.holder(mixed.agent), mixed.holder(mixed.sanlock)
    res = lease(mixed.agent)
    try:
        assert acquire(theirs, res, shared=True) == 0
        assert acquire(ours, res, shared=True) == 0
        assert convert(ours, False, res) == errno.EAGAIN
        assert convert(ours, False, res, nowait=True) == errno.EAGAIN
        assert held_shared(ours)
        assert convert(theirs, False, res) == errno.EAGAIN  # our SHARED mark is still there
        assert convert(ours, False, res) == errno.EAGAIN  # and theirs
        # the other host lets go: we may convert, and it may then neither share nor take it
        theirs.call("release", **res)
        assert convert(ours, False, res) == 0 and not held_shared(ours)
        assert acquire(theirs, res, shared=True) == -243
        assert acquire(theirs, res) == -243
        # back to shared: it may share again, not convert
        assert convert(ours, True, res) == 0 and held_shared(ours)
        assert acquire(theirs, res, shared=True) == 0
        assert convert(theirs, False, res) == errno.EAGAIN
        # the mirror: sanlock converts once we let go, and then refuses us
        ours.call("release", **res)
        assert convert(theirs, False, res) == 0
        assert acquire(ours, res, shared=True) == -243
        assert acquire(ours, res) == -243
        assert convert(theirs, True, res) == 0
        assert acquire(ours, res, shared=True) == 0
        assert convert(ours, False, res) == errno.EAGAIN
        assert held_shared(ours)
    finally:
        ours.close()
        theirs.close()


def test_lvb_passes_between_the_sanlock_daemon_and_the_agent_both_ways(mixed):
    admins = {side.kind: side.python() for side in (mixed.sanlock, mixed.agent)}
    ours, theirs = mixed.holder(mixed.agent), mixed.holder(mixed.sanlock)
    res = lease(mixed.agent)
    try:
        theirs.call("acquire", lvb=True, **res)
        admins["sanlock"].call("set_lvb", data="from sanlock", **res)
        theirs.call("release", **res)
        ours.call("acquire", lvb=True, **res)
        assert admins["vmlease"].call("get_lvb", size=12, **res) == "from sanlock"
        admins["vmlease"].call("set_lvb", data="from vmlease", **res)
        assert convert(ours, True, res) == 0  # written at EX->SH
        ours.call("release", **res)
        theirs.call("acquire", lvb=True, **res)
        assert admins["sanlock"].call("get_lvb", size=12, **res) == "from vmlease"
    finally:
        for c in (ours, theirs, *admins.values()):
            c.close()
