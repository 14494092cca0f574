"""``vmlease direct ...``: sanlock's syntax, output lines, exit statuses and one-line errors.

Most tests run the CLI in-process with the real clock's sleeps made instant (the waits themselves
are tested in test_delta/test_paxos); one runs the installed ``vmlease`` for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from leasekit import MiB, digest, leader_of, make_file, make_lockspace, read_bytes
from vmlease_agent.cli import main as cli
from vmlease_agent.engine import clock as clock_mod
from vmlease_agent.engine import ondisk
from vmlease_agent.engine.clock import Clock, FakeClock


class Sleeps(list):
    """Sleeps requested from the real clock, plus hooks run at each (simulating other hosts)."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list = []


@pytest.fixture
def instant(monkeypatch):
    """Make the real clock's sleeps instant; returns the list of requested sleeps."""
    sleeps = Sleeps()
    hooks = sleeps.hooks

    def sleep(seconds, abort=None):
        sleeps.append(seconds)
        for hook in hooks:
            hook()

    monkeypatch.setattr(clock_mod.REAL_CLOCK, "sleep", sleep)
    return sleeps


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["direct", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, code: int) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vmlease: ") and lines[0].endswith(f"[error {code}]")
    return lines[0]


@pytest.fixture
def files(lease_dir):
    return make_file(lease_dir, "ls"), make_file(lease_dir, "res")


def test_init_lockspace_and_resource(capsys, files):
    ls, res = files
    assert run(capsys, "init", "-s", f"LS:0:{ls}:0", "-o", "5") == (0, "init done 0\n", "")
    assert leader_of(ls).io_timeout == 5
    assert run(capsys, "init", "-r", f"LS:RES:{res}:0", "-n", "8")[:2] == (0, "init done 0\n")
    assert leader_of(res).num_hosts == 8


def test_init_4k_2m(capsys, lease_dir):
    path = make_file(lease_dir, "ls4k", 2 * MiB)
    assert run(capsys, "init", "-s", f"LS:0:{path}:0", "-Z", "4096", "-A", "2M")[0] == 0
    lr = leader_of(path)
    assert (lr.sector_size, lr.flags) == (4096, 0x20)
    assert ondisk.Leader.unpack(read_bytes(path, 499 * 4096, 200)).magic == lr.magic


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["-Z", "512", "-A", "2M"], -230, "invalid sector/align size combination 512/2097152"),
        (["-A", "3M"], -22, "use one of 1M, 2M, 4M, 8M"),
        (["-o", "0"], -22, "-o: io_timeout 0: must be a whole number of seconds in 1..255"),
        (["-o", "256"], -22, "in 1..255 (the delta lease records it in one byte)"),
    ],
)
def test_init_bad_options_write_nothing(capsys, files, args, code, text):
    ls, _ = files
    before = digest(ls)
    rc, out, err = run(capsys, "init", "-s", f"LS:0:{ls}:0", *args)
    assert rc == abs(code) and out == ""
    assert text in one_line_error(err, code)
    assert digest(ls) == before


def test_init_needs_exactly_one_of_s_or_r(capsys, files):
    ls, res = files
    rc, _, err = run(capsys, "init")
    assert rc == 22 and "give exactly one of -s or -r" in err
    rc, _, err = run(capsys, "init", "-s", f"LS:0:{ls}:0", "-r", f"LS:R:{res}:0")
    assert rc == 22


def test_init_refuses_names_over_48_bytes_and_unaligned_offsets(capsys, files):
    ls, res = files
    before = digest(ls), digest(res)
    rc, _, err = run(capsys, "init", "-s", f"{'L' * 49}:0:{ls}:0")
    assert rc == 36 and "is 49 bytes" in one_line_error(err, -36)
    rc, _, err = run(capsys, "init", "-r", f"LS:{'R' * 49}:{res}:0")
    assert rc == 36
    rc, _, err = run(capsys, "init", "-s", f"LS:0:{ls}:4096")
    line = one_line_error(err, -22)
    assert rc == 22 and f"{ls}:4096" in line and "use an offset such as 1048576" in line
    assert (digest(ls), digest(res)) == before


