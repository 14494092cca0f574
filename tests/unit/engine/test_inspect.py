"""``init`` refuses to overwrite live leases or foreign data unless forced, and writes nothing."""

from __future__ import annotations

import os

import pytest
from leasekit import S512, assert_refused, join, leader_of, make_file, make_lockspace, make_resource
from vmlease_agent.engine import delta, errors, paxos
from vmlease_agent.engine.clock import FakeClock
from vmlease_agent.engine.directio import Storage


def _init_ls(st, path, name="LS", force=False):
    delta.init_lockspace(st, delta.Location(name, path, 0), S512, 1, force=force)


def _init_res(st, path, ls="LS", name="RES", force=False):
    paxos.init_resource(st, paxos.Resource(ls, name, path, 0), S512, force=force)


def test_init_over_a_live_lockspace_is_refused_safety(lease_dir):
    ls = make_lockspace(lease_dir)
    ls.lease(2, FakeClock(), name="node-b").acquire()
    err = assert_refused(ls.path, errors.RefuseOverwrite, lambda: _init_ls(ls.st, ls.path))
    assert err.code == -17
    assert "in use by host_id 2 ('node-b', generation 1)" in str(err)
    assert "run again with --force" in str(err)
    _init_ls(ls.st, ls.path, force=True)
    assert ls.record(2).timestamp == 0 and ls.record(2).owner_id == 0


def test_init_over_a_lockspace_nobody_holds_is_allowed(lease_dir):
    ls = make_lockspace(lease_dir)
    lease = ls.lease(2, FakeClock())
    lease.acquire()
    lease.release()
    _init_ls(ls.st, ls.path)
    assert ls.record(2).owner_generation == 0


def test_init_over_another_lockspace_or_a_resource_is_refused(lease_dir):
    ls = make_lockspace(lease_dir, name="OLD")
    err = assert_refused(ls.path, errors.RefuseOverwrite, lambda: _init_ls(ls.st, ls.path))
    assert "holds lockspace OLD (not in use)" in str(err)
    st, res = make_resource(lease_dir)
    err = assert_refused(res.path, errors.RefuseOverwrite, lambda: _init_ls(st, res.path))
    assert "holds resource LS:RES (not in use)" in str(err)
    err = assert_refused(ls.path, errors.RefuseOverwrite, lambda: _init_res(ls.st, ls.path))
    assert "holds lockspace OLD" in str(err)


def test_init_over_a_held_resource_is_refused_safety(lease_dir):
    ls = make_lockspace(lease_dir)
    st, res = make_resource(lease_dir)
    join(ls, 3, FakeClock(), st, res).acq.acquire()
    err = assert_refused(res.path, errors.RefuseOverwrite, lambda: _init_res(st, res.path))
    assert "in use by host_id 3 (generation 1) exclusive" in str(err)
    _init_res(st, res.path, force=True)
    assert leader_of(res.path).timestamp == 0 and leader_of(res.path).lver == 0


def test_init_over_a_shared_resource_is_refused_safety(lease_dir):
    ls = make_lockspace(lease_dir)
    st, res = make_resource(lease_dir)
    join(ls, 4, FakeClock(), st, res).acq.acquire(shared=True)
    err = assert_refused(res.path, errors.RefuseOverwrite, lambda: _init_res(st, res.path))
    assert "host_id 4 (generation 1) shared" in str(err)


def test_init_over_a_released_resource_is_allowed(lease_dir):
    ls = make_lockspace(lease_dir)
    st, res = make_resource(lease_dir)
    h = join(ls, 4, FakeClock(), st, res)
    h.acq.release(h.acq.acquire(shared=True))
    h.acq.release(h.acq.acquire())
    _init_res(st, res.path)
    err = assert_refused(res.path, errors.RefuseOverwrite, lambda: _init_res(st, res.path, "X"))
    assert "holds resource LS:RES (not in use)" in str(err)


def test_init_over_foreign_data_is_refused(lease_dir):
    path = make_file(lease_dir, "image")
    with open(path, "r+b") as f:
        f.write(b"QFI\xfb" + os.urandom(1020))
    with Storage(path) as st:
        for init in (_init_ls, _init_res):
            err = assert_refused(path, errors.RefuseOverwrite, lambda i=init: i(st, path))
            assert "not a sanlock lease (first bytes 51 46 49 fb" in str(err)
            assert "may point into a disk image" in str(err)
        _init_res(st, path, force=True)
        assert leader_of(path).resource_name == "RES"


def test_init_over_zeros_or_past_the_end_is_allowed(lease_dir):
    path = make_file(lease_dir, "empty", 0)
    with Storage(path) as st:
        _init_ls(st, path)
        assert os.path.getsize(path) == 1024 * 1024
    zeros = make_file(lease_dir, "zeros")
    with Storage(zeros) as st:
        _init_res(st, zeros)
        assert leader_of(zeros).resource_name == "RES"


@pytest.mark.parametrize("data_at", [4096, 1024 * 1024 - 512])
def test_init_looks_at_the_whole_area_not_just_the_first_sector(lease_dir, data_at):
    path = make_file(lease_dir, "f")
    with open(path, "r+b") as f:
        f.seek(data_at)
        f.write(b"\x01")
    with Storage(path) as st:
        assert_refused(path, errors.RefuseOverwrite, lambda: _init_ls(st, path))
