"""vmlease-agent --sanlock-api against the real sanlock 3.8.5 daemon: the commands beyond what
libvirt uses (read_lockspace, examine, set_config, renewal, log_dump) and restrict's signals.

As in ``test_sanlock_api``, each test runs the same requests against both daemons, each with
lease files of its own, and compares what clients see once paths, pids and timestamps are
normalised. A request record is written straight to the lease (vmlease's engine, as another
host's daemon would) so that only ``examine`` can make the daemon read it.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import signal
import subprocess
import time

import pytest
import test_sanlock_api
from sanlockd import SanlockClient, SanlockError
from test_sanlock_api import LS, N, Side, normalise
from vmlease_agent.engine import paxos
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.paxos import Resource

pytestmark = pytest.mark.interop

both = test_sanlock_api.both  # the fixtures: both daemons, each with lease files of its own,
mixed = test_sanlock_api.mixed  # and both in one lockspace (sanlock host 1, the agent host 2)

FORCE, GRACEFUL = 1, 2
RESTRICT_SIGKILL, RESTRICT_SIGTERM = 0x2, 0x4


def call(c: SanlockClient, op: str, **kw) -> object:
    """A python-sanlock call's result, or its errno."""
    try:
        return c.call(op, **kw)
    except SanlockError as e:
        return {"errno": e.errno}


def join(side: Side) -> SanlockClient:
    admin = side.python()
    admin.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
    return admin


def holding(side: Side, resource: str, path: str, restrict: int = 0) -> SanlockClient:
    """A registered process holding ``resource`` (restricted first, as libvirt does)."""
    holder = side.python(register=True)
    if restrict:
        assert holder.call("restrict", flags=restrict) == 0
    holder.call("acquire", lockspace=LS, resource=resource, path=path)
    return holder


def write_request(path: str, resource: str, force_mode: int) -> None:
    """Another host's request for the lease's next version, on disk only: nobody is told."""
    with Storage(path) as st:
        paxos.write_request(st, Resource(LS, resource, path, 0), 0, force_mode, 10)


def died_of(holder: SanlockClient, timeout: float = 30 * N) -> int:
    return -holder.proc.wait(timeout=timeout)


# ---- read_lockspace ------------------------------------------------------------------------


def read_transcript(side: Side) -> tuple[str, list]:
    c = side.cli
    lines = [
        c("read", "-s", f"{LS}:1:{side.ls}:0"),
        c("read", "-s", f"{LS}:0:{side.ls}:0"),  # host 1's record
        c("read", "-s", f"{LS}:7:{side.ls}:0"),  # a record nobody ever wrote but init
        c("read", "-s", f"XX:1:{side.ls}:0"),  # -226: another lockspace's name
        c("read", "-s", f"{LS}:1:{side.res()}:0"),  # -223: a resource lease
        c("read", "-s", f"{LS}:1:{side.res('nofile')}:0"),  # -19
    ]
    admin = side.python()
    try:
        calls = [
            call(admin, "read_lockspace", path=side.ls),
            call(admin, "read_lockspace", path=side.res()),
            call(admin, "read_lockspace", path=side.res("nofile")),
        ]
        admin.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
        lines.append(c("read", "-s", f"{LS}:1:{side.ls}:0"))  # joined: the same
        calls.append(call(admin, "read_lockspace", path=side.ls))
    finally:
        admin.close()
    return normalise("".join(lines), side, {}), calls


def test_read_lockspace_reads_the_name_and_io_timeout_like_the_sanlock_daemon(both):
    ours, theirs = read_transcript(both["vmlease"]), read_transcript(both["sanlock"])
    assert ours == theirs
    text, calls = ours
    assert text.startswith(f"s {LS}:1:WORK/ls:0\nrc=0\n") and "read error -226" in text
    assert calls[0] == {"lockspace": LS, "iotimeout": N}
    assert calls[1:3] == [{"errno": -223}, {"errno": errno.ENODEV}]


