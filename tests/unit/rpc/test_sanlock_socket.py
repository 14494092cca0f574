"""sanlock's wire protocol as the agent serves it, with raw sockets (no sanlock needed).

The byte layouts are checked against the captures in the protocol reference; the connection
rules (REGISTER has no reply, a restricted or malformed request is ignored without losing the
stream, a registered connection's close releases its pid's leases) against a stub agent.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import threading
from types import SimpleNamespace

import pytest
from vmlease_agent.core.agent import NotHeld
from vmlease_agent.engine import rindex
from vmlease_agent.rpc.sanlock import connection as sanlock_connection
from vmlease_agent.rpc.sanlock import errors as sanlock_errors
from vmlease_agent.rpc.sanlock import wire as w
from vmlease_agent.rpc.sanlock.inspection import LogRing
from vmlease_agent.rpc.sanlock.server import RESTRICT_ALL, SanlockApiServer


def test_struct_sizes_are_sanlocks_on_x86_64():
    assert w.HEADER.size == 32
    assert w.DISK.size == 1040
    assert w.LOCKSPACE.size == 1104
    assert w.RESOURCE.size == 128
    assert w.OPTIONS.size == 56
    assert w.HOST.size == 32
    assert w.STATE.size == 80
    assert w.RINDEX.size == 1104
    assert w.RENTRY.size == 64


def test_add_lockspace_capture_decodes():
    """Reference §7.2: ADD_LOCKSPACE LS:1:/srv/sanlock1/ls.img:0, then the reply."""
    raw = bytes.fromhex("1020280401000000020000000000000070040000000000000000000000000000")
    h = w.Header.unpack(raw)
    assert (h.cmd, h.length, h.data, h.acceptable) == (w.Cmd.ADD_LOCKSPACE, 1136, 0, True)
    ls = w.Lockspace("LS", 1, "/srv/sanlock1/ls.img")
    packed = ls.pack()
    assert packed[:2] == b"LS" and packed[0x30:0x38] == (1).to_bytes(8, "little")
    assert packed[0x40:0x54] == b"/srv/sanlock1/ls.img"
    assert w.Lockspace.unpack(packed) == ls
    assert h.reply(-errno.EEXIST)[24:28] == bytes.fromhex("efffffff")


def test_names_filling_48_bytes_and_garbage_after_the_nul_are_read_as_sanlock_does():
    name = "N" * 48
    raw = bytearray(w.Lockspace(name, 1, "/p").pack())
    assert w.Lockspace.unpack(bytes(raw)).name == name
    raw[0:4] = b"LS\0x"  # libvirt does not zero its structs
    raw[60:64] = b"\xff\xff\xff\xff"  # nor the padding after flags
    assert w.Lockspace.unpack(bytes(raw)) == w.Lockspace("LS", 1, "/p")


def test_inquire_reply_layout_matches_the_capture():
    """Reference §7.4: length 32 + string + NUL, data2 = the number of leases."""
    h = w.Header(w.Cmd.INQUIRE, data2=w.SELF)
    body = b"LS:RES:/srv/sanlock1/res.img:0:1\0"
    assert h.reply(0, len(body), 1) == bytes.fromhex(
        "10202804 01000000 09000000 00000000 41000000 00000000 00000000 01000000".replace(" ", "")
    )


def test_a_status_record_is_80_bytes_then_its_text_then_its_tail():
    rec = w.state_record(w.STATE_CLIENT, "helper", "pid=-1", -1)
    assert rec[:12] == bytes.fromhex("02000000 00000000 ffffffff".replace(" ", ""))
    assert rec[24:30] == b"helper" and rec[72:76] == (7).to_bytes(4, "little")
    assert rec[80:] == b"pid=-1\0"


# ---- the server, over a stub agent ---------------------------------------------------------


class StubAgent:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.released = threading.Event()

    def snapshot(self):
        return SimpleNamespace(holders=(), lockspaces=(), node="n", lockspace=lambda name: None)

    def acquire(self, holder, resources, owner="", wait=True, lvers=None, lvb=False):
        self.calls.append(("acquire", holder, resources, owner, wait))
        return []

    def set_lifeline(self, pid, check):
        self.lifelines = {**getattr(self, "lifelines", {}), pid: check}

    def set_lvb(self, label, data):
        self.calls.append(("set_lvb", label, data))

    def get_lvb(self, label, size=0):
        if label != "LS:RES":
            raise NotHeld(pid="(any)", lease=label)
        return b"v".ljust(size or 512, b"\0")

    def release(self, holder, labels):
        self.calls.append(("release", holder, labels))
        self.released.set()
        if labels:
            raise NotHeld(pid=holder, lease=", ".join(labels))
        return []

    def set_kill_command(self, holder, command, append_pid=True):
        self.calls.append(("set_kill_command", holder, command, append_pid))

    def inquire(self, holder):
        self.calls.append(("inquire", holder))
        return []

    def set_restrictions(self, holder, restrict):
        self.calls.append(("set_restrictions", holder, restrict))

    def watch_host_events(self, watcher):
        self.watcher = watcher


@pytest.fixture
def server():
    agent = StubAgent()
    run_dir = tempfile.mkdtemp(prefix="vmlease-slapi-")
    srv = SanlockApiServer(run_dir, agent, lambda clean: None)  # type: ignore[arg-type]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.agent = agent
    yield srv
    srv.shutdown()
    srv.server_close()
    shutil.rmtree(run_dir)


def connect(srv) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(srv.path)
    return s


def result(s: socket.socket) -> w.Header:
    return w.Header.unpack(sanlock_connection.Connection(s).read(32))


def acquire_request(data2: int, flags: int = 0, num_disks: int = 1, count: int = 1) -> bytes:
    res = w.Resource("LS", "RES", flags=flags, disks=[w.Disk("/p")] * num_disks).pack()
    payload = res * count + bytes(w.OPTIONS.size)
    return (
        w.Header(w.Cmd.ACQUIRE, length=32 + len(payload), data=count, data2=data2).pack() + payload
    )


def test_socket_is_sanlock_sock_mode_0660(server):
    assert os.path.basename(server.path) == "sanlock.sock"
    assert os.stat(server.path).st_mode & 0o777 == 0o660


def test_register_gets_no_reply_then_acquire_acts_for_the_peer_pid(server):
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.REGISTER).pack())
        s.sendall(acquire_request(w.SELF))
        h = result(s)  # the first bytes back are the acquire's reply: nothing for REGISTER
        assert (h.cmd, h.data) == (w.Cmd.ACQUIRE, 0)
        assert server.agent.lifelines[os.getpid()]()  # the connection keeps the holder
    ((op, pid, resources, _owner, wait),) = server.agent.calls[:1]
    assert (op, pid, wait) == ("acquire", os.getpid(), True)
    assert resources[0][0].label == "LS:RES" and resources[0][1] is False
    assert not server.agent.lifelines[os.getpid()]()


def test_a_peer_is_open_until_the_last_copy_of_its_fd_closes_even_with_requests_pending():
    """What the holder's lifeline rests on (a forked child keeps the parent's connection)."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    copy = os.dup(peer.fileno())
    try:
        peer.sendall(b"unread request")
        peer.close()
        assert sanlock_connection._peer_open(ours)  # the copy still holds it
        os.close(copy)
        assert not sanlock_connection._peer_open(ours)
    finally:
        ours.close()
    assert not sanlock_connection._peer_open(ours)  # closed on our side


