"""The resource index commands (format, create, lookup, update, delete, rebuild) through
vmlease-agent's sanlock API, against the real sanlock 3.8.5 daemon.

The comparison test runs the same ``sanlock client`` commands and libsanlock calls (through
ctypes: python-sanlock 3.8 has none of them) against each daemon, with lease files of its own,
and asserts the same replies, CLI lines and on-disk bytes: the index area byte for byte, the
leases in its slots and its rindex lease field by field, timestamps aside. The mixed tests put
both daemons in one lockspace (sanlock host_id 1, the agent host_id 2) on one index: what one
writes the other reads and changes, both ways, and a host holding the rindex lease keeps the
other host's changes out, both ways.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os

import pytest
import test_sanlock_api
from sanlockd import SanlockClient
from test_sanlock_api import LS, N, Side, normalise
from test_sanlock_api_lvb_convert import assert_same
from vmlease_agent.engine import ondisk

pytestmark = pytest.mark.interop

both = test_sanlock_api.both  # the fixtures: both daemons, each with lease files of its own,
mixed = test_sanlock_api.mixed  # and both in one lockspace (sanlock host 1, the agent host 2)

MiB = 1 << 20
SLOTS = 6  # the index file: the index, its lease, then six 1 MiB slots (512-byte sectors)
RIF_ALIGN1M, RIF_SECTOR512 = 0x10, 0x100
RX_NO_LOCKSPACE, RXUP_ADD = 0x1, 0x10000


def make_index_file(work: str, name: str = "index") -> str:
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.truncate((2 + SLOTS) * MiB)
    return path


def rx(c: SanlockClient, call: str, path: str, **kw) -> dict:
    return c.call("rindex", call=call, lockspace=LS, path=path, **kw)


def leader_at(path: str, offset: int) -> ondisk.Leader:
    """A leader record, its times and checksum aside (they differ from run to run)."""
    with open(path, "rb") as f:
        f.seek(offset)
        leader = ondisk.Leader.unpack(f.read(ondisk.LEADER_SIZE))
    return dataclasses.replace(leader, timestamp=0, write_timestamp=0, checksum=0)


def read(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def fingerprint(path: str, offset: int, length: int) -> str:
    """The bytes of an area, short enough for a diff: the entries in use and a digest."""
    data = read(path, offset, length)
    used = [i for i in range(0, len(data), 64) if any(data[i : i + 64])]
    return f"{hashlib.sha256(data).hexdigest()[:16]} non-zero 64-byte blocks at {used}"


def transcript(side: Side) -> list:
    """One admin's session with the index commands; CLI text and library results."""
    out: list = []
    index = make_index_file(side.work)
    small = make_index_file(side.work, "small")
    x = f"{LS}:{index}:0"
    c = side.cli
    lib = side.python()
    try:
        out += [c("lookup", "-x", x)]  # -2: the lockspace is not joined
        out += [c("format", "-x", x)]
        out += [rx(lib, "format_rindex", small, rif=RIF_ALIGN1M | RIF_SECTOR512, max_resources=2)]
        out += [rx(lib, "lookup_rindex", index, flags=RX_NO_LOCKSPACE)]  # the first free slot
        out += [c("create", "-x", x, "-e", "vm1")]  # -2: not joined
        lib.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
        out += [c("create", "-x", x, "-e", "vm1"), c("create", "-x", x, "-e", "vm2")]
        out += [rx(lib, "create_resource", index, name="vm3", num_hosts=4)]
        out += [c("lookup", "-x", x, "-e", "vm2"), c("lookup", "-x", x, "-e", ":3M")]
        out += [c("lookup", "-x", x, "-e", "vm1:2M"), c("lookup", "-x", x)]
        out += [c("lookup", "-x", x, "-e", "vm2:2M")]  # -278: another name there
        out += [c("lookup", "-x", x, "-e", "nope")]  # -2
        out += [c("lookup", "-x", x, "-e", "vm1:2097664")]  # -277: not aligned
        out += [c("lookup", "-x", f"OTHER:{index}:0")]  # -276 (not joined: -2 first)
        out += [rx(lib, "lookup_rindex", index, name="vm1", offset=MiB)]  # -274: its lease
        out += [c("update", "-x", x, "-e", "byhand:7M"), c("lookup", "-x", x, "-e", "byhand")]
        out += [c("update", "-x", x, "-e", ":7M", "-z", "1"), c("lookup", "-x", x, "-e", ":7M")]
        out += [rx(lib, "update_rindex", index, name="x", res_offset=7 * MiB)]  # -22: no flag
        out += [rx(lib, "update_rindex", index, res_offset=7 * MiB, flags=RXUP_ADD)]  # -22
        out += [c("delete", "-x", x, "-e", "vm1"), c("delete", "-x", x, "-e", "vm1")]  # 0, -2
        out += [c("lookup", "-x", x)]  # slot 0 is free again
        out += [c("create", "-x", x, "-e", "vm4")]  # and reused
        out += [c("create", "-x", f"{LS}:{small}:0", "-e", "s1")]
        out += [c("create", "-x", f"{LS}:{small}:0", "-e", "s2")]
        out += [c("create", "-x", f"{LS}:{small}:0", "-e", "s3")]  # -2: max_resources 2
        with open(index, "r+b") as f:  # the entries lost
            f.seek(512)
            f.write(bytes(512))
        out += [c("lookup", "-x", x, "-e", "vm2"), c("rebuild", "-x", x)]
        out += [c("lookup", "-x", x, "-e", "vm2"), c("lookup", "-x", x, "-e", "vm4")]
        out += [("index area", fingerprint(index, 0, MiB))]
        out += [("small index area", fingerprint(small, 0, MiB))]
        # the agent's two updates took the rindex lease (sanlock's do not): two more versions
        lease = leader_at(index, MiB)
        taken_by_updates = 2 if side.kind == "vmlease" else 0
        out += [("rindex lease", dataclasses.replace(lease, lver=lease.lver - taken_by_updates))]
        for i in range(SLOTS):
            out += [(f"slot {i}", leader_at(index, (2 + i) * MiB))]
            out += [
                (f"slot {i} after its leader", fingerprint(index, (2 + i) * MiB + 512, MiB - 512))
            ]
    finally:
        lib.close()
    return [normalise(repr(x), side, {}) for x in out]


