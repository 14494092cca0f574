"""The resource index, as sanlock 3.8.5 lays it out and changes it: header and entry bytes, the
slots the entries name, lookups, create/delete/update/rebuild under the index's lease, and the
refusals that keep live leases and foreign data from being overwritten."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from leasekit import (
    S512,
    Lockspace,
    MiB,
    assert_refused,
    digest,
    leader_of,
    make_file,
    make_lockspace,
    read_bytes,
    write_bytes,
)
from vmlease_agent.engine import errors, ondisk, paxos, rindex
from vmlease_agent.engine.clock import FakeClock
from vmlease_agent.engine.directio import Storage

SLOTS = 6  # an 8 MiB file: the index, its lease and six 1 MiB slots


@dataclass
class Env:
    ls: Lockspace
    st: Storage
    place: rindex.Place
    clock: FakeClock
    host_id: int = 0
    generation: int = 0

    def joined(self, host_id: int) -> Env:
        lease = self.ls.lease(host_id, self.clock)
        lease.acquire()
        self.host_id, self.generation = host_id, lease.generation
        return self

    def acquirer(self, res: paxos.Resource) -> paxos.Acquirer:
        view = self.ls.view()
        return paxos.Acquirer(self.st, res, self.host_id, self.generation, 1, view, self.clock)

    def create(self, name: str, num_hosts: int = 0) -> int:
        return rindex.create(self.st, self.place, name, num_hosts, self.acquirer, 512, 1)

    def delete(self, name: str, offset: int = 0) -> None:
        rindex.delete(self.st, self.place, rindex.Entry(name, offset), self.acquirer, 512, 1)

    def update(self, name: str, offset: int, remove: bool = False, add: bool = True):
        e = rindex.Entry(name, offset)
        return rindex.update(self.st, self.place, e, (remove, add), self.acquirer, 512, 1)

    def lookup(self, name: str = "", offset: int = 0) -> rindex.Entry:
        return rindex.lookup(self.st, self.place, 512, name, offset, 1)

    def entry_bytes(self, i: int) -> bytes:
        return read_bytes(self.st.path, 512 + 64 * i, 64)


@pytest.fixture
def env(lease_dir) -> Env:
    ls = make_lockspace(lease_dir, io_timeout=1)
    path = make_file(lease_dir, "index", (2 + SLOTS) * MiB)
    st = Storage(path)
    place = rindex.Place("LS", path, 0)
    rindex.format_index(st, place, S512, 0, 1)
    return Env(ls, st, place, FakeClock(start=1000)).joined(1)


def slot(i: int) -> int:
    return (2 + i) * MiB


def outside_the_lease(path: str) -> bytes:
    """The index and the slots: all but the index's lease, which every change takes."""
    with open(path, "rb") as f:
        data = f.read()
    return data[:MiB] + data[2 * MiB :]


def assert_index_refused(env: Env, exc_type: type[errors.LeaseError], fn) -> None:
    before = outside_the_lease(env.st.path)
    with pytest.raises(exc_type):
        fn()
    assert outside_the_lease(env.st.path) == before, "refused, but the index or a slot changed"


# ---- format and layout ----------------------------------------------------------------------


def test_format_writes_sanlocks_header_zero_entries_and_the_rindex_lease(env):
    head = read_bytes(env.st.path, 0, 80)
    assert struct.unpack_from("<6IQ", head) == (0x01042018, 0x00010002, 1, 512, 4096, 0, 0)
    assert head[32:34] == b"LS" and not any(head[34:])
    assert not any(read_bytes(env.st.path, 80, MiB - 80))
    lease = leader_of(env.st.path, MiB)
    assert (lease.magic, lease.resource_name, lease.space_name) == (
        ondisk.PAXOS_DISK_MAGIC,
        "rindex_lease",
        "LS",
    )
    assert lease.num_hosts == S512.max_hosts and lease.timestamp == 0


def test_max_resources_is_capped_by_what_one_area_holds(lease_dir):
    path = make_file(lease_dir, "big", 2 * MiB)
    header = rindex.format_index(Storage(path), rindex.Place("LS", path, 0), S512, 99999, 1)
    assert header.max_resources == 16000
    assert struct.unpack_from("<I", read_bytes(path, 16, 4))[0] == 16000


