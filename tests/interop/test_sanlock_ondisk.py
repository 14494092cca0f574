"""Byte-for-byte interoperability with Debian's sanlock 3.8.5 binary, both directions:
our ``init`` equals theirs, their leases read identically by our ``read_leader``/``dump``, our
leases (acquired by the engine) read by their tools with the right fields, and each side's ballots
honoured by the other's. No daemon here (see test_sanlock_daemon.py)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import time

import pytest
from leasekit import MiB, leader_of, make_file, read_bytes
from vmlease_agent.cli import main as cli
from vmlease_agent.engine import delta, ondisk, paxos
from vmlease_agent.engine.clock import Clock, FakeClock
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import Sizes

pytestmark = pytest.mark.interop


def sanlock(*args: str) -> str:
    proc = subprocess.run(["sanlock", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"sanlock {' '.join(args)}: rc {proc.returncode} {proc.stderr}"
    return proc.stdout


def ours(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(list(args))
    assert rc == 0, out.getvalue()
    return out.getvalue()


def both_files(lease_dir: str, size: int) -> tuple[str, str]:
    return make_file(lease_dir, "theirs", size), make_file(lease_dir, "ours", size)


def same_bytes(a: str, b: str) -> None:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        da, db = fa.read(), fb.read()
    assert len(da) == len(db)
    if da != db:
        first = next(i for i in range(len(da)) if da[i] != db[i])
        raise AssertionError(f"first difference at byte {first:#x}: {da[first]} != {db[first]}")


SIZE_OPTS = [
    ([], MiB),
    (["-Z", "512", "-A", "1M"], MiB),
    (["-Z", "4096", "-A", "1M"], MiB),
    (["-Z", "4096", "-A", "2M"], 2 * MiB),
    (["-Z", "4096", "-A", "4M"], 4 * MiB),
    (["-Z", "4096", "-A", "8M"], 8 * MiB),
]
SIZE_IDS = [" ".join(opts) or "default" for opts, _ in SIZE_OPTS]


@pytest.mark.parametrize(
    ("opts", "align"), SIZE_OPTS, ids=[" ".join(o) or "default" for o, _ in SIZE_OPTS]
)
@pytest.mark.parametrize("io_timeout", [None, "5"])
def test_init_lockspace_is_byte_identical(lease_dir, opts, align, io_timeout):
    offset = align  # not at 0, to check offsets too
    theirs, mine = both_files(lease_dir, 2 * align + MiB)
    extra = ["-o", io_timeout] if io_timeout else []
    sanlock("direct", "init", "-s", f"LS:0:{theirs}:{offset}", *opts, *extra)
    assert ours("direct", "init", "-s", f"LS:0:{mine}:{offset}", *opts, *extra) == "init done 0\n"
    same_bytes(theirs, mine)


@pytest.mark.parametrize(
    ("opts", "align"), SIZE_OPTS, ids=[" ".join(o) or "default" for o, _ in SIZE_OPTS]
)
@pytest.mark.parametrize("num_hosts", [None, "8"])
def test_init_resource_is_byte_identical(lease_dir, opts, align, num_hosts):
    theirs, mine = both_files(lease_dir, 2 * align)
    extra = ["-n", num_hosts] if num_hosts else []
    sanlock("direct", "init", "-r", f"LS:RES:{theirs}:{align}", *opts, *extra)
    ours("direct", "init", "-r", f"LS:RES:{mine}:{align}", *opts, *extra)
    same_bytes(theirs, mine)


def test_init_cleared_resource_matches_but_for_the_init_time(lease_dir):
    theirs, mine = both_files(lease_dir, MiB)
    before = Clock().monotime()
    sanlock("direct", "init", "-r", f"LS:RES:{theirs}:0", "-z", "1")
    ours("direct", "init", "-r", f"LS:RES:{mine}:0", "-z", "1")
    after = Clock().monotime()
    a, b = leader_of(theirs), leader_of(mine)
    assert a.magic == b.magic == ondisk.PAXOS_DISK_CLEAR
    assert before <= a.write_timestamp <= after and before <= b.write_timestamp <= after
    # write_timestamp (0xC0) is outside the checksum; everything else must match
    ta, tb = read_bytes(theirs, 0, MiB), read_bytes(mine, 0, MiB)
    assert ta[:0xC0] == tb[:0xC0] and ta[0xC8:] == tb[0xC8:]


def test_invalid_size_combination_refused_by_both(lease_dir):
    path = make_file(lease_dir, "x", 2 * MiB)
    for tool in (["sanlock"], ["python3", "-m", "vmlease_agent.cli.main"]):
        proc = subprocess.run(
            [*tool, "direct", "init", "-s", f"LS:0:{path}:0", "-Z", "512", "-A", "2M"],
            capture_output=True,
        )
        assert proc.returncode != 0
    assert not any(read_bytes(path, 0, 2 * MiB))


# ---- their leases read by us -----------------------------------------------------------------


def compare_reads(*commands: list[str]) -> None:
    for args in commands:
        theirs = sanlock("direct", *args)
        mine = ours("direct", *args)
        assert mine == theirs, f"`direct {' '.join(args)}` differs:\n{theirs}\n---\n{mine}"


def test_their_lockspace_and_resources_read_identically_by_us(lease_dir):
    path = make_file(lease_dir, "leases", 4 * MiB)
    sanlock("direct", "init", "-s", f"LS:0:{path}:0", "-o", "1")
    sanlock("direct", "init", "-r", f"LS:RES1:{path}:{MiB}")
    sanlock("direct", "init", "-r", f"LS:RES2:{path}:{2 * MiB}", "-n", "16")
    sanlock("direct", "init", "-r", f"LS:RES3:{path}:{3 * MiB}")
    sanlock("direct", "acquire_id", "-s", f"LS:2:{path}:0", "-o", "1")
    sanlock("direct", "acquire", "-r", f"LS:RES1:{path}:{MiB}", "-i", "2", "-g", "1", "-o", "1")
    sanlock("direct", "acquire", "-r", f"LS:RES2:{path}:{2 * MiB}", "-i", "7", "-g", "3")
    compare_reads(
        ["read_leader", "-s", f"LS:1:{path}:0"],
        ["read_leader", "-s", f"LS:2:{path}:0"],
        ["read_leader", "-r", f"LS:RES1:{path}:{MiB}"],
        ["read_leader", "-r", f"LS:RES2:{path}:{2 * MiB}"],
        ["dump", path],
        ["dump", path, "-f", "1"],
        ["dump", path, "-f", "2"],
        ["dump", f"{path}:{MiB}"],
        ["dump", f"{path}:{MiB}:{2 * MiB}", "-f", "2"],
    )
    lr = leader_of(path, MiB)
    assert (lr.owner_id, lr.owner_generation, lr.lver, lr.write_id) == (2, 1, 1, 2)


def test_their_4k_leases_read_identically_by_us(lease_dir):
    path = make_file(lease_dir, "leases4k", 4 * MiB)
    sanlock("direct", "init", "-s", f"LS:0:{path}:0", "-Z", "4096", "-A", "2M", "-o", "1")
    sanlock("direct", "init", "-r", f"LS:RES:{path}:{2 * MiB}", "-Z", "4096", "-A", "2M")
    sanlock("direct", "acquire_id", "-s", f"LS:500:{path}:0", "-o", "1")
    sanlock("direct", "acquire", "-r", f"LS:RES:{path}:{2 * MiB}", "-i", "500", "-g", "1")
    compare_reads(
        ["read_leader", "-s", f"LS:500:{path}:0"],
        ["read_leader", "-r", f"LS:RES:{path}:{2 * MiB}"],
        ["dump", path, "-f", "2"],
    )


# ---- our leases read by them -------------------------------------------------------------------


def test_our_held_leases_read_by_sanlock(lease_dir):
    path = make_file(lease_dir, "leases", 3 * MiB)
    ours("direct", "init", "-s", f"LS:0:{path}:0", "-o", "1")
    ours("direct", "init", "-r", f"LS:EX:{path}:{MiB}")
    ours("direct", "init", "-r", f"LS:SH:{path}:{2 * MiB}")
    loc = delta.Location("LS", path, 0)
    clock = FakeClock(start=Clock().monotime())
    with Storage(path) as st:
        lease = delta.DeltaLease(st, loc, Sizes(512, MiB), 3, "vmlease-node-c", 1, clock=clock)
        lease.acquire()
        view = paxos.OwnerView(st, loc, Sizes(512, MiB), 1)
        ex = paxos.Acquirer(st, paxos.Resource("LS", "EX", path, MiB), 3, 1, 1, view, clock=clock)
        token = ex.acquire()
        sh = paxos.Acquirer(
            st, paxos.Resource("LS", "SH", path, 2 * MiB), 3, 1, 1, view, clock=clock
        )
        sh.acquire(shared=True)
    out = sanlock("direct", "read_leader", "-r", f"LS:EX:{path}:{MiB}")
    fields = dict(line.split(" ", 1) for line in out.splitlines()[1:])
    assert fields["owner_id"] == "3" and fields["owner_generation"] == "1"
    assert fields["lver"] == "1" and fields["write_id"] == "3"
    assert fields["timestamp"] == str(token.leader.timestamp)
    assert fields["checksum"] == f"0x{token.leader.checksum:x}"
    out = sanlock("direct", "read_leader", "-s", f"LS:3:{path}:0")
    fields = dict(line.split(" ", 1) for line in out.splitlines()[1:])
    assert fields["resource_name"] == "vmlease-node-c" and fields["io_timeout"] == "1"
    compare_reads(
        ["dump", path],
        ["dump", path, "-f", "1"],
        ["dump", path, "-f", "2"],
        ["read_leader", "-r", f"LS:SH:{path}:{2 * MiB}"],
    )
    theirs = sanlock("direct", "dump", f"{path}:{2 * MiB}")
    assert theirs.splitlines()[-1].split() == ["0003", "0001", "SH"]


def test_ballots_are_honoured_across_implementations(lease_dir):
    """Their ballot after ours picks mbal above ours, ours after theirs picks mbal above theirs
    (3 -> 2005 -> 4003 style), and lver keeps counting across both."""
    path = make_file(lease_dir, "leases", 2 * MiB)
    ours("direct", "init", "-s", f"LS:0:{path}:0", "-o", "1")
    ours("direct", "init", "-r", f"LS:RES:{path}:{MiB}")
    loc = delta.Location("LS", path, 0)
    res = paxos.Resource("LS", "RES", path, MiB)
    with Storage(path) as st:
        view = paxos.OwnerView(st, loc, Sizes(512, MiB), 1)
        acq = paxos.Acquirer(st, res, 2, 1, 1, view, clock=FakeClock())
        acq.release(acq.acquire())  # ours: lver 1, mbal 2, released
        sanlock("direct", "acquire", "-r", f"LS:RES:{path}:{MiB}", "-i", "5", "-g", "1")
        lr = leader_of(path, MiB)
        assert (lr.owner_id, lr.lver) == (5, 2)
        dump = sanlock("direct", "dump", f"{path}:{MiB}", "-f", "2")
        assert "dblock[0004] mbal 2005 bal 2005 inp 5 inp2 1" in dump
        # host 5 never joined the lockspace (its delta lease is free): the lease is ours to take
        token = acq.acquire()
        assert (token.dblock.mbal, token.lver, leader_of(path, MiB).owner_id) == (4002, 3, 2)
    assert "dblock[0001] mbal 4002 bal 4002 inp 2 inp2 1" in sanlock(
        "direct", "dump", f"{path}:{MiB}", "-f", "2"
    )


def test_sanlock_takeover_invalidates_our_fire_timeout_tag_safety(lease_dir):
    """We record W=20 in our delta lease. When a sanlock host later takes that host_id it keeps
    unused1 but changes name and generation: nobody may judge it with our 20 s then."""
    path = make_file(lease_dir, "ls")
    ours("direct", "init", "-s", f"LS:0:{path}:0", "-o", "1")
    loc = delta.Location("LS", path, 0)
    with Storage(path) as st:
        lease = delta.DeltaLease(
            st, loc, Sizes(512, MiB), 4, "ours", 1, fire_timeout=20, clock=FakeClock(start=50)
        )
        lease.acquire()
        lease.release()
        tagged = delta.read_host(st, loc, Sizes(512, MiB), 4, 1)
        assert ondisk.watchdog_fire_timeout_of(tagged, 60) == 20
    sanlock("direct", "acquire_id", "-s", f"LS:4:{path}:0", "-o", "1")  # verifies our checksum
    with Storage(path) as st:
        theirs = delta.read_host(st, loc, Sizes(512, MiB), 4, 1)
    assert theirs.unused1 == tagged.unused1  # sanlock kept the field...
    assert theirs.owner_generation == 2 and theirs.resource_name != "ours"
    assert ondisk.watchdog_fire_timeout_of(theirs, 60) == 60  # ...but it no longer counts


def test_timestamps_are_the_same_clock_as_sanlocks(lease_dir):
    path = make_file(lease_dir, "ls")
    sanlock("direct", "init", "-s", f"LS:0:{path}:0", "-o", "1")
    before = Clock().monotime()
    t0 = time.monotonic()
    sanlock("direct", "acquire_id", "-s", f"LS:1:{path}:0", "-o", "1")
    after = Clock().monotime()
    ts = ondisk.Leader.unpack(read_bytes(path, 0, 200)).timestamp
    assert before <= ts <= after
    assert time.monotonic() - t0 >= 2  # sanlock waited 2N too


def test_fresh_file_needs_no_root_owned_state(lease_dir):
    """Both tools agree on a file that is not a multiple of the align size (short file)."""
    theirs, mine = both_files(lease_dir, 0)
    sanlock("direct", "init", "-s", f"LS:0:{theirs}:0")
    ours("direct", "init", "-s", f"LS:0:{mine}:0")
    assert os.path.getsize(theirs) == os.path.getsize(mine) == MiB
    same_bytes(theirs, mine)
