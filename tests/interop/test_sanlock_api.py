"""vmlease-agent --sanlock-api against the real sanlock 3.8.5 daemon, with unchanged clients.

The comparison tests run the same requests (the ``sanlock client`` CLI with SANLOCK_RUN_DIR
pointing at each daemon, and python-sanlock in child processes) against a real sanlock daemon
and against vmlease-agent, each with lease files of its own, and assert the same replies, result
codes and CLI lines once pids, paths, timestamps and the daemon's name are normalised.

The safety tests put both in one lockspace (sanlock at host_id 1, the agent at host_id 2, each
joined through its own sanlock socket): a lease taken through the sanlock API is refused to the
other host, and freed when its registered client dies or closes its connection, not before;
and an agent restart keeps it.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from sanlockd import SanlockClient, SanlockDaemon, SanlockError, sanlock_skip_reason
from vmlease_agent.sim.node import SimNode
from waiting import wait_for

pytestmark = pytest.mark.interop

N = 1  # io_timeout: keeps joins and liveness quick
LS = "LS"


@dataclass
class Side:
    """One daemon speaking sanlock's protocol: the real one, or vmlease-agent --sanlock-api."""

    kind: str
    work: str  # its lease files
    run_dir: str  # its SANLOCK_RUN_DIR
    stop: Callable[[], None]
    proc: subprocess.Popen  # the daemon process
    node: SimNode | None = None

    @property
    def ls(self) -> str:
        return os.path.join(self.work, "ls")

    def res(self, name: str = "res") -> str:
        return os.path.join(self.work, name)

    def cli(self, *args: str) -> str:
        """``sanlock client ARGS``: its output and exit status, as people read them."""
        env = {**os.environ, "SANLOCK_RUN_DIR": self.run_dir}
        env.pop("LD_PRELOAD", None)
        p = subprocess.run(
            ["sanlock", "client", *args], env=env, capture_output=True, text=True, timeout=90
        )
        return f"{p.stdout}rc={p.returncode}\n"

    def python(self, register: bool = False) -> SanlockClient:
        c = SanlockClient(self.run_dir)
        if register:
            c.call("register")
        return c

    def spec(self, host_id: int = 1) -> str:
        return f"{LS}:{host_id}:{self.ls}:0"

    def hosts_ready(self, host_id: int = 1) -> bool:
        return bool(re.search(rf"^h {host_id} gen .* LIVE$", self.cli("gets", "-h", "1"), re.M))


def init_files(work: str, ls: str = "ls") -> None:
    """A lockspace and two resources, initialised by sanlock itself; ``new`` left blank."""
    for name in (ls, "res", "res2", "new"):
        with open(os.path.join(work, name), "wb") as f:
            f.truncate(1 << 20)
    for args in (
        ["-s", f"{LS}:0:{work}/{ls}:0", "-o", str(N)],
        ["-r", f"{LS}:RES:{work}/res:0"],
        ["-r", f"{LS}:RES2:{work}/res2:0"],
    ):
        subprocess.run(["sanlock", "direct", "init", *args], check=True, capture_output=True)


def start_sanlock(work: str) -> Side:
    daemon = SanlockDaemon()
    return Side("sanlock", work, daemon.run_dir, daemon.stop, daemon.proc)


def start_vmlease(work: str, name: str = "vmlease-node") -> Side:
    run_dir = os.path.join(work, f"{name}-sanlock")
    node = SimNode(name, work, io_timeout=N, fire_timeout=10, sanlock_run_dir=run_dir)
    node.start()
    sock = os.path.join(run_dir, "sanlock.sock")
    wait_for(lambda: os.path.exists(sock), 10, f"{sock} to appear")
    assert node.agent is not None
    return Side("vmlease", work, run_dir, node.stop, node.agent, node)


@pytest.fixture
def both() -> Iterator[dict[str, Side]]:
    """The real sanlock daemon and vmlease-agent, each with its own lease files."""
    reason = sanlock_skip_reason()
    if reason:
        pytest.skip(reason)
    top = tempfile.mkdtemp(prefix="vmlease-slapi-", dir="/var/tmp")
    sides: dict[str, Side] = {}
    try:
        for kind, start in (("sanlock", start_sanlock), ("vmlease", start_vmlease)):
            work = os.path.join(top, kind)
            os.makedirs(work)
            init_files(work)
            sides[kind] = start(work)
        yield sides
    finally:
        for side in sides.values():
            side.stop()
        shutil.rmtree(top, ignore_errors=True)


