"""Direct I/O: alignment, storage kinds, and the promise that a stalled I/O never blocks the caller
past its timeout. The stalls are real: the stallfs fixture (tests/stallfs.py) is a FUSE file
system that leaves requests unanswered, so the I/O is stuck inside the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from leasekit import S512, MiB, digest, make_file, make_lockspace
from vmlease_agent.engine import delta, errors, paxos
from vmlease_agent.engine.clock import FakeClock
from vmlease_agent.engine.directio import Storage

# How late a timed-out I/O may be reported (thread wake-up, GIL): generous for a loaded 2-core box.
SLACK = 0.75


def test_write_then_read_round_trip(lease_dir):
    path = make_file(lease_dir, "f", MiB)
    with Storage(path) as st:
        data = bytes(range(256)) * 8
        st.write(4096, data, 5)
        assert st.read(4096, 2048, 5) == data
        assert st.read(0, 512, 5) == bytes(512)
        assert st.size() == MiB
        assert st.sector_size == 512  # files are 512-byte storage, as for sanlock
        assert not st.is_block


def test_read_at_end_of_file_is_short(lease_dir):
    path = make_file(lease_dir, "f", 4096)
    with Storage(path) as st:
        assert len(st.read(0, 8192, 5)) == 4096
        assert st.read(4096, 512, 5) == b""


@pytest.mark.parametrize(("offset", "length"), [(100, 512), (512, 100), (0, 0), (1, 1)])
def test_unaligned_io_is_refused_and_writes_nothing(lease_dir, offset, length):
    path = make_file(lease_dir, "f", MiB)
    before = digest(path)
    with Storage(path) as st:
        with pytest.raises(errors.InvalidArgument, match="whole 512-byte sectors"):
            st.write(offset, b"x" * length, 5)
        with pytest.raises(errors.InvalidArgument):
            st.read(offset, length, 5)
    assert digest(path) == before


def test_missing_file_says_how_to_create_it(lease_dir):
    with pytest.raises(errors.StorageUnusable, match="truncate -s 1M"):
        Storage(os.path.join(lease_dir, "nope"))


def test_directory_and_fifo_are_not_lease_storage(lease_dir):
    with pytest.raises(errors.StorageUnusable, match="not a regular file or block device"):
        Storage(lease_dir)
    fifo = os.path.join(lease_dir, "fifo")
    os.mkfifo(fifo)
    with pytest.raises(errors.StorageUnusable, match="not a regular file or block device"):
        Storage(fifo)


def test_block_device_reports_its_logical_sector_size(loop_device_4k):
    with Storage(loop_device_4k) as st:
        assert st.is_block
        assert st.sector_size == 4096
        assert st.size() == 16 * MiB
        st.write(8192, b"\x5a" * 4096, 5)
        assert st.read(8192, 4096, 5) == b"\x5a" * 4096


def test_io_errors_are_reported_not_raised_raw(lease_dir):
    path = make_file(lease_dir, "f", MiB)
    st = Storage(path, writable=False)
    try:
        with pytest.raises(errors.IoFailed, match="Bad file descriptor"):
            st.write(0, bytes(512), 5)
    finally:
        st.close()


# ---- stalled storage -------------------------------------------------------------------------


def _timed(fn) -> tuple[float, BaseException | None]:
    t0 = time.monotonic()
    try:
        fn()
    except errors.LeaseError as e:
        return time.monotonic() - t0, e
    return time.monotonic() - t0, None


def test_stalled_read_times_out_within_io_timeout(stallfs):
    with Storage(stallfs.path) as st:
        st.write(0, b"a" * 512, 5)
        stallfs.stall()
        elapsed, err = _timed(lambda: st.read(0, 512, 1.0))
        stallfs.wait_held(1)  # the read really is stuck in the kernel, unanswered
        assert isinstance(err, errors.IoTimeout), err
        assert err.code == -202
        assert 1.0 <= elapsed < 1.0 + SLACK
        assert f"{stallfs.path}:0" in str(err) and "io_timeout of 1.0s" in str(err)
        stallfs.resume()
        assert st.read(0, 512, 5) == b"a" * 512


def test_stalled_write_times_out_within_io_timeout(stallfs):
    with Storage(stallfs.path) as st:
        stallfs.stall()
        elapsed, err = _timed(lambda: st.write(4096, b"b" * 512, 0.5))
        stallfs.wait_held(1)
        assert isinstance(err, errors.IoTimeout), err
        assert 0.5 <= elapsed < 0.5 + SLACK


def test_abandoned_io_never_delays_the_next_one(stallfs):
    """One request stays stuck in the kernel; the following I/O is served at once."""
    with Storage(stallfs.path) as st:
        st.write(0, b"c" * 512, 5)
        stallfs.stall_next()
        _elapsed, err = _timed(lambda: st.read(0, 512, 0.5))
        assert isinstance(err, errors.IoTimeout)
        stallfs.wait_held(1)
        t0 = time.monotonic()
        assert st.read(0, 512, 5) == b"c" * 512  # while the first is still held
        st.write(512, b"d" * 512, 5)
        assert time.monotonic() - t0 < SLACK
        assert stallfs.held == 1


def test_timeouts_do_not_accumulate_while_storage_stays_stalled(stallfs):
    """Each I/O gets its own timeout; earlier abandoned ones do not add to it."""
    with Storage(stallfs.path) as st:
        stallfs.stall()
        for _ in range(3):
            elapsed, err = _timed(lambda: st.read(0, 4096, 0.3))
            assert isinstance(err, errors.IoTimeout)
            assert elapsed < 0.3 + SLACK


def test_process_exits_despite_an_io_stuck_in_the_kernel(stallfs):
    """A process that gave up on a hung I/O (here: a server that stopped answering, as a dead
    NFS server) must still be able to exit: the I/O threads must not be joined at exit."""
    script = textwrap.dedent(
        f"""
        import sys
        from vmlease_agent.engine import errors
        from vmlease_agent.engine.directio import Storage
        st = Storage({stallfs.path!r})
        print("open", flush=True)
        sys.stdin.readline()
        try:
            st.read(0, 512, 0.5)
        except errors.IoTimeout:
            sys.exit(42)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "open"
        stallfs.freeze()
        t0 = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        stallfs.wait_queued()
        rc = proc.wait(timeout=5)
        assert rc == 42
        assert time.monotonic() - t0 < 0.5 + 2 * SLACK
    finally:
        stallfs.resume()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_cli_reports_a_stalled_read_within_io_timeout(stallfs):
    with Storage(stallfs.path) as st:
        delta.init_lockspace(st, delta.Location("LS", stallfs.path, 0), S512, 1)
    stallfs.stall()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmlease_agent.cli.main",
            "direct",
            "read_leader",
            "-s",
            f"LS:1:{stallfs.path}:0",
            "-o",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()
        elapsed = time.monotonic() - t0
    finally:
        stallfs.resume()  # the stuck read is uninterruptible (state D) until answered
        rc = proc.wait(timeout=10)
    assert "did not complete within the io_timeout of 1s" in line
    assert line.rstrip().endswith("[error -202]")
    assert rc == 202
    assert elapsed < 1 + 3.0  # interpreter start-up (loaded machine) + 1 s io_timeout


def test_renewal_on_stalled_storage_fails_within_io_timeout(stallfs):
    with Storage(stallfs.path) as st:
        loc = delta.Location("LS", stallfs.path, 0)
        delta.init_lockspace(st, loc, S512, 1)
        lease = delta.DeltaLease(st, loc, S512, 1, "h1", 1, clock=FakeClock())
        lease.acquire()
        stallfs.stall()
        elapsed, err = _timed(lease.renew)
        assert isinstance(err, errors.IoTimeout)
        assert elapsed < 1 + SLACK


def test_acquire_on_stalled_storage_fails_within_io_timeout(stallfs, lease_dir):
    ls = make_lockspace(lease_dir)
    clock = FakeClock()
    lease = ls.lease(1, clock)
    lease.acquire()
    with Storage(stallfs.path) as st:
        res = paxos.Resource("LS", "R", stallfs.path, 0)
        paxos.init_resource(st, res, S512)
        acq = paxos.Acquirer(st, res, 1, lease.generation, 1, ls.view(), clock=clock)
        token = acq.acquire()
        acq.release(token)
        stallfs.stall()
        elapsed, err = _timed(acq.acquire)
        assert isinstance(err, errors.IoTimeout)
        assert elapsed < 1 + SLACK
