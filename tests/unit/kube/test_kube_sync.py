"""The sync loop (``KubeSync.pass_once``) against the fake API server and a fake agent: the
protocol with the operator, status writes and their rate, leaving, and losing the API server.
One test at the end runs a real agent on a real lockspace file."""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import replace
from typing import Any

import pytest
from fake_kube_api import FakeKubeApi
from kube_builders import disklease, hostid, lease, lockspace, node
from vmlease_agent.core.agent import Agent, AgentConfig, Busy
from vmlease_agent.core.lockspace import LockspaceConfig
from vmlease_agent.core.snapshot import (
    AgentSnapshot,
    HolderSnapshot,
    LeaseSnapshot,
    LockspaceSnapshot,
    WatchdogSnapshot,
)
from vmlease_agent.core.watchdog import open_watchdog
from vmlease_agent.engine import delta
from vmlease_agent.engine.directio import Storage
from vmlease_agent.kube import formatting as kube_format
from vmlease_agent.kube.sync import KubeConfig, KubeSync


class FakeAgent:
    """What the sync calls on the agent; joins succeed at once unless told otherwise."""

    def __init__(self) -> None:
        self.lockspaces: dict[str, dict[str, Any]] = {}
        self.leases: list[dict[str, Any]] = []
        self.hosts: dict[str, list[dict[str, Any]]] = {}
        self.joined: list[LockspaceConfig] = []
        self.fenced: list[str] = []
        self.calls = 0

    def snapshot(self) -> AgentSnapshot:
        """Its lockspaces and leases (kept in their wire form, which tests edit) as the real
        agent's snapshot."""
        self.calls += 1
        leases = tuple(LeaseSnapshot.from_wire(x) for x in self.leases)
        holders = {x.holder: HolderSnapshot(x.holder, None, False, ()) for x in leases}
        return AgentSnapshot(
            node="n1",
            taken_at=0.0,
            loop_running=True,
            last_tick=0.0,
            watchdog=WatchdogSnapshot(10, 10, True, 0.1, "", ""),
            lockspaces=tuple(LockspaceSnapshot.from_wire(v) for v in self.lockspaces.values()),
            holders=tuple(
                replace(h, leases=tuple(x for x in leases if x.holder == who))
                for who, h in holders.items()
            ),
            events=(),
        )

    def add_lockspace(self, cfg: LockspaceConfig, wait: bool = True) -> dict[str, Any]:
        self.joined.append(cfg)
        self.lockspaces[cfg.name] = {
            "name": cfg.name,
            "host_id": cfg.host_id,
            "path": cfg.path,
            "offset": cfg.offset,
            "io_timeout": cfg.io_timeout,
            "generation": 1,
            "state": "live",
            "error": "",
            "last_renewal_ago": 0.5,
            "renewal_ms": 3.0,
            "deadline_in": 7.5,
        }
        return self.lockspaces[cfg.name]

    def rem_lockspace(self, name: str) -> None:
        if any(x["lockspace"] == name for x in self.leases):
            raise Busy(detail=f"lockspace {name} has leases")
        self.lockspaces.pop(name)

    def host_status(self, name: str) -> list[dict[str, Any]]:
        return self.hosts.get(name, [])

    def fence_self(self, why: str) -> None:
        self.fenced.append(why)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def api() -> FakeKubeApi:
    api = FakeKubeApi()
    api.put("nodes", node("n1", pool="a"))
    api.put("nodes", node("n2", pool="a"))
    return api


def make_sync(
    api: FakeKubeApi,
    tmp_path,
    agent=None,
    name: str = "n1",
    clock=None,
    fire_timeout: int = 10,
    shared: str = "shared",
) -> KubeSync:
    cfg = KubeConfig(
        node=name,
        shared_dir=str(tmp_path / shared),
        run_dir=str(tmp_path / f"run-{name}"),
        fire_timeout=fire_timeout,
        status_interval=30,
    )
    os.makedirs(cfg.run_dir, exist_ok=True)
    clock = clock or Clock()
    wall = lambda: 1767225600.0 + clock.t  # noqa: E731
    sync = KubeSync(agent or FakeAgent(), api, cfg, monotonic=clock, wall=wall)
    return sync


def run(sync: KubeSync, passes: int = 1) -> None:
    for _ in range(passes):
        sync.refresh()
        sync.pass_once()


def state(api: FakeKubeApi, name: str) -> str | None:
    return (api.obj("hostids", name).get("status") or {}).get("state")


# --- claim, format, join --------------------------------------------------------------------------