# ---- examine and restrict's signals -----------------------------------------------------------


def examine_transcript(side: Side) -> list:
    """A request written on disk reaches nobody until examine: force SIGKILLs the holder,
    graceful SIGTERMs it; a restricted holder gets the other signal."""
    admin = join(side)
    out: list = []
    holders = []
    try:
        for resource, restrict, mode, how in (
            ("RES", 0, FORCE, ["-r", f"{LS}:RES:{side.res()}:0"]),
            ("RES2", 0, GRACEFUL, ["-s", side.spec()]),
            ("RES", RESTRICT_SIGKILL, FORCE, ["-r", f"{LS}:RES"]),
            ("RES2", RESTRICT_SIGTERM, GRACEFUL, ["-s", side.spec()]),
        ):
            path = side.res(resource.lower())
            holder = holding(side, resource, path, restrict)
            holders.append(holder)
            write_request(path, resource, mode)
            time.sleep(3 * N)
            alive = holder.proc.poll() is None
            text = side.cli("examine", *how)
            out.append([resource, restrict, mode, alive, text, signal.Signals(died_of(holder))])
            # the next holder takes the lease freed by this one's exit: a later version
            while call(admin, "inquire", pid=holder.proc.pid) != {"errno": errno.ESRCH}:
                time.sleep(0.2)
        out.append(side.cli("examine", "-s", f"NOPE:1:{side.ls}:0"))  # 0, as sanlock
    finally:
        for holder in holders:
            holder.close()
        admin.close()
    return out


def test_examine_makes_the_holder_see_a_request_like_the_sanlock_daemon(both):
    ours, theirs = examine_transcript(both["vmlease"]), examine_transcript(both["sanlock"])
    assert ours == theirs
    assert [row[3:] for row in ours[:4]] == [
        [True, "examine\nexamine done 0\nrc=0\n", signal.SIGKILL],
        [True, "examine\nexamine done 0\nrc=0\n", signal.SIGTERM],
        [True, "examine\nexamine done 0\nrc=0\n", signal.SIGTERM],  # SIGKILL restricted
        [True, "examine\nexamine done 0\nrc=0\n", signal.SIGKILL],  # SIGTERM restricted
    ]


def test_rem_lockspace_sends_sigterm_to_a_holder_restricted_from_sigkill(both):
    for side in both.values():
        admin = join(side)
        holder = holding(side, "RES", side.res(), RESTRICT_SIGKILL)
        try:
            admin.call("rem_lockspace", lockspace=LS, host_id=1, path=side.ls)
            assert died_of(holder, 10) == signal.SIGTERM, side.kind
        finally:
            holder.close()
            admin.close()


# ---- set_config ------------------------------------------------------------------------------