def test_init_over_live_lockspace_needs_force(capsys, instant, files):
    ls, _ = files
    run(capsys, "init", "-s", f"LS:0:{ls}:0", "-o", "1")
    assert run(capsys, "acquire_id", "-s", f"LS:2:{ls}:0", "-o", "1", "-e", "b")[0] == 0
    before = digest(ls)
    rc, _, err = run(capsys, "init", "-s", f"LS:0:{ls}:0")
    line = one_line_error(err, -17)
    assert rc == 17 and "host_id 2 ('b', generation 1)" in line and "--force" in line
    assert digest(ls) == before
    assert run(capsys, "init", "-s", f"LS:0:{ls}:0", "--force")[0] == 0


def test_host_id_lifecycle(capsys, instant, files):
    ls, _ = files
    run(capsys, "init", "-s", f"LS:0:{ls}:0", "-o", "1")
    rc, out, _ = run(capsys, "acquire_id", "-s", f"LS:3:{ls}:0", "-o", "1", "-e", "node-3")
    assert (rc, out) == (0, "acquire_id done 0 (host_id 3 generation 1)\n")
    assert instant == [2]
    assert run(capsys, "renew_id", "-s", f"LS:3:{ls}:0", "-o", "1", "-e", "node-3")[:2] == (
        0,
        "renew_id done 0\n",
    )
    rc, _, err = run(capsys, "renew_id", "-s", f"LS:3:{ls}:0", "-o", "1", "-e", "other")
    # codes beyond 255 cannot be exit statuses: capped, the code itself is in the message
    assert rc == 255 and "'node-3', generation 1" in one_line_error(err, -260)
    assert run(capsys, "release_id", "-s", f"LS:3:{ls}:0", "-o", "1", "-e", "node-3")[0] == 0
    rec = ondisk.Leader.unpack(read_bytes(ls, 2 * 512, 200))
    assert (rec.timestamp, rec.owner_id, rec.resource_name) == (0, 3, "node-3")


def test_acquire_id_out_of_range_writes_nothing(capsys, files):
    ls, _ = files
    run(capsys, "init", "-s", f"LS:0:{ls}:0")
    before = digest(ls)
    rc, _, err = run(capsys, "acquire_id", "-s", f"LS:2001:{ls}:0")
    assert rc == 231 and "holds host_ids 1..2000" in one_line_error(err, -231)
    assert digest(ls) == before


def test_read_leader_prints_sanlocks_fields(capsys, files):
    ls, res = files
    run(capsys, "init", "-s", f"LS:0:{ls}:0", "-o", "10")
    run(capsys, "init", "-r", f"LS:RES1:{res}:0")
    rc, out, _ = run(capsys, "read_leader", "-s", f"LS:1:{ls}:0")
    assert rc == 0
    assert out.splitlines() == [
        "read_leader done 0",
        "magic 0x12212010",
        "version 0x30004",
        "flags 0x10",
        "sector_size 512",
        "num_hosts 0",
        "max_hosts 1",
        "owner_id 0",
        "owner_generation 0",
        "lver 0",
        "space_name LS",
        "resource_name ",
        "timestamp 0",
        "checksum 0xb0f174c0",
        "io_timeout 10",
        "extra1 0",
        "extra2 0",
        "extra3 0",
    ]
    rc, out, _ = run(capsys, "read_leader", "-r", f"LS:RES1:{res}:0")
    lines = out.splitlines()
    assert "checksum 0xe0217f4c" in lines and "num_hosts 2000" in lines
    assert lines[-3:] == ["write_id 0", "write_generation 0", "write_timestamp 0"]


def test_read_leader_of_an_uninitialised_area(capsys, files):
    ls, res = files
    rc, _, err = run(capsys, "read_leader", "-r", f"LS:R:{res}:0")
    line = one_line_error(err, -223)
    assert rc == 223 and f"initialise it with `vmlease direct init -r LS:R:{res}:0`" in line
    rc, _, err = run(capsys, "read_leader", "-s", f"LS:1:{ls}:0")
    assert rc == 223