def test_claims_waits_for_the_format_then_joins_with_the_allocated_id(api, tmp_path):
    api.put("lockspaces", lockspace(selector={"pool": "a"}))
    sync = make_sync(api, tmp_path)
    run(sync)
    assert sync.agent.joined == []  # no HostId yet
    assert sync.readiness()[0] is False
    api.create("hostids", hostid("ls", "n1", 3))
    run(sync)
    assert state(api, "ls.3") == "Joining"
    assert sync.agent.joined == []  # claimed, but not formatted
    run(sync)
    ready, waiting = sync.readiness()
    assert not ready and "WaitingForFormat" in waiting[0]
    ls = api.obj("lockspaces", "ls")
    ls["status"] = lockspace(formatted=True)["status"]
    api.put("lockspaces", ls)
    run(sync, 2)
    (cfg,) = sync.agent.joined
    assert (cfg.name, cfg.host_id, cfg.io_timeout) == ("ls", 3, 1)
    assert cfg.path == str(tmp_path / "shared" / "ls.img")
    assert state(api, "ls.3") == "Live"
    status = api.obj("hostids", "ls.3")["status"]
    assert status["generation"] == 1 and status["renewalLatencyMs"] == 3
    assert status["observedBy"] == "n1" and status["lastRenewal"]
    assert sync.readiness() == (True, [])


def test_the_claim_is_guarded_by_the_resource_version(api, tmp_path):
    api.put("lockspaces", lockspace())
    api.create("hostids", hostid("ls", "n1", 1))
    sync = make_sync(api, tmp_path)
    sync.refresh()
    # the operator deletes/changes the object after our read: the claim must not land
    obj = api.obj("hostids", "ls.1")
    obj["metadata"]["labels"]["x"] = "y"
    api.put("hostids", obj)
    sync.pass_once()
    assert state(api, "ls.1") is None
    run(sync)  # re-read: now it claims
    assert state(api, "ls.1") == "Joining"


def test_only_the_designated_node_formats_and_an_existing_area_is_adopted(api, tmp_path):
    api.put("lockspaces", lockspace())
    api.create("hostids", hostid("ls", "n1", 1))
    api.create("hostids", hostid("ls", "n2", 2))
    one, two = make_sync(api, tmp_path, name="n1"), make_sync(api, tmp_path, name="n2")
    run(one), run(two)
    ls = api.obj("lockspaces", "ls")
    ls["status"] = lockspace(request=("n2", 2))["status"]
    api.put("lockspaces", ls)
    run(one)
    area = tmp_path / "shared" / "ls.img"
    assert not area.exists()
    run(two)
    with Storage(str(area)) as st:
        sizes, first = delta.read_sizes(st, delta.Location("ls", str(area), 0), 1)
    assert first.space_name == "ls" and sizes.align_size == 1024 * 1024
    status = api.obj("lockspaces", "ls")["status"]
    assert status["formatted"] is True and status["formattedBy"] == "n2"
    assert "formatRequest" not in status
    run(one, 2), run(two, 2)
    assert [c.host_id for c in one.agent.joined] == [1]
    assert [c.host_id for c in two.agent.joined] == [2]
    # a lost "formatted" write: the next round finds the area formatted and does not write it
    geometry = kube_format.Geometry("ls", str(area), 0, 512, 1024 * 1024, 1)
    assert kube_format.format_or_adopt(geometry) == kube_format.FOUND


def test_a_node_whose_shared_directory_is_not_shared_never_joins_safety(api, tmp_path):
    """The formatting node writes a random storage id beside the area and publishes it; a node
    whose "shared" directory is a local one (mount missing) finds none, or another, and refuses
    to join, saying why, until its directory holds the same id."""
    api.put("lockspaces", lockspace())
    api.create("hostids", hostid("ls", "n1", 1))
    api.create("hostids", hostid("ls", "n2", 2))
    clock = Clock()
    one = make_sync(api, tmp_path, name="n1", clock=clock)
    two = make_sync(api, tmp_path, name="n2", clock=clock, shared="local-n2")
    run(one), run(two)
    ls = api.obj("lockspaces", "ls")
    ls["status"] = lockspace(request=("n1", 1))["status"]
    api.put("lockspaces", ls)
    run(one)
    storage_id = api.obj("lockspaces", "ls")["status"]["storageId"]
    marker = tmp_path / "shared" / "ls.img.ls.vmlease-id"
    assert marker.read_text() == f"{storage_id}\n" and len(storage_id) == 32
    run(one, 2), run(two, 2)
    assert [c.host_id for c in one.agent.joined] == [1]
    assert two.agent.joined == []  # no storage id in its directory
    joined = next(
        c for c in api.obj("hostids", "ls.2")["status"]["conditions"] if c["type"] == "Joined"
    )
    assert joined["reason"] == "StorageNotShared"
    assert "finds no storage id" in joined["message"] and "formatted with" in joined["message"]
    assert "by node n1" in joined["message"] and str(tmp_path / "local-n2") in joined["message"]
    # another id (a local copy formatted elsewhere): refused too
    (tmp_path / "local-n2").mkdir(exist_ok=True)
    other = tmp_path / "local-n2" / "ls.img.ls.vmlease-id"
    other.write_text("f" * 32 + "\n")
    clock.t += 120
    run(two)
    assert two.agent.joined == []
    # the mount fixed (the same file seen): joins at the next attempt
    other.write_text(marker.read_text())
    clock.t += 120
    run(two)
    assert [c.host_id for c in two.agent.joined] == [2]