def test_registered_connection_closing_releases_all_the_pids_leases(server):
    s = connect(server)
    s.sendall(w.Header(w.Cmd.REGISTER).pack())
    s.sendall(w.Header(w.Cmd.INQUIRE, data2=w.SELF).pack())
    assert result(s).data == 0
    s.close()
    assert server.agent.released.wait(5)
    assert ("release", os.getpid(), None) in server.agent.calls


def test_acquire_for_oneself_needs_a_registered_connection(server):
    with connect(server) as s:
        s.sendall(acquire_request(w.SELF))
        assert result(s).data == -errno.EBUSY
    assert not server.agent.calls


def test_acquire_for_a_pid_nobody_registered_is_esrch(server):
    with connect(server) as s:
        s.sendall(acquire_request(1))
        assert result(s).data == -errno.ESRCH


def test_release_of_a_lease_not_held_is_minus_one_as_with_sanlock(server):
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.REGISTER).pack())
        res = w.Resource("LS", "RES").pack()
        s.sendall(w.Header(w.Cmd.RELEASE, length=160, data=1, data2=w.SELF).pack() + res)
        assert result(s).data == -1


def test_bad_requests_keep_the_stream_in_step(server):
    """Too many resources, a disk count out of range, several disks (one per lease in our
    engine): each refused with its code, and the next request is read correctly."""
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.REGISTER).pack())
        s.sendall(acquire_request(w.SELF, count=9))
        assert result(s).data == -errno.E2BIG
        s.sendall(acquire_request(w.SELF, num_disks=5))
        assert result(s).data == -errno.ERANGE
        s.sendall(acquire_request(w.SELF, num_disks=2))
        assert result(s).data == -errno.EOPNOTSUPP
        s.sendall(w.Header(w.Cmd.INQUIRE, data2=w.SELF).pack())
        h = result(s)
        assert (h.cmd, h.data, h.length) == (w.Cmd.INQUIRE, 0, 32)