def test_acquire_and_release_a_resource(capsys, instant, files):
    ls, res = files
    run(capsys, "init", "-s", f"LS:0:{ls}:0", "-o", "1")
    run(capsys, "init", "-r", f"LS:RES:{res}:0")
    run(capsys, "acquire_id", "-s", f"LS:2:{ls}:0", "-o", "1")
    rc, out, _ = run(capsys, "acquire", "-r", f"LS:RES:{res}:0", "-i", "2", "-g", "1", "-o", "1")
    assert (rc, out) == (0, "acquire done 0 (lver 1)\n")
    lr = leader_of(res)
    assert (lr.owner_id, lr.owner_generation, lr.lver) == (2, 1, 1) and lr.timestamp
    # unlike sanlock 3.8.5's direct release (a no-op), ours releases
    assert run(capsys, "release", "-r", f"LS:RES:{res}:0", "-i", "2", "-g", "1")[:2] == (
        0,
        "release done 0\n",
    )
    assert leader_of(res).timestamp == 0
    rc, out, _ = run(capsys, "acquire", "-r", f"LS:RES:{res}:0:SH", "-i", "2", "-g", "1")
    assert rc == 0 and "lver 2" in out
    assert run(capsys, "release", "-r", f"LS:RES:{res}:0", "-i", "2", "-g", "1")[0] == 0
    assert read_bytes(res, 3 * 512 + 128, 16) == bytes(16)


def test_acquire_needs_the_acting_host(capsys, files):
    _, res = files
    with pytest.raises(SystemExit):
        cli.main(["direct", "acquire", "-r", f"LS:RES:{res}:0"])
    capsys.readouterr()


def test_acquire_held_lease_without_lockspace_says_to_give_s(capsys, instant, files):
    ls, res = files
    run(capsys, "init", "-s", f"LS:0:{ls}:0", "-o", "1")
    run(capsys, "init", "-r", f"LS:RES:{res}:0")
    run(capsys, "acquire", "-r", f"LS:RES:{res}:0", "-i", "3", "-g", "1")
    before = digest(res)
    rc, _, err = run(capsys, "acquire", "-r", f"LS:RES:{res}:0", "-i", "5", "-g", "1")
    assert rc == 201 and "-s LS:0:PATH:OFFSET" in one_line_error(err, -201)
    rc, _, err = run(
        capsys, "acquire", "-r", f"LS:RES:{res}:0", "-s", f"OTHER:0:{ls}:0", "-i", "5", "-g", "1"
    )
    assert rc == 22 and "the resource is in lockspace LS" in err
    assert digest(res) == before


def test_idlive_exit_status_and_one_line_error_in_process(capsys, instant, lease_dir):
    ls = make_lockspace(lease_dir)
    res = make_file(lease_dir, "res")
    run(capsys, "init", "-r", f"LS:RES:{res}:0")
    owner_clock = FakeClock(start=300)
    owner = ls.lease(3, owner_clock, name="node-3")
    owner.acquire()
    run(capsys, "acquire", "-r", f"LS:RES:{res}:0", "-i", "3", "-g", "1")

    def owner_renews():
        owner_clock.advance(2)
        owner.renew()

    instant.hooks.append(owner_renews)
    before = digest(res)
    rc, out, err = run(
        capsys, "acquire", "-r", f"LS:RES:{res}:0", "-s", f"LS:0:{ls.path}:0", "-i", "5", "-g", "1"
    )
    line = one_line_error(err, -243)
    assert rc == 243 and out == ""
    assert f"disk lease LS:RES at {res}:0 is held by host 3" in line and "node-3" in line
    assert digest(res) == before


VMLEASE = shutil.which("vmlease", path=os.path.dirname(sys.executable)) or shutil.which("vmlease")