def test_the_storage_id_is_written_once_and_adopted(tmp_path):
    area = str(tmp_path / "ls.img")
    first = kube_format.ensure_storage_id(area, "ls")
    assert first is not None and kube_format.ensure_storage_id(area, "ls") == first
    assert kube_format.read_storage_id(area, "other") is None  # one id per lockspace
    assert kube_format.ensure_storage_id("/dev/sdb", "ls") is None  # no file beside a device
    stray = tmp_path / "ls.img.x.vmlease-id"
    stray.write_text("not an id")
    with pytest.raises(OSError, match="holds no storage id"):
        kube_format.ensure_storage_id(area, "x")
    assert stray.read_text() == "not an id"  # never overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ls.img.ls.vmlease-id", "ls.img.x.vmlease-id"
    ]  # fmt: skip


def test_a_node_that_refuses_the_lockspace_never_claims_so_is_never_asked_to_format(api, tmp_path):
    api.put("lockspaces", lockspace(fire_timeout=10))
    api.create("hostids", hostid("ls", "n1", 1))
    sync = make_sync(api, tmp_path, fire_timeout=60)
    run(sync, 3)
    status = api.obj("hostids", "ls.1").get("status") or {}
    assert "state" not in status  # unclaimed: the operator will not pick this node
    (joined,) = status["conditions"]
    assert joined["reason"] == "Refused" and "--watchdog-fire-timeout 10" in joined["message"]
    assert sync.agent.joined == []