def set_config_transcript(side: Side) -> list:
    """`used` holds a removal after the holders are killed, until `unused`; meanwhile no new
    lease and no new user."""
    c = side.cli
    out: list = [c("set_config", "-s", LS, "-u", "1")]  # -2: not joined
    admin = join(side)
    holder = holding(side, "RES", side.res())
    other = side.python(register=True)
    env = {**os.environ, "SANLOCK_RUN_DIR": side.run_dir}
    env.pop("LD_PRELOAD", None)
    try:
        out += [c("set_config", "-s", LS), c("set_config", "-s", LS, "-u", "1")]  # -22, 0
        removal = subprocess.Popen(
            ["sanlock", "client", "rem_lockspace", "-s", side.spec()],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        out.append(signal.Signals(died_of(holder, 10)))
        time.sleep(3)
        out.append(["removal waits", removal.poll() is None])
        out.append(call(other, "acquire", lockspace=LS, resource="RES2", path=side.res("res2")))
        out += [c("set_config", "-s", LS, "-u", "1"), c("set_config", "-s", LS, "-O", "1")]
        out.append(c("set_config", "-s", LS, "-u", "0"))
        stdout, _ = removal.communicate(timeout=30)
        out.append(f"{stdout}rc={removal.returncode}\n")
        out += [c("inq_lockspace", "-s", side.spec()), c("set_config", "-s", LS, "-u", "0")]
    finally:
        holder.close()
        other.close()
        admin.close()
    return out


def test_set_config_used_holds_rem_lockspace_like_the_sanlock_daemon(both):
    ours, theirs = set_config_transcript(both["vmlease"]), set_config_transcript(both["sanlock"])
    assert ours == theirs
    assert ours[3:6] == [signal.SIGKILL, ["removal waits", True], {"errno": errno.ENOSPC}]
    assert ours[9] == "rem_lockspace\nrem_lockspace done 0\nrc=0\n"


# ---- renewal history and the log ---------------------------------------------------------------

RENEWAL = re.compile(
    r"^timestamp=(\d+) read_ms=(\d+) write_ms=(\d+) next_timeouts=0 next_errors=0$"
)


def renewal_transcript(side: Side) -> tuple[list[str], list[tuple[int, int, int]]]:
    """What `client renewal` prints: nothing and rc 1 for a lockspace not joined; once joined
    (sanlock keeps 180 renewals by default), the join with 0 ms, then each renewal, 2N apart."""
    c = side.cli
    fixed = [c("renewal", "-s", LS)]
    admin = join(side)
    try:
        time.sleep(5 * N + 0.5)
        text = c("renewal", "-s", LS)
        fixed.append(c("renewal", "-s", "NOPE"))
    finally:
        admin.close()
    *lines, rc = text.splitlines()
    fixed.append(rc)
    rows = []
    for line in lines:
        m = RENEWAL.match(line)
        assert m, (side.kind, line)
        rows.append((int(m[1]), int(m[2]), int(m[3])))
    return fixed, rows


def test_renewal_history_reads_like_the_sanlock_daemons(both):
    (ours, our_rows), (theirs, their_rows) = (
        renewal_transcript(both["vmlease"]),
        renewal_transcript(both["sanlock"]),
    )
    assert ours == theirs == ["rc=1\n", "rc=1\n", "rc=0"]
    for rows in (our_rows, their_rows):
        assert 3 <= len(rows) <= 6, rows  # the join, then a renewal every 2N
        assert rows[0][1:] == (0, 0)  # the join: no latencies
        stamps = [t for t, _r, _w in rows]
        assert stamps == sorted(stamps) and all(
            1 <= b - a <= 4 for a, b in itertools.pairwise(stamps)
        )


def test_log_dump_prints_the_daemons_recent_log(both):
    """Whatever each daemon logs in its own words: the lockspace just joined is in it."""
    for side in both.values():
        admin = join(side)
        admin.close()
        text = side.cli("log_dump")
        assert text.endswith("\nrc=1\n"), (side.kind, text[-200:])  # the CLI returns the size
        assert f"{LS}:1:" in text or f"lockspace {LS}" in text, (side.kind, text[-2000:])


# ---- host events -------------------------------------------------------------------------------

SETEV_CUR_GENERATION, SETEV_CLEAR_EVENT, SETEV_REPLACE_EVENT = 0x1, 0x4, 0x8


def event_transcript(side: Side) -> list:
    admin = side.python()
    out: list = []
    try:
        out.append(call(admin, "reg_event", lockspace="NOPE"))  # ENOENT
        out.append(call(admin, "set_event", lockspace="NOPE", host_id=1, event=1))  # ENOENT
        admin.call("add_lockspace", lockspace=LS, host_id=1, path=side.ls, io_timeout=N)
        for host_id, event, flags in (
            (0, 1, 0),  # EINVAL: no host_id
            (2001, 1, 0),  # EINVAL: beyond any lockspace
            (2, 5, SETEV_CUR_GENERATION),
            (3, 6, 0),  # EBUSY: event 5 is still being sent
            (3, 6, SETEV_REPLACE_EVENT),
            (3, 0, SETEV_CLEAR_EVENT),
            (3, 7, 0),  # no event any more: nothing to replace
        ):
            out.append(
                call(admin, "set_event", lockspace=LS, host_id=host_id, event=event, flags=flags)
            )
        out += [call(admin, "reg_event", lockspace=LS), call(admin, "end_event", lockspace=LS)]
    finally:
        admin.close()
    return out


def test_event_commands_answer_like_the_sanlock_daemon(both):
    ours, theirs = event_transcript(both["vmlease"]), event_transcript(both["sanlock"])
    assert ours == theirs
    assert ours[:2] == [{"errno": errno.ENOENT}] * 2 and {"errno": errno.EBUSY} in ours


def test_host_events_pass_between_the_agent_and_the_sanlock_daemon_both_ways(mixed):
    """set_event on one daemon, reg_event/get_event on the other: the event rides in the
    sender's delta lease (the receiver's bit set for 6N), both ways."""
    got = {}
    for sender, receiver, to_host, event, data in (
        (mixed.sanlock, mixed.agent, 2, 7, 9),
        (mixed.agent, mixed.sanlock, 1, 8, 10),
    ):
        listener, admin = receiver.python(), sender.python()
        try:
            listener.call("reg_event", lockspace=LS)
            admin.call("set_event", lockspace=LS, host_id=to_host, event=event, data=data,
                       flags=SETEV_CUR_GENERATION)  # fmt: skip
            got[receiver.kind] = listener.call("get_event", lockspace=LS, timeout=20 * N)
            listener.call("end_event", lockspace=LS)
        finally:
            listener.close()
            admin.close()
    for kind, (to_host, from_host, event, data) in {
        "vmlease": (2, 1, 7, 9),
        "sanlock": (1, 2, 8, 10),
    }.items():
        assert got[kind], kind
        e = got[kind][0]
        assert (e["host_id"], e["from_host_id"], e["event"], e["data"]) == (
            to_host,
            from_host,
            event,
            data,
        ), (kind, e)
        assert e["generation"] >= 1 and e["from_generation"] >= 1, (kind, e)


# ---- status -D ----------------------------------------------------------------------------


def status_details(side: Side, pid: int) -> dict[str, dict[str, str]]:
    """``sanlock client status -D`` as record kind ("daemon", "p", "s", "r") -> its key=value
    lines: the lockspace's, the lease's, and of the clients the one of ``pid``."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in side.cli("status", "-D").splitlines():
        if line.startswith("    ") and "=" in line:
            key, _, value = line.strip().partition("=")
            current[key] = value
        elif line and not line.startswith("rc="):
            kind = line.split()[0]
            current = {}
            if kind != "p" or line.split()[1] == str(pid):
                out[kind] = current
    return out


def test_status_details_name_sanlocks_keys_with_the_same_values(both):
    """``status -D``: every key the agent prints is one sanlock prints for that record, and the
    values the two can share agree (a person or script reading one reads the other)."""
    seen = {}
    for kind, side in both.items():
        admin = join(side)
        holder = holding(side, "RES", side.res())
        try:
            seen[kind] = status_details(side, holder.call("pid"))
        finally:
            holder.close()
            admin.close()
    theirs, ours = seen["sanlock"], seen["vmlease"]
    for record in ("daemon", "p", "s", "r"):
        extra = set(ours[record]) - set(theirs[record])
        assert not extra, f"{record}: keys sanlock does not print: {sorted(extra)}"
    for record, key in [
        ("daemon", "version_str"),
        ("daemon", "renewal_history_size"),
        ("s", "list"),
        ("s", "io_timeout"),
        ("s", "host_generation"),
        ("s", "space_dead"),
        ("s", "external_used"),
        ("r", "list"),
        ("r", "flags"),
        ("r", "lver"),
        ("p", "restricted"),
        ("p", "cmd_active"),
    ]:
        assert ours[record][key] == theirs[record][key], (record, key)