def test_rindex_commands_answer_and_write_like_the_sanlock_daemon(both):
    ours, theirs = transcript(both["vmlease"]), transcript(both["sanlock"])
    assert_same(ours, theirs)
    assert any("offset 2097152" in line for line in ours)  # vm1 was created in slot 0


def test_without_the_lockspace_only_lookup_runs_through_the_agent(both):
    """sanlock rebuilds and updates an index without holding its lease when told
    SANLK_RX_NO_LOCKSPACE; the agent refuses to (README), and still looks up."""
    side = both["vmlease"]
    index = make_index_file(side.work)
    lib = side.python()
    try:
        assert rx(lib, "format_rindex", index) == {"rv": 0}
        before = read(index, 0, 2 * MiB)
        refused = -errno.EOPNOTSUPP
        assert rx(lib, "rebuild_rindex", index, flags=RX_NO_LOCKSPACE) == {"rv": refused}
        assert rx(lib, "update_rindex", index, name="x", res_offset=2 * MiB,
                  flags=RX_NO_LOCKSPACE | RXUP_ADD)["rv"] == refused  # fmt: skip
        assert read(index, 0, 2 * MiB) == before
        found = rx(lib, "lookup_rindex", index, flags=RX_NO_LOCKSPACE)
        assert found == {"rv": 0, "name": "", "offset": 2 * MiB}
    finally:
        lib.close()


# ---- one lockspace, one index, two hosts: sanlock at host_id 1, the agent at 2 --------------