def test_bad_magic_and_restricted_connections_get_no_reply_like_sanlock(server):
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.INQUIRE, magic=0xDEADBEEF).pack())
        s.sendall(w.Header(w.Cmd.VERSION).pack())
        h = result(s)  # only VERSION answers
        assert (h.cmd, h.data2) == (w.Cmd.VERSION, w.DAEMON_VERSION)
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.REGISTER).pack())
        s.sendall(w.Header(w.Cmd.RESTRICT, cmd_flags=RESTRICT_ALL).pack())
        assert result(s).data == 0
        s.sendall(w.Header(w.Cmd.INQUIRE, data2=w.SELF).pack())
        s.settimeout(0.5)
        with pytest.raises(sanlock_errors.Disconnected):
            result(s)  # a timeout, as with sanlock: the client would block


def rindex_request(cmd: w.Cmd, entry: w.Rentry | None, flags: int = 0, data2: int = 0) -> bytes:
    ri = w.RINDEX.pack(0, 0, 0, b"LS", b"/p", 0, 0, 0)
    tail = entry.pack() if entry else b""
    # libsanlock's LOOKUP header counts a sanlk_resource (128) where it sends a rentry (64)
    extra = w.RESOURCE.size if cmd == w.Cmd.LOOKUP_RINDEX else len(tail)
    h = w.Header(cmd, cmd_flags=flags, length=32 + len(ri) + extra, data2=data2)
    return h.pack() + ri + tail


def test_rindex_entry_commands_read_two_structs_and_always_answer_an_entry(server):
    """As sanlock's rindex_op: the fixed structs are read whatever ``length`` says, the reply
    is a header (length 96) and a sanlk_rentry, even with an error."""
    server.agent.rindex_lookup = lambda place, e, joined: rindex.Entry("found", 3 << 20)

    def create(place, name, num_hosts):
        server.agent.calls.append(("create", place, name, num_hosts))
        return 4 << 20

    server.agent.rindex_create = create
    with connect(server) as s:
        s.sendall(rindex_request(w.Cmd.LOOKUP_RINDEX, w.Rentry("found")))
        h = result(s)
        assert (h.cmd, h.data, h.length) == (w.Cmd.LOOKUP_RINDEX, 0, 96)
        assert w.Rentry.unpack(s.recv(64)) == w.Rentry("found", 3 << 20)
    with connect(server) as s:  # the next request on the stream is read in step
        s.sendall(rindex_request(w.Cmd.CREATE_RESOURCE, w.Rentry("new"), data2=7))
        s.sendall(rindex_request(w.Cmd.DELETE_RESOURCE, w.Rentry("new")))
        assert result(s).data == 0
        assert w.Rentry.unpack(s.recv(64)) == w.Rentry("", 4 << 20)  # sanlock names no name
        h = result(s)  # the stub has no rindex_delete: the daemon's general error, not a hang
        assert (h.cmd, h.data, h.length) == (w.Cmd.DELETE_RESOURCE, -201, 96)
        assert w.Rentry.unpack(s.recv(64)) == w.Rentry()
    assert server.agent.calls[-1][2:] == ("new", 7)


def test_a_lockspace_is_not_removed_while_an_index_command_holds_its_rindex_lease(server):
    """As sanlock's rem_lockspace: -EBUSY, and nothing is killed or left."""
    snap = SimpleNamespace(path="/p", offset=0, host_id=1, state="live")
    server.agent.snapshot = lambda: SimpleNamespace(holders=(), lockspace=lambda name: snap)
    server.agent.rindex_busy = lambda name: True
    with connect(server) as s:
        payload = w.Lockspace("LS", 1, "/p").pack()
        s.sendall(w.Header(w.Cmd.REM_LOCKSPACE, length=32 + len(payload)).pack() + payload)
        assert result(s).data == -errno.EBUSY
    assert server.agent.calls == []