def normalise(text: str, side: Side, pids: dict[int, str]) -> str:
    text = text.replace(side.work, "WORK")
    for pid, name in pids.items():
        text = re.sub(rf"\b{pid}\b", name, text)
    text = re.sub(r"^daemon .*$", "daemon NAME", text, flags=re.M)
    text = re.sub(r"timestamp \d+", "timestamp T", text)
    return _client_slots_sorted(text)


def _client_slots_sorted(text: str) -> str:
    """``status`` lists the daemon's clients ("p ...") in slot order, and sanlock gives a new
    connection the first free slot, which a CLI call that just ended may still hold until the
    daemon's main loop reaps it: the order of the holder and the status connection is a race
    in sanlock (seen in CI), the set of clients is not. Each run of client lines is compared
    sorted."""
    out: list[str] = []
    run: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("p "):
            run.append(line)
            continue
        out += [*sorted(run), line]
        run = []
    return "".join([*out, *sorted(run)])


def cli_transcript(side: Side) -> str:
    """The CLI session an admin would type, lease holder included (``client command``)."""
    out = []
    c = side.cli
    rq = f"{LS}:RES:{side.res()}:0"
    out += [c("request", "-r", f"{rq}:5", "-f", "2")]  # -28: the lockspace is not joined
    # what libvirt does for its automatic leases: the alignment, then format through the daemon
    new = side.res("new")
    out += [c("align", "-s", f"{LS}:0:{new}:0"), c("init", "-r", f"{LS}:NEW:{new}:0")]
    out += [c("read", "-r", f"{LS}:NEW:{new}:0")]
    out += [c("add_lockspace", "-o", str(N), "-s", side.spec())]
    out += [c("add_lockspace", "-o", str(N), "-s", side.spec())]  # -17
    out += [c("add_lockspace", "-o", str(N), "-s", side.spec(2))]  # -22: other host_id
    out += [c("inq_lockspace", "-s", side.spec()), c("inq_lockspace", "-s", side.spec(0))]
    out += [c("inq_lockspace", "-s", f"NOPE:1:{side.ls}:0")]
    wait_for(side.hosts_ready, 20 * N, f"{side.kind} to read its own host LIVE")
    out += [c("status"), c("host_status", "-s", LS), c("host_status"), c("gets", "-h", "1")]
    out += [c("host_status", "-s", "NOPE")]
    out += [c("read", "-r", f"{LS}:RES:{side.res()}:0")]  # lver 0, free
    out += [c("shutdown", "-w", "1")]  # -16: a lockspace is joined
    env = {**os.environ, "SANLOCK_RUN_DIR": side.run_dir}
    env.pop("LD_PRELOAD", None)
    holder = subprocess.Popen(
        [
            "sanlock",
            "client",
            "command",
            "-r",
            f"{LS}:RES:{side.res()}:0",
            "-c",
            "/bin/sleep",
            "60",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    pid = str(holder.pid)  # exec'd: the holder's pid is the registered one
    try:
        wait_for(
            lambda: re.search(r"^r LS:RES:.* p \d+$", c("status"), re.M),  # held, not ADD
            10,
            f"{side.kind}: the command's lease",
        )
        out += [c("status"), c("inquire", "-p", pid), c("read", "-r", rq)]
        # requests refused on a lease held here (lver 1); one that succeeds reaches a holder
        # on this node with vmlease, never with sanlock (README), so it is not compared here
        out += [c("request", "-r", f"{rq}:1", "-f", "2")]  # -272: not newer than lver 1
        out += [c("request", "-r", rq, "-f", "1")]  # -272: no lver is version 0
        out += [c("request", "-r", f"{LS}:RES2:{side.res('res2')}:0:5", "-f", "1")]  # free: 0
        out += [c("request", "-r", f"NOPE:RES:{side.res()}:0:5", "-f", "1")]  # -28
        out += [c("status")]  # the holder is still there
        out += [c("release", "-r", f"{LS}:RES", "-p", pid)]
        out += [c("release", "-r", f"{LS}:RES", "-p", pid)]  # -1: not held
        out += [c("inquire", "-p", pid)]  # "(null)"
        out += [c("acquire", "-r", f"{LS}:RES:{side.res()}:0", "-p", pid)]
        out += [c("acquire", "-r", f"{LS}:RES:{side.res()}:0", "-p", pid)]  # -17
        out += [c("acquire", "-r", f"{LS}:RES2:{side.res()}:0", "-p", pid)]  # -227: not RES2
        out += [c("acquire", "-r", f"NOPE:RES:{side.res()}:0", "-p", pid)]  # -28
        out += [c("acquire", "-r", f"{LS}:RES2:{side.res('res2')}:0:SH", "-p", pid)]
        out += [c("inquire", "-p", pid), c("status")]
    finally:
        holder.kill()
        holder.wait()
    wait_for(lambda: "r LS:" not in c("status"), 10, f"{side.kind}: leases gone with the holder")
    out += [c("status"), c("inquire", "-p", pid)]  # -3: no such registered pid
    out += [c("rem_lockspace", "-s", f"NOPE:1:{side.ls}:0")]  # -2
    out += [c("rem_lockspace", "-s", side.spec()), c("status")]
    out += [c("shutdown", "-w", "1")]  # nothing joined: the daemon exits
    return normalise("".join(out), side, {holder.pid: "PID"})


def test_sanlock_cli_session_reads_the_same_as_against_the_sanlock_daemon(both):
    # where the agent differs on purpose: it formats no lease area over another lease
    side = both["vmlease"]
    new2 = f"{LS}:NEW2:{side.res('res2')}:0"
    assert side.cli("init", "-r", new2) == "init\ninit done -17\nrc=1\n"  # sanlock: 0
    ours, theirs = cli_transcript(both["vmlease"]), cli_transcript(both["sanlock"])
    assert ours.splitlines() == theirs.splitlines(), "\n".join(
        difflib.unified_diff(
            theirs.splitlines(), ours.splitlines(), "sanlock", "vmlease", lineterm=""
        )
    )
    assert "acquire done -17" in ours and "release done -1" in ours  # the session did run
    for side in both.values():  # `shutdown -w 1` with nothing joined stops the daemon
        assert side.proc.wait(timeout=10) == 0, side.kind


def python_transcript(side: Side) -> list:
    """python-sanlock calls (VDSM's way): an admin process, and a registered holder."""
    admin, holder = side.python(), side.python(register=True)
    hp = holder.call("pid")
    ls = {"lockspace": LS, "host_id": 1, "path": side.ls}
    res = {"lockspace": LS, "resource": "RES", "path": side.res()}
    res2 = {"lockspace": LS, "resource": "RES2", "path": side.res("res2")}
    out: list = []

    def call(c: SanlockClient, op: str, **kw) -> None:
        try:
            result = c.call(op, **kw)
            if op == "add_lockspace":
                result = None  # the child reports how long it took
        except SanlockError as e:
            result = {"errno": e.errno}
        out.append([op, normalise(repr(result), side, {hp: "HOLDER", admin.call("pid"): "ADMIN"})])

    try:
        call(admin, "add_lockspace", io_timeout=N, wait=False, **ls)
        call(admin, "inq_lockspace", wait=True, **ls)
        call(admin, "add_lockspace", io_timeout=N, **ls)  # EEXIST
        call(admin, "inq_lockspace", **{**ls, "lockspace": "NOPE"})
        call(admin, "get_lockspaces")
        call(holder, "killpath", path="/bin/echo", args=["arg one", "x"])
        call(holder, "acquire", **res)
        call(holder, "inquire")
        call(admin, "inquire", pid=hp)
        call(admin, "acquire", pid=hp, **res)  # EEXIST
        call(holder, "release", **res)
        call(holder, "release", **res)  # 1: not held
        call(admin, "acquire", pid=hp, version=99, **res)  # -240: the lver on disk is 1
        call(admin, "acquire", pid=hp, version=1, **res)  # for the holder's registration
        call(admin, "acquire", pid=hp, shared=True, **res2)
        call(admin, "inquire", pid=hp)
        call(holder, "inquire")
        for r in (res, res2):  # held exclusive: with its timestamp; shared: without
            owners = admin.call("read_resource_owners", **r)
            out.append([[o["host_id"], o["generation"], bool(o["timestamp"])] for o in owners])
            out.append([[o["io_timeout"], o["flags"]] for o in owners])
        call(admin, "read_resource_owners", **{**res, "resource": "RES2"})  # -227
        call(admin, "acquire", pid=admin.call("pid"), **res2)  # ESRCH: not registered
        call(admin, "release", pid=hp, **res2)
        call(admin, "inquire", pid=hp)
        wait_for(lambda: _live(admin, LS), 20 * N, f"{side.kind} to read its own host LIVE")
        hosts = admin.call("get_hosts", lockspace=LS)
        out.append(["get_hosts", [(h["host_id"], h["generation"], h["flags"]) for h in hosts]])
        holder.close()
        wait_for(lambda: _gone(admin, hp), 10, f"{side.kind}: the holder's leases released")
        call(admin, "rem_lockspace", **{**ls, "lockspace": "NOPE"})  # ENOENT
        call(admin, "rem_lockspace", **ls)
        call(admin, "inq_lockspace", **ls)
    finally:
        holder.close()
        admin.close()
    return out


def _live(admin: SanlockClient, lockspace: str) -> bool:
    try:
        return any(h["flags"] == 3 for h in admin.call("get_hosts", lockspace=lockspace))
    except SanlockError:  # EAGAIN until the first read of the other hosts
        return False


def _gone(admin: SanlockClient, pid: int) -> bool:
    try:
        admin.call("inquire", pid=pid)
    except SanlockError as e:
        return e.errno == 3  # ESRCH: the registration is gone, its leases with it
    return False


def test_python_sanlock_calls_get_the_same_replies_as_from_the_sanlock_daemon(both):
    ours, theirs = python_transcript(both["vmlease"]), python_transcript(both["sanlock"])
    assert ours == theirs, "\n".join(
        difflib.unified_diff(
            [repr(x) for x in theirs], [repr(x) for x in ours], "sanlock", "vmlease", lineterm=""
        )
    )
    assert ["acquire", "{'errno': 17}"] in ours and ["release", "{'errno': 1}"] in ours


def test_rem_lockspace_kills_the_holders_like_the_sanlock_daemon(both):
    """sanlock's rem_lockspace SIGKILLs every holder of a lease in it, then leaves it."""
    for side in both.values():
        admin, holder = side.python(), side.python(register=True)
        try:
            admin.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
            holder.call("acquire", lockspace=LS, resource="RES", path=side.res())
            with pytest.raises(SanlockError) as busy:
                admin.call("rem_lockspace", lockspace=LS, host_id=1, path=side.ls, unused=True)
            assert busy.value.errno == errno.EBUSY, side.kind
            assert holder.proc.poll() is None
            admin.call("rem_lockspace", lockspace=LS, host_id=1, path=side.ls)
            assert holder.proc.wait(timeout=10) == -signal.SIGKILL, side.kind
            assert admin.call("inq_lockspace", lockspace=LS, host_id=1, path=side.ls) is False
        finally:
            holder.close()
            admin.close()


def test_forced_shutdown_kills_the_holders_and_stops_like_the_sanlock_daemon(both):
    for side in both.values():
        admin, holder = side.python(), side.python(register=True)
        try:
            admin.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
            holder.call("acquire", lockspace=LS, resource="RES", path=side.res())
            assert side.cli("shutdown") == "shutdown force 0 wait 0\nshutdown done 0\nrc=0\n"
            time.sleep(1)
            assert side.proc.poll() is None and holder.proc.poll() is None, side.kind
            side.cli("shutdown", "-f", "1")
            assert holder.proc.wait(timeout=10) == -signal.SIGKILL, side.kind
            assert side.proc.wait(timeout=30) == 0, side.kind
        finally:
            holder.close()
            admin.close()


# ---- one lockspace, two hosts: the real sanlock daemon at host_id 1, the agent at 2 -------------


@dataclass
class Mixed:
    sanlock: Side
    agent: Side

    def holder(self, side: Side) -> SanlockClient:
        return side.python(register=True)


@pytest.fixture
def mixed() -> Iterator[Mixed]:
    reason = sanlock_skip_reason()
    if reason:
        pytest.skip(reason)
    work = tempfile.mkdtemp(prefix="vmlease-slapi-mixed-", dir="/var/tmp")
    init_files(work)
    sides: list[Side] = []
    admins: list[SanlockClient] = []
    try:
        sides += [start_sanlock(work), start_vmlease(work)]
        for host_id, side in enumerate(sides, start=1):
            admin = side.python()
            admins.append(admin)
            admin.call("add_lockspace", lockspace=LS, host_id=host_id, path=side.ls, io_timeout=N)
        time.sleep(2 * N + 0.5)  # each has read the other's delta lease renewed since
        yield Mixed(*sides)
    finally:
        for admin in admins:
            admin.close()
        for side in sides:
            side.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_a_host_id_in_use_is_refused_with_sanlocks_code_both_ways(mixed):
    """A second daemon of each kind asks for the host_id the other kind holds: -262
    (SANLK_HOSTID_BUSY) from both, not a generic error. Both watch the host_id for 8N + 60 s
    (a sanlock host advertises no W) before answering, so the two run side by side."""
    second = [start_vmlease(mixed.agent.work, "vmlease-node-2"), start_sanlock(mixed.agent.work)]

    def join(side: Side, host_id: int) -> int:
        admin = side.python()
        try:
            admin.call("add_lockspace", lockspace=LS, host_id=host_id, path=side.ls, io_timeout=N)
        except SanlockError as e:
            return e.errno
        finally:
            admin.close()
        return 0

    try:
        with ThreadPoolExecutor(2) as pool:  # sanlock holds host_id 1, the agent 2
            codes = list(pool.map(join, second, (1, 2)))
        assert codes == [-262, -262]
    finally:
        for side in second:
            side.stop()


def _acquire(c: SanlockClient, path: str, resource: str = "RES") -> int:
    try:
        c.call("acquire", lockspace=LS, resource=resource, path=path)
    except SanlockError as e:
        return e.errno
    return 0


def test_sanlock_api_lease_is_refused_to_the_other_host_both_ways_safety(mixed):
    ours, theirs = mixed.holder(mixed.agent), mixed.holder(mixed.sanlock)
    try:
        assert _acquire(ours, mixed.agent.res()) == 0
        assert _acquire(theirs, mixed.agent.res()) == -243  # held by host 2, which is alive
        assert _acquire(theirs, mixed.agent.res("res2"), "RES2") == 0
        assert _acquire(ours, mixed.agent.res("res2"), "RES2") == -243
        assert ours.call("inquire")[0]["resource"] == "RES"
    finally:
        ours.close()
        theirs.close()


def _taken_over(theirs: SanlockClient, path: str) -> bool:
    rc = _acquire(theirs, path)
    assert rc in (0, -243), rc
    return rc == 0


def test_sanlock_api_lease_dies_with_registered_client_safety(mixed):
    ours, theirs = mixed.holder(mixed.agent), mixed.holder(mixed.sanlock)
    try:
        assert _acquire(ours, mixed.agent.res()) == 0
        assert _acquire(theirs, mixed.agent.res()) == -243
        ours.proc.kill()  # the VM dies: its registered fd closes with it
        ours.proc.wait()
        wait_for(lambda: _taken_over(theirs, mixed.agent.res()), 10, "the lease to be free")
        assert mixed.agent.node is not None
        assert not mixed.agent.node.client.call("status")["leases"]
    finally:
        ours.close()
        theirs.close()


def test_sanlock_api_lease_released_when_registered_connection_closes(mixed):
    """As with sanlock: the registered connection, not the process, is the lifeline."""
    ours, theirs = mixed.holder(mixed.agent), mixed.holder(mixed.sanlock)
    try:
        assert _acquire(ours, mixed.agent.res()) == 0
        assert _acquire(theirs, mixed.agent.res()) == -243
        ours.call("unregister")
        wait_for(lambda: _taken_over(theirs, mixed.agent.res()), 10, "the lease to be free")
        assert ours.proc.poll() is None
    finally:
        ours.close()
        theirs.close()


def test_sanlock_api_leases_survive_an_agent_restart_safety(mixed):
    """The registered connection goes with the old agent; the holder is adopted by pid, keeps
    its lease (refused to the other host throughout) and loses it only when it exits."""
    node = mixed.agent.node
    assert node is not None and node.agent is not None
    ours, theirs = mixed.holder(mixed.agent), mixed.holder(mixed.sanlock)
    try:
        hp = ours.call("pid")
        assert _acquire(ours, mixed.agent.res()) == 0
        node.signal_agent(signal.SIGTERM)
        node.agent.wait(timeout=30)
        assert _acquire(theirs, mixed.agent.res()) == -243
        node.start()
        admin = mixed.agent.python()
        try:
            assert admin.call("inquire", pid=hp)[0]["resource"] == "RES"
        finally:
            admin.close()
        assert _acquire(theirs, mixed.agent.res()) == -243
        ours.close()
        wait_for(lambda: _taken_over(theirs, mixed.agent.res()), 10, "the lease to be free")
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("action, sig", [("force", signal.SIGKILL), ("graceful", signal.SIGTERM)])
def test_a_request_from_the_agent_reaches_a_holder_of_the_sanlock_daemon(mixed, action, sig):
    """python request() through the agent writes the request record and sets the owner's bit
    in the agent's delta lease; the sanlock daemon then applies the force mode to its holder
    (1 force: SIGKILL; 2 graceful without a killpath: SIGTERM), and the lease is free."""
    res = {"lockspace": LS, "resource": "RES", "path": mixed.agent.res()}
    theirs, ours = mixed.holder(mixed.sanlock), mixed.holder(mixed.agent)
    admin = mixed.agent.python()
    try:
        theirs.call("acquire", **res)
        assert _acquire(ours, res["path"]) == -243
        admin.call("request", action=action, **res)
        assert theirs.proc.wait(timeout=20 * N) == -sig
        wait_for(lambda: _acquire(ours, res["path"]) == 0, 10, "the lease to be free")
    finally:
        admin.close()
        theirs.close()
        ours.close()


@pytest.mark.parametrize("action, sig", [("force", signal.SIGKILL), ("graceful", signal.SIGTERM)])
def test_a_request_from_the_sanlock_daemon_reaches_a_holder_of_the_agent(mixed, action, sig):
    """The other way: the sanlock daemon's request sets our bit; the agent reads the request
    record of the lease its holder has and applies the force mode once (1: SIGKILL;
    2: SIGTERM, there being no killpath); the holder's exit frees the lease."""
    res = {"lockspace": LS, "resource": "RES", "path": mixed.agent.res()}
    ours, theirs = mixed.holder(mixed.agent), mixed.holder(mixed.sanlock)
    admin = mixed.sanlock.python()
    try:
        ours.call("acquire", **res)
        assert _acquire(theirs, res["path"]) == -243
        admin.call("request", action=action, **res)
        assert ours.proc.wait(timeout=20 * N) == -sig
        wait_for(lambda: _acquire(theirs, res["path"]) == 0, 10, "the lease to be free")
    finally:
        admin.close()
        theirs.close()
        ours.close()


def test_a_graceful_request_runs_the_killpath_as_given_and_keeps_the_lease(mixed):
    """With a killpath (set before acquire, as libvirt does), a graceful request runs it with
    its own arguments (no pid: no SANLK_KILLPATH_PID) instead of SIGTERM; giving the lease up
    is then the killpath's job, so the holder keeps it meanwhile."""
    out = os.path.join(mixed.agent.work, "killpath.out")
    script = os.path.join(mixed.agent.work, "killpath.sh")
    with open(script, "w") as f:
        f.write(f'#!/bin/sh\necho "$#:$*" > {out}\n')
    os.chmod(script, 0o755)
    res = {"lockspace": LS, "resource": "RES", "path": mixed.agent.res()}
    ours, theirs = mixed.holder(mixed.agent), mixed.holder(mixed.sanlock)
    admin = mixed.sanlock.python()
    try:
        ours.call("killpath", path=script, args=["arg one", "x"])
        ours.call("acquire", **res)
        admin.call("request", action="graceful", **res)
        written = wait_for(lambda: _read(out), 20 * N, "the killpath to run")
        assert written == "2:arg one x\n"
        assert ours.proc.poll() is None
        assert _acquire(theirs, res["path"]) == -243
    finally:
        admin.close()
        theirs.close()
        ours.close()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


#: registers, acquires RES through its registered fd, forks a child that inherits that fd and
#: sleeps, prints the child's pid and exits: only the child keeps the connection open
FORKING_HOLDER = """
import os, sys, time, sanlock
fd = sanlock.register()
sanlock.acquire(b"LS", b"RES", [(sys.argv[1], 0)], slkfd=fd)
child = os.fork()
if child == 0:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):  # the test reads the parent's output to its end
        os.dup2(null, std)
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
"""


@pytest.mark.parametrize("holder_side", ["agent", "sanlock"])
def test_a_lease_outlives_its_registered_pid_while_a_forked_child_keeps_the_fd_safety(
    mixed, holder_side
):
    """sanlock's lifeline is the registered connection: a process that acquires, forks a child
    (which may write the disk) and exits keeps its leases until the child's copy of the fd is
    closed too. The agent must not release at the pid's exit; the real daemon shows the same."""
    side = getattr(mixed, holder_side)
    other = mixed.sanlock if holder_side == "agent" else mixed.agent
    env = {**os.environ, "SANLOCK_RUN_DIR": side.run_dir}
    env.pop("LD_PRELOAD", None)
    parent = subprocess.run(
        [sys.executable, "-c", FORKING_HOLDER, side.res()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child = int(parent.stdout)
    theirs = mixed.holder(other)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the pid is gone; the child still holds the fd
            assert _acquire(theirs, side.res()) == -243
            time.sleep(0.3)
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: _taken_over(theirs, side.res()), 15, "the lease to be free")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        theirs.close()