def test_format_refuses_foreign_data_in_either_area(env, lease_dir):
    path = make_file(lease_dir, "image", 4 * MiB)
    write_bytes(path, MiB, b"QFI\xfb" + bytes(508))
    assert_refused(
        path,
        errors.RefuseOverwrite,
        lambda: rindex.format_index(Storage(path), rindex.Place("LS", path, 0), S512, 0, 1),
    )
    write_bytes(path, MiB, bytes(512))
    write_bytes(path, 64 * 1024, b"QFI\xfb" + bytes(508))  # beyond the index's first sectors
    assert_refused(
        path,
        errors.RefuseOverwrite,
        lambda: rindex.format_index(Storage(path), rindex.Place("LS", path, 0), S512, 0, 1),
    )


def test_an_index_may_be_formatted_over_but_not_while_its_lease_is_held(env):
    """Reformatting loses only the entries (``rebuild`` finds the leases again); a held
    rindex lease means a host is changing the index right now."""
    env.create("vm1")
    rindex.format_index(env.st, env.place, S512, 0, 1)
    assert not any(env.entry_bytes(0))
    assert leader_of(env.st.path, slot(0)).resource_name == "vm1"
    env.create("vm2")  # an entry again, that a refused format must keep
    lease = rindex.lease_of(env.place, rindex.read_header(env.st, env.place, 512, 1))
    env.acquirer(lease).acquire()
    assert_refused(
        env.st.path,
        errors.RefuseOverwrite,
        lambda: rindex.format_index(env.st, env.place, S512, 0, 1),
    )


def test_the_header_must_be_an_index_of_this_lockspace_at_this_offset(env):
    other = rindex.Place("OTHER", env.st.path, 0)
    with pytest.raises(errors.RindexLockspace):
        rindex.lookup(env.st, other, 512, "", 0, 1)
    with pytest.raises(errors.RindexMagic):
        rindex.lookup(env.st, rindex.Place("LS", env.st.path, 2 * MiB), 512, "", 0, 1)
    write_bytes(env.st.path, 2 * MiB, read_bytes(env.st.path, 0, 512))  # copied elsewhere
    with pytest.raises(errors.RindexOffset):
        rindex.lookup(env.st, rindex.Place("LS", env.st.path, 2 * MiB), 512, "", 0, 1)
    write_bytes(env.st.path, 4, struct.pack("<I", 0x00020000))
    with pytest.raises(errors.RindexVersion):
        env.lookup()


# ---- create, lookup, delete ----------------------------------------------------------------


def test_create_writes_the_lease_in_the_first_free_slot_then_its_entry(env):
    assert env.create("vm1", num_hosts=10) == slot(0)
    assert env.create("vm2") == slot(1)
    lease = leader_of(env.st.path, slot(0))
    assert (lease.resource_name, lease.num_hosts) == ("vm1", 10)
    assert env.entry_bytes(0) == struct.pack("<QII", slot(0), 0, 0) + b"vm1".ljust(48, b"\0")
    assert leader_of(env.ls.path).timestamp != 0  # our host_id, still live
    assert leader_of(env.st.path, MiB).timestamp == 0  # the index's lease was released


def test_lookup_by_name_offset_both_or_neither_as_sanlock(env):
    env.create("vm1")
    assert env.lookup("vm1") == rindex.Entry("vm1", slot(0))
    assert env.lookup(offset=slot(0)) == rindex.Entry("vm1", slot(0))
    assert env.lookup(offset=slot(1)) == rindex.Entry("", slot(1))
    assert env.lookup() == rindex.Entry("", slot(1))  # the first free slot
    with pytest.raises(errors.RindexDiff):
        env.lookup("vm2", slot(0))
    with pytest.raises(errors.RindexNotFound):
        env.lookup("vm2")
    with pytest.raises(errors.RindexOffset):
        env.lookup(offset=slot(0) + 512)
    with pytest.raises(errors.RindexOffset):  # sanlock reads outside its buffer here
        env.lookup(offset=MiB)