def test_formatting_refuses_live_leases_and_foreign_data(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(b"QFI\xfb" + bytes(1024 * 1024))
    geometry = kube_format.Geometry("ls", str(path), 0, 512, 1024 * 1024, 1)
    with pytest.raises(Exception, match="not a sanlock lease"):
        kube_format.format_or_adopt(geometry)
    other = kube_format.Geometry("other", str(tmp_path / "o.img"), 0, 512, 1024 * 1024, 1)
    assert kube_format.format_or_adopt(other) == kube_format.FORMATTED
    renamed = kube_format.Geometry("ls", other.path, 0, 512, 1024 * 1024, 1)
    with pytest.raises(Exception, match="holds lockspace other"):
        kube_format.format_or_adopt(renamed)


def test_a_failed_join_is_retried_with_backoff(api, tmp_path):
    class Failing(FakeAgent):
        def add_lockspace(self, cfg, wait=True):
            super().add_lockspace(cfg)
            self.lockspaces[cfg.name].update(state="stopped", error="no such file")
            return self.lockspaces[cfg.name]

    api.put("lockspaces", lockspace(formatted=True))
    api.create("hostids", hostid("ls", "n1", 1, "Joining"))
    clock = Clock()
    sync = make_sync(api, tmp_path, agent=Failing(), clock=clock)
    run(sync, 3)
    assert len(sync.agent.joined) == 1
    clock.t += 5
    run(sync)
    assert len(sync.agent.joined) == 2
    clock.t += 5  # the delay doubled to 10 s
    run(sync)
    assert len(sync.agent.joined) == 2
    joined = next(
        c for c in api.obj("hostids", "ls.1")["status"]["conditions"] if c["type"] == "Joined"
    )
    assert joined["reason"] == "JoinFailed" and "no such file" in joined["message"]


# --- status rate ----------------------------------------------------------------------------------


def test_status_is_refreshed_every_interval_not_per_renewal(api, tmp_path):
    api.put("lockspaces", lockspace(formatted=True))
    api.create("hostids", hostid("ls", "n1", 1, "Joining"))
    clock = Clock()
    sync = make_sync(api, tmp_path, clock=clock)
    run(sync, 2)
    assert state(api, "ls.1") == "Live"
    writes = api.status_writes("hostids", "ls.1")
    for _ in range(29):
        clock.t += 1
        run(sync)
    assert api.status_writes("hostids", "ls.1") == writes
    clock.t += 1
    run(sync)
    assert api.status_writes("hostids", "ls.1") == writes + 1
    sync.agent.lockspaces["ls"]["state"] = "failed"
    sync.agent.lockspaces["ls"]["error"] = "renewal failed for 8s"
    clock.t += 1
    run(sync)
    assert state(api, "ls.1") == "Failing"  # a change: at once


# --- leaving --------------------------------------------------------------------------------------


def test_leaves_when_no_longer_selected_but_only_without_leases(api, tmp_path):
    api.put("lockspaces", lockspace(selector={"pool": "a"}, formatted=True))
    api.create("hostids", hostid("ls", "n1", 1, "Joining"))
    sync = make_sync(api, tmp_path)
    run(sync, 2)
    sync.agent.leases = [lease("ls", "res1", "/shared/res1")]
    api.put("nodes", node("n1", pool="b"))
    run(sync)
    assert "ls" in sync.agent.lockspaces
    joined = next(
        c for c in api.obj("hostids", "ls.1")["status"]["conditions"] if c["type"] == "Joined"
    )
    assert joined["reason"] == "LeaveBlocked" and "pid:4242" in joined["message"]
    sync.agent.leases = []
    run(sync)
    assert "ls" not in sync.agent.lockspaces
    assert state(api, "ls.1") == "Free"
    assert sync.membership.managed == set()
    run(sync)
    assert sync.agent.joined[-1].name == "ls" and len(sync.agent.joined) == 1  # not rejoined


def test_a_stopping_agent_writes_the_host_ids_it_released_free(api, tmp_path):
    """helm uninstall or a drain: the agent left its idle lockspaces as it stopped
    (``Agent.leave_idle``); no peer is left to report them (after an uninstall no agent runs),
    so the stopping one writes its own HostIds Free; the one still held stays Live."""
    for name in ("ls", "busy"):
        api.put("lockspaces", lockspace(name, f"{name}.img", {"pool": "a"}, formatted=True))
        api.create("hostids", hostid(name, "n1", 1, "Joining"))
    sync = make_sync(api, tmp_path)
    run(sync, 2)
    assert state(api, "ls.1") == state(api, "busy.1") == "Live"
    sync.agent.lockspaces.pop("ls")  # what leave_idle did
    sync.stop({"ls": 1})
    assert state(api, "ls.1") == "Free" and state(api, "busy.1") == "Live"
    joined = next(
        c for c in api.obj("hostids", "ls.1")["status"]["conditions"] if c["type"] == "Joined"
    )
    assert joined["reason"] == "AgentStopped" and "host_id 1 released" in joined["message"]
    assert sync.membership.managed == {"ls", "busy"}  # the next agent joins both again


def test_a_lockspace_deleted_while_the_agent_was_down_is_left(api, tmp_path):
    api.put("lockspaces", lockspace(formatted=True))
    api.create("hostids", hostid("ls", "n1", 1, "Joining"))
    agent = FakeAgent()
    run(make_sync(api, tmp_path, agent=agent), 2)
    api.delete("lockspaces", "ls")
    restarted = make_sync(api, tmp_path, agent=agent)  # the same run dir remembers "ls"
    run(restarted)
    assert agent.lockspaces == {}


def test_a_lockspace_joined_by_hand_is_not_left(api, tmp_path):
    agent = FakeAgent()
    agent.add_lockspace(LockspaceConfig("manual", 1, "/x", 0, 10))
    run(make_sync(api, tmp_path, agent=agent))
    assert "manual" in agent.lockspaces


# --- other hosts ----------------------------------------------------------------------------------


def test_the_reporter_marks_a_dead_peer(api, tmp_path):
    api.put("lockspaces", lockspace(formatted=True))
    api.create("hostids", hostid("ls", "n1", 1, "Joining"))
    api.put("hostids", hostid("ls", "n2", 2, "Live"))
    agent = FakeAgent()
    agent.hosts["ls"] = [
        {"host_id": 1, "state": "live", "name": "n1", "generation": 1, "renewed_ago": 0.2},
        {"host_id": 2, "state": "dead", "name": "n2", "generation": 4, "renewed_ago": 19.0},
    ]
    run(make_sync(api, tmp_path, agent=agent), 2)
    status = api.obj("hostids", "ls.2")["status"]
    assert status["state"] == "Dead" and status["observedBy"] == "n1" and status["generation"] == 4


# --- disk leases and the API server going away ----------------------------------------------------


def test_disk_lease_status_follows_the_lease_table(api, tmp_path):
    api.put("lockspaces", lockspace(formatted=True))
    api.put("diskleases", disklease("ls", "res1", "res1.lease"))
    sync = make_sync(api, tmp_path)
    sync.agent.leases = [lease("ls", "res1", str(tmp_path / "shared" / "res1.lease"))]
    run(sync)
    status = api.obj("diskleases", "ls.res1")["status"]
    assert status["phase"] == "Held" and status["holder"]["node"] == "n1"
    synced = next(c for c in status["conditions"] if c["type"] == "Synced")
    assert synced["status"] == "True"
    sync.agent.leases = []
    run(sync)
    assert api.obj("diskleases", "ls.res1")["status"]["phase"] == "Free"


def test_losing_the_api_server_never_touches_the_agent_and_writes_catch_up(api, tmp_path):
    api.put("lockspaces", lockspace(formatted=True))
    api.put("diskleases", disklease("ls", "res1", "res1.lease"))
    api.create("hostids", hostid("ls", "n1", 1, "Joining"))
    clock = Clock()
    sync = make_sync(api, tmp_path, clock=clock)
    run(sync, 2)
    api.down = True
    sync.agent.leases = [lease("ls", "res1", str(tmp_path / "shared" / "res1.lease"))]
    sync.agent.lockspaces["ls"]["state"] = "failed"
    for _ in range(5):
        sync.pass_once()  # no exception, no leave, no join
        clock.t += 1
    assert list(sync.agent.lockspaces) == ["ls"] and len(sync.agent.joined) == 1
    assert sync.api_errors >= 1
    api.down = False
    clock.t += 60  # past any backoff
    run(sync)
    assert state(api, "ls.1") == "Failing"
    assert api.obj("diskleases", "ls.res1")["status"]["holder"]["node"] == "n1"


def test_the_sync_thread_survives_a_failing_pass(api, tmp_path):
    class Broken(FakeAgent):
        def snapshot(self):
            super().snapshot()
            raise OSError(errno.EIO, "boom")

    sync = make_sync(api, tmp_path, agent=Broken())
    sync.cfg.poll_seconds = 0.01
    sync.start()
    try:
        deadline = time.monotonic() + 5
        while sync.agent.calls < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sync.alive() and sync.agent.calls >= 3
    finally:
        sync.stop()


# --- a real agent ---------------------------------------------------------------------------------


def test_the_agent_fences_itself_when_its_node_carries_a_request_for_its_generation(api, tmp_path):
    agent = FakeAgent()
    sync = make_sync(api, tmp_path, agent=agent)
    cfg = LockspaceConfig("ls", 3, str(tmp_path / "ls.img"), 0, 1, fence_node=True)
    agent.add_lockspace(cfg)
    agent.lockspaces["ls"]["fence_node"] = True
    run(sync)
    assert agent.fenced == []  # no request
    request = {"remediation": "vmlease/n1", "lockspace": "ls", "generation": 1,
               "requestedAt": "2026-12-06T12:00:00+00:00"}  # fmt: skip
    api.put("nodes", {**node("n1", pool="a"), "metadata": {
        "name": "n1", "labels": {"pool": "a"},
        "annotations": {"vmlease.io/fence-request": json.dumps(request)}}})  # fmt: skip
    run(sync)
    assert len(agent.fenced) == 1 and "remediation vmlease/n1" in agent.fenced[0]
    agent.lockspaces["ls"]["generation"] = 2  # rejoined after the reset: old news
    run(sync)
    assert len(agent.fenced) == 1


def test_a_real_agent_formats_joins_and_reports_live(api, tmp_path):
    api.put("lockspaces", lockspace(request=("n1", 1)))
    api.create("hostids", hostid("ls", "n1", 1))
    run_dir = tmp_path / "run-n1"
    run_dir.mkdir()
    agent = Agent(AgentConfig(str(run_dir), "n1", 10), open_watchdog("none", 10))
    agent.start()
    try:
        sync = make_sync(api, tmp_path, agent=agent)
        sync.monotonic = time.monotonic
        deadline = time.monotonic() + 15  # join: write, wait 2N = 2 s, re-read
        while state(api, "ls.1") != "Live" and time.monotonic() < deadline:
            run(sync)
            time.sleep(0.2)
        assert state(api, "ls.1") == "Live"
        (ls,) = agent.snapshot().lockspaces
        assert (ls.host_id, ls.state) == (1, "live")
        assert api.obj("lockspaces", "ls")["status"]["formattedBy"] == "n1"
    finally:
        agent.stop(clean=True)