@pytest.mark.skipif(not VMLEASE, reason="the vmlease entry point is not installed")
def test_idlive_from_the_real_command(lease_dir):
    """The installed command, real clock: an owner renewing in the background gives exit 243."""
    ls = make_lockspace(lease_dir)
    res = make_file(lease_dir, "res")
    exe = VMLEASE
    subprocess.run(
        [exe, "direct", "init", "-r", f"LS:RES:{res}:0"], check=True, capture_output=True
    )
    owner = ls.lease(3, FakeClock(start=time.monotonic()), name="node-3")
    owner.acquire()  # instantly, then renew on the real clock
    owner.clock = Clock()
    subprocess.run(
        [exe, "direct", "acquire", "-r", f"LS:RES:{res}:0", "-i", "3", "-g", "1", "-o", "1"],
        check=True,
        capture_output=True,
    )
    stop = threading.Event()

    def renew():
        while not stop.wait(0.2):
            owner.renew()

    t = threading.Thread(target=renew, daemon=True)
    t.start()
    try:
        before = digest(res)
        acquire = [exe, "direct", "acquire", "-r", f"LS:RES:{res}:0"]
        t0 = time.monotonic()
        proc = subprocess.run(
            [*acquire, "-s", f"LS:0:{ls.path}:0", "-i", "5", "-g", "1", "-o", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
    assert proc.returncode == 243, proc.stderr
    one_line_error(proc.stderr, -243)
    assert elapsed < 5  # one 1-second poll, not a wait for the owner to die
    assert digest(res) == before


def test_dump_lists_used_records_and_resources(capsys, instant, lease_dir):
    path = make_file(lease_dir, "both", 3 * MiB)
    run(capsys, "init", "-s", f"LS:0:{path}:0", "-o", "1")
    run(capsys, "init", "-r", f"LS:RES:{path}:{MiB}")
    run(capsys, "init", "-r", f"LS:RES2:{path}:{2 * MiB}")
    run(capsys, "acquire_id", "-s", f"LS:2:{path}:0", "-o", "1", "-e", "hostb")
    run(capsys, "acquire", "-r", f"LS:RES:{path}:{MiB}", "-i", "2", "-g", "1")
    rc, out, _ = run(capsys, "dump", path)
    lines = out.splitlines()
    assert rc == 0
    assert lines[0].split() == [
        "offset",
        "lockspace",
        "resource",
        "timestamp",
        "own",
        "gen",
        "lver",
    ]
    assert lines[1].split()[:2] == ["00000512", "LS"] and lines[1].split()[2:3] == ["hostb"]
    assert lines[2].split()[0:3] == ["01048576", "LS", "RES"] and lines[2].split()[-3:-1] == [
        "0002",
        "0001",
    ]
    assert lines[3].split()[2] == "RES2" and lines[3].split()[-1] == "0"
    assert len(lines) == 4
    rc, out, _ = run(capsys, "dump", f"{path}:{MiB}:{MiB}", "-f", "2")
    lines = out.splitlines()
    assert lines[0].endswith("lver/req/mode") and lines[1].endswith(" 1/0/0")
    assert lines[2].startswith("dblock[0001] mbal 2 bal 2 inp 2 inp2 1 inp3 ")
    assert len(lines) == 3


def test_dump_warns_about_unaligned_offsets_and_reports_no_lease(capsys, files):
    ls, _ = files
    rc, out, err = run(capsys, "dump", f"{ls}:4096")
    assert out.startswith("WARNING: dump offset should be a multiple of 1048576 bytes.")
    assert rc == 22 and "no lease found" in err


def test_exit_status_mapping():
    assert cli.exit_status(-243) == 243
    assert cli.exit_status(-1000) == 255
    assert cli.exit_status(0) == 1


def test_cli_module_runs_as_a_program(files):
    ls, _ = files
    proc = subprocess.run(
        [sys.executable, "-m", "vmlease_agent.cli.main", "direct", "init", "-s", f"LS:0:{ls}:0"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert (proc.returncode, proc.stdout) == (0, "init done 0\n")