def test_delete_clears_the_entry_and_the_lease_and_create_reuses_the_slot(env):
    env.create("vm1")
    env.create("vm2")
    env.delete("vm1")
    assert not any(env.entry_bytes(0))
    assert leader_of(env.st.path, slot(0)).magic == ondisk.PAXOS_DISK_CLEAR
    with pytest.raises(errors.RindexNotFound):
        env.delete("vm1")
    assert env.create("vm3") == slot(0)  # a cleared lease of the lockspace is not foreign
    assert leader_of(env.st.path, slot(0)).resource_name == "vm3"


def test_create_never_overwrites_a_live_lease_or_foreign_data_in_a_free_slot(env):
    """An index that lost an entry (sanlock's delete fails between its two writes, or an
    update by hand) must not hand a held lease to a new name."""
    env.create("vm1")
    held = paxos.Resource("LS", "vm1", env.st.path, slot(0))
    token = env.acquirer(held).acquire()
    env.update("", slot(0), remove=True)
    assert_index_refused(env, errors.RefuseOverwrite, lambda: env.create("vm2"))
    env.acquirer(held).release(token)
    write_bytes(env.st.path, slot(0), b"QFI\xfb" + bytes(508))
    assert_index_refused(env, errors.RefuseOverwrite, lambda: env.create("vm2"))


def test_delete_refuses_a_held_lease_before_changing_the_index(env):
    env.create("vm1")
    held = paxos.Resource("LS", "vm1", env.st.path, slot(0))
    env.acquirer(held).acquire()
    assert_index_refused(env, errors.RefuseOverwrite, lambda: env.delete("vm1"))


def test_no_free_slot_left(env, lease_dir):
    path = make_file(lease_dir, "small", 3 * MiB)
    place = rindex.Place("LS", path, 0)
    rindex.format_index(Storage(path), place, S512, 1, 1)
    env.st, env.place = Storage(path), place
    env.create("vm1")
    with pytest.raises(errors.RindexNotFound):
        env.create("vm2")


def test_the_index_lease_held_by_a_live_host_refuses_without_waiting(env):
    """sanlock's PAXOS_ACQUIRE_OWNER_NOWAIT: another host changing the index fails ours."""
    other = Env(env.ls, env.st, env.place, env.clock).joined(2)
    lease = rindex.lease_of(env.place, rindex.read_header(env.st, env.place, 512, 1))
    other.acquirer(lease).acquire()
    before = digest(env.st.path)
    env.clock.sleeps.clear()
    with pytest.raises(errors.LeaseError) as info:
        env.create("vm1")
    assert info.value.code in (-243, -247)  # IDLIVE, or OWNED_RETRY while not yet judged
    assert digest(env.st.path) == before
    assert sum(env.clock.sleeps) <= 1.0  # one look at the owner's record, never its 8N+W


# ---- update and rebuild ----------------------------------------------------------------------


def test_update_sets_and_clears_one_entry_in_sanlocks_order_of_checks(env):
    assert env.update("byhand", slot(2)) == rindex.Entry("byhand", slot(2))
    assert env.lookup("byhand") == rindex.Entry("byhand", slot(2))
    assert env.update("", slot(2), remove=True) == rindex.Entry("", 0)
    assert not any(env.entry_bytes(2))
    with pytest.raises(errors.InvalidArgument):
        env.update("", slot(2))  # adding needs a name
    with pytest.raises(errors.InvalidArgument):
        env.update("x", slot(2), add=False)  # neither flag
    with pytest.raises(errors.RindexOffset):  # alignment is checked before the flags
        env.update("x", slot(2) + 512, add=False)
    with pytest.raises(errors.RindexOffset):
        env.update("x", slot(4096))


def test_rebuild_finds_the_leases_in_the_slots_and_drops_stale_entries(env):
    env.create("vm1")
    env.create("vm2")
    env.create("vm3")
    env.delete("vm2")  # a cleared lease: not found by rebuild
    env.update("stale", slot(4))
    write_bytes(env.st.path, 512, bytes(512))  # the entries lost
    found = rindex.rebuild(env.st, env.place, env.acquirer, 512, 1)
    assert found == [rindex.Entry("vm1", slot(0)), rindex.Entry("vm3", slot(2))]
    assert env.lookup("vm3") == rindex.Entry("vm3", slot(2))
    assert not any(env.entry_bytes(4))