def test_an_index_written_by_one_is_read_and_changed_by_the_other_both_ways(mixed):
    index = make_index_file(mixed.sanlock.work)
    admins = {"sanlock": mixed.sanlock.python(), "vmlease": mixed.agent.python()}
    s, v = admins["sanlock"], admins["vmlease"]
    try:
        # sanlock formats, the agent creates, sanlock finds it and creates next to it
        assert rx(s, "format_rindex", index) == {"rv": 0}
        assert rx(v, "create_resource", index, name="a1")["offset"] == 2 * MiB
        found = rx(s, "lookup_rindex", index, name="a1")
        assert found == {"rv": 0, "name": "a1", "offset": 2 * MiB}
        assert rx(s, "create_resource", index, name="s1")["offset"] == 3 * MiB
        assert rx(v, "lookup_rindex", index, name="s1")["offset"] == 3 * MiB
        # the agent deletes sanlock's lease, sanlock reuses the slot, the agent rebuilds
        assert rx(v, "delete_resource", index, name="s1")["rv"] == 0
        assert rx(s, "lookup_rindex", index, name="s1")["rv"] == -errno.ENOENT
        assert rx(s, "create_resource", index, name="s2")["offset"] == 3 * MiB
        assert rx(s, "update_rindex", index, name="hand", res_offset=5 * MiB,
                  flags=RXUP_ADD)["rv"] == 0  # fmt: skip
        assert rx(v, "rebuild_rindex", index) == {"rv": 0}  # "hand" names no lease: dropped
        assert rx(s, "lookup_rindex", index, name="hand")["rv"] == -errno.ENOENT
        assert rx(s, "lookup_rindex", index, name="s2")["offset"] == 3 * MiB
        assert rx(s, "lookup_rindex", index)["offset"] == 4 * MiB
        # and the other way: the agent formats an index, sanlock uses it
        other = make_index_file(mixed.sanlock.work, "index2")
        assert rx(v, "format_rindex", other) == {"rv": 0}
        assert rx(s, "create_resource", other, name="s3")["offset"] == 2 * MiB
        assert rx(v, "lookup_rindex", other, res_offset=2 * MiB)["name"] == "s3"
        assert rx(s, "rebuild_rindex", other) == {"rv": 0}
        assert rx(v, "lookup_rindex", other, name="s3")["offset"] == 2 * MiB
        holder = mixed.holder(mixed.sanlock)  # a lease created by the agent holds in sanlock
        try:
            holder.call("acquire", lockspace=LS, resource="a1", path=index, offset=2 * MiB)
        finally:
            holder.close()
    finally:
        for admin in admins.values():
            admin.close()


@pytest.mark.parametrize("holder_kind", ["sanlock", "vmlease"])
def test_a_host_holding_the_rindex_lease_keeps_the_other_hosts_changes_out(mixed, holder_kind):
    """The rindex lease is what serialises index changes between hosts: while one host holds
    it (here a process of that host, as sanlock's own command would), the other host's
    create, delete and rebuild fail at once and write nothing to the index; so does the
    agent's update (sanlock's writes without the lease: README)."""
    index = make_index_file(mixed.sanlock.work)
    holding_side = mixed.sanlock if holder_kind == "sanlock" else mixed.agent
    other_side = mixed.agent if holder_kind == "sanlock" else mixed.sanlock
    admin, other = holding_side.python(), other_side.python()
    holder = mixed.holder(holding_side)
    try:
        assert rx(admin, "format_rindex", index) == {"rv": 0}
        assert rx(admin, "create_resource", index, name="kept")["rv"] == 0
        holder.call("acquire", lockspace=LS, resource="rindex_lease", path=index, offset=MiB)
        before = read(index, 0, MiB) + read(index, 2 * MiB, SLOTS * MiB)
        results = [
            rx(other, "create_resource", index, name="new")["rv"],
            rx(other, "delete_resource", index, name="kept")["rv"],
            rx(other, "rebuild_rindex", index)["rv"],
        ]
        if other_side is mixed.agent:
            entry = {"name": "x", "res_offset": 4 * MiB, "flags": RXUP_ADD}
            results.append(rx(other, "update_rindex", index, **entry)["rv"])
        assert all(rv in (-243, -247) for rv in results), results  # IDLIVE / OWNED_RETRY
        assert read(index, 0, MiB) + read(index, 2 * MiB, SLOTS * MiB) == before
        holder.call("release", lockspace=LS, resource="rindex_lease", path=index, offset=MiB)
        assert rx(other, "create_resource", index, name="new")["offset"] == 3 * MiB
    finally:
        holder.close()
        other.close()
        admin.close()