def test_killpath_sets_the_registered_pids_kill_command_with_the_pid_only_if_asked(server):
    raw = w.KILLPATH.pack(b"/usr/libexec/libvirt_sanlock_helper", rb"qemu:///system u\ 1 pause")
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.KILLPATH, length=288, data2=w.SELF).pack() + raw)
        assert result(s).data == -errno.EBUSY  # not registered
        s.sendall(w.Header(w.Cmd.REGISTER).pack())
        for flags in (0, w.KILLPATH_PID):
            header = w.Header(w.Cmd.KILLPATH, flags, length=288, data2=w.SELF)
            s.sendall(header.pack() + raw)
            assert result(s).data == 0
    argv = ["/usr/libexec/libvirt_sanlock_helper", "qemu:///system", "u 1", "pause"]
    # (the closed registered connection may already have released the pid's leases: a race
    # with this check that the killpath calls need not care about)
    assert [c for c in server.agent.calls if c[0] == "set_kill_command"] == [
        ("set_kill_command", os.getpid(), argv, False),
        ("set_kill_command", os.getpid(), argv, True),
    ]


def test_lvb_requests_are_framed_as_sanlocks(server):
    """SET_LVB: the LVB is what ``length`` leaves after the resource, more than 4096 bytes
    refused and skipped; GET_LVB: the reply's ``length`` carries the LVB (libsanlock reads
    ``length - 32`` bytes), and an error reply has none."""
    res = w.Resource("LS", "RES").pack()
    with connect(server) as s:
        big = bytes(4097)
        s.sendall(w.Header(w.Cmd.SET_LVB, length=160 + len(big)).pack() + res + big)
        assert result(s).data == -errno.E2BIG
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.SET_LVB, length=165).pack() + res + b"hello")
        assert result(s).data == 0
    assert server.agent.calls[-1] == ("set_lvb", "LS:RES", b"hello")
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.GET_LVB, length=160).pack() + res)
        h = result(s)
        assert (h.data, h.length) == (0, 32 + 512)
        assert sanlock_connection.Connection(s).read(512).startswith(b"v\0")
    with connect(server) as s:
        other = w.Resource("LS", "OTHER").pack()
        s.sendall(w.Header(w.Cmd.GET_LVB, length=160, data2=16).pack() + other)
        h = result(s)
        assert (h.data, h.length) == (-errno.ENOENT, 32)


def test_restrict_tells_the_agent_which_signals_the_pid_must_not_get(server):
    with connect(server) as s:
        s.sendall(w.Header(w.Cmd.REGISTER).pack())
        for flags in (0x2, 0x4 | 0x1):  # SIGKILL; SIGTERM with ALL (then no more replies)
            s.sendall(w.Header(w.Cmd.RESTRICT, cmd_flags=flags, data2=w.SELF).pack())
            assert result(s).data == 0
    restrictions = [c for c in server.agent.calls if c[0] == "set_restrictions"]
    assert restrictions == [
        ("set_restrictions", os.getpid(), 0x2),  # fencing.NO_SIGKILL
        ("set_restrictions", os.getpid(), 0x4),  # fencing.NO_SIGTERM
    ]


def test_log_dump_sends_the_recent_lines_with_their_size_in_data_and_keeps_to_its_limit():
    import logging

    ring = LogRing(limit=64)
    ring.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test-log-ring")
    logger.addHandler(ring)
    try:
        for i in range(20):
            logger.warning("line %02d", i)
    finally:
        logger.removeHandler(ring)
    text = ring.dump()
    assert len(text) <= 64 and text.endswith(b"line 19\n") and b"line 00" not in text


def test_an_event_callback_is_sanlocks_80_byte_event_cb():
    """A header (version 1, cmd 1 = SM_CB_GET_EVENT, length 80), sanlk_host_event, then the
    sender's host_id and generation: what sanlock_get_event reads in one recv."""
    cb = w.event_callback((2, 5, 7, 9), 1, 3)
    h = w.Header.unpack(cb[:32])
    assert (len(cb), h.magic, h.version, h.cmd, h.length) == (80, w.MAGIC, 1, 1, 80)
    assert [int.from_bytes(cb[i : i + 8], "little") for i in range(32, 80, 8)] == [2, 5, 7, 9, 1, 3]
