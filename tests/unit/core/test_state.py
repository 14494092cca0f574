"""Saved state: what a restarted agent adopts, and what it must refuse to trust."""

import json
import os

import pytest
from vmlease_agent.core import state
from vmlease_agent.core.holders import Client, HeldLease
from vmlease_agent.core.lockspace import LIVE, LockspaceConfig
from vmlease_agent.engine.ondisk import Dblock, Leader, Sizes
from vmlease_agent.engine.paxos import Resource, Token


class FakeLease:
    def __init__(self, record):
        self.record = record


class FakeLockspace:
    def __init__(self, cfg, record):
        self.cfg, self.state, self.lease = cfg, LIVE, FakeLease(record)


def record(ts=1234):
    return Leader(0x12212010, 0x30004, 0x10, 512, 0, 1, 3, 7, 0, "LS", "node-a", ts).sealed()


def held():
    res = Resource("LS", "R1", "/shared/r1", 0)
    leader = Leader(0x06152010, 0x60004, 0x10, 512, 2000, 2000, 3, 7, 5, "LS", "R1", 99).sealed()
    tok = Token(res, Sizes(512, 1 << 20), 3, 7, False, leader, Dblock(3, 3, 3, 7, 99, 5))
    return HeldLease(res, tok, False, since=1.5)


def test_round_trip(tmp_path):
    cfg = LockspaceConfig("LS", 3, "/shared/ls", 0, 2)
    c = Client("pid:42", 42, 777, "qemu", owner="vm1", kill_command=["/bin/true"])
    c.kill_appends_pid = False  # sanlock's killpath without SANLK_KILLPATH_PID
    c.restrict = 0x2  # fencing.NO_SIGKILL: kept across a restart, as its kill command
    c.leases["LS:R1"] = held()
    state.save(str(tmp_path), "node-a", {"LS": FakeLockspace(cfg, record())}, {c.key: c})
    saved = state.load(str(tmp_path), "node-a")
    assert saved.lockspaces[0].cfg == cfg
    assert saved.lockspaces[0].record.pack() == record().pack()
    sc = saved.clients[0]
    assert (sc.key, sc.pid, sc.start_time, sc.owner, sc.kill_command) == (
        "pid:42",
        42,
        777,
        "vm1",
        ["/bin/true"],
    )
    assert sc.kill_appends_pid is False and sc.restrict == 0x2
    h = sc.leases[0]
    assert h.token.leader.pack() == held().token.leader.pack()
    assert h.token.dblock.pack() == held().token.dblock.pack()


def test_state_of_another_node_this_boot_is_kept_aside_and_reported_safety(tmp_path):
    """Not adoptable but of this boot: its holders may still run. It is never overwritten by our
    next save (moved aside), and the problem names both node names."""
    cfg = LockspaceConfig("LS", 3, "/shared/ls", 0, 2)
    state.save(str(tmp_path), "node-a", {"LS": FakeLockspace(cfg, record())}, {})
    with open(tmp_path / state.STATE_FILE) as f:
        written = f.read()
    saved = state.load(str(tmp_path), "node-b")
    assert saved.lockspaces == []
    assert "written by node 'node-a', and this agent is 'node-b'" in saved.problem
    assert not (tmp_path / state.STATE_FILE).exists()
    (aside,) = tmp_path.glob("state.json.unusable-*")
    assert aside.read_text() == written and str(aside) in saved.problem


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"version": 99}, "format version 99, this agent reads 1"),
        (None, "it is not readable"),
    ],
)
def test_unusable_state_of_this_boot_is_reported_not_silently_dropped_safety(tmp_path, change, why):
    cfg = LockspaceConfig("LS", 3, "/shared/ls", 0, 2)
    state.save(str(tmp_path), "node-a", {"LS": FakeLockspace(cfg, record())}, {})
    path = tmp_path / state.STATE_FILE
    doc = json.loads(path.read_text())
    path.write_text("{not json" if change is None else json.dumps({**doc, **change}))
    saved = state.load(str(tmp_path), "node-a")
    assert saved.lockspaces == [] and why in saved.problem


def test_state_of_another_boot_is_ignored_quietly(tmp_path):
    cfg = LockspaceConfig("LS", 3, "/shared/ls", 0, 2)
    state.save(str(tmp_path), "node-a", {"LS": FakeLockspace(cfg, record())}, {})
    path = os.path.join(tmp_path, state.STATE_FILE)
    with open(path) as f:
        doc = json.load(f)
    doc["boot_id"] = "another-boot"
    with open(path, "w") as f:
        json.dump(doc, f)
    saved = state.load(str(tmp_path), "node-a")
    assert saved.lockspaces == [] and saved.problem == ""


def test_missing_state_is_empty(tmp_path):
    assert state.load(str(tmp_path / "nope"), "n").clients == []


def test_a_kill_command_saved_before_the_modules_moved_still_fences():
    old = ["/py", "-m", "vmlease_agent.libvirt_fence", "--uuid", "u"]
    assert state.current_kill_command(old) == [
        "/py",
        "-m",
        "vmlease_agent.virt.fence",
        "--uuid",
        "u",
    ]
    assert state.current_kill_command(None) is None
