"""The agent's libvirt watcher, reconciling fake domains against a fake agent (no libvirtd)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from libvirt_binding import libvirt_or_skip
from vmlease_agent.core.snapshot import HolderSnapshot, LeaseHolder, LeaseSnapshot, holder_kind
from vmlease_agent.virt import watcher as libvirt_events
from vmlease_agent.virt.config import LibvirtConfig
from vmlease_agent.virt.domain import parse_domain
from vmlease_agent.virt.plan import plan
from vmlease_agent.virt.watcher import LibvirtWatcher

libvirt = libvirt_or_skip()

UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
KEY = f"libvirt:{UUID}"


@dataclass
class Held:
    since: float


@dataclass
class Client:
    key: str
    pid: int = 0
    kill_command: list[str] | None = None
    leases: dict[str, Held] = field(default_factory=dict)


class FakeAgent:
    """The agent as the watcher sees it: holders it can ask about, and the calls it makes."""

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}  # what the fake holds, by key
        self.events: list[dict] = []
        self.calls: list[tuple] = []

    def holder(self, key: str) -> HolderSnapshot | None:
        c = self.clients.get(key)
        if c is None:
            return None
        who = LeaseHolder(c.key, holder_kind(c.key), c.pid, "qemu", "")
        leases = tuple(
            LeaseSnapshot(label, *label.split(":")[:2], "/x", 0, 1, False, 1, 1, who, h.since)
            for label, h in c.leases.items()
        )
        command = tuple(c.kill_command) if c.kill_command is not None else None
        return HolderSnapshot(who, command, False, leases)

    def snapshot(self) -> SimpleNamespace:
        return SimpleNamespace(holders=tuple(self.holder(key) for key in self.clients))

    def event(self, kind: str, **fields) -> None:
        self.events.append({"event": kind, **fields})

    def bind(self, key: str, pid: int) -> None:
        self.calls.append(("bind", key, pid))
        self.clients[key].pid = pid

    def set_kill_command(self, key: str, command: list[str]) -> None:
        self.calls.append(("set_kill_command", key))
        self.clients[key].kill_command = command

    def release(self, key: str, labels) -> list[str]:
        self.calls.append(("release", key))
        return sorted(self.clients.pop(key).leases)

    def kinds(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]


class Dom:
    def __init__(self, xml: str, state=(libvirt.VIR_DOMAIN_RUNNING, 1), name: str = "vm1"):
        self.xml, self.states, self.domain_name = xml, list(state), name

    def name(self) -> str:
        return self.domain_name

    def UUIDString(self) -> str:
        return UUID

    def state(self) -> list[int]:
        return self.states

    def XMLDesc(self, _flags: int) -> str:
        return self.xml


class Conn:
    def __init__(self, *doms: Dom) -> None:
        self.doms = list(doms)

    def listAllDomains(self, _flags: int) -> list[Dom]:
        return self.doms


@pytest.fixture
def setup(tmp_path: Path):
    image = tmp_path / "vm1.img"
    image.write_bytes(b"")
    (tmp_path / "vm1.pid").write_text("4242")
    cfg = LibvirtConfig(pid_dir=str(tmp_path), disk_lease_dir=str(tmp_path / "leases"))
    xml = (
        f"<domain><name>vm1</name><uuid>{UUID}</uuid><on_lockfailure>pause</on_lockfailure>"
        f"<devices><disk type='file'><source file='{image}'/><target dev='vda'/></disk>"
        "</devices></domain>"
    )
    (want,) = plan(cfg, parse_domain(xml))
    agent = FakeAgent()
    return agent, LibvirtWatcher(agent, "qemu:///system", cfg), Dom(xml), want.label


def test_a_held_unbound_key_is_bound_to_qemu_and_gets_its_fencing_command(setup):
    agent, watcher, dom, label = setup
    agent.clients[KEY] = Client(KEY, leases={label: Held(time.time())})
    watcher.check_domain(dom)
    assert agent.calls == [("bind", KEY, 4242), ("set_kill_command", KEY)]
    command = agent.clients[KEY].kill_command
    assert command[command.index("--policy") + 1] == "pause"
    assert agent.kinds("libvirt_unprotected") == []
    agent.calls.clear()
    watcher.check_domain(dom)  # nothing left to do
    assert agent.calls == []


def test_a_running_domain_without_its_lease_is_reported_once_per_change(setup, caplog):
    agent, watcher, dom, label = setup
    watcher.check_domain(dom)
    watcher.check_domain(dom)
    (event,) = agent.kinds("libvirt_unprotected")
    assert event["state"] == "running" and event["missing"] == [
        f"disk vda ({dom.xml.split(chr(39))[3]}) ({label})"
    ]
    assert caplog.text.count("RUNS WITHOUT its leases") == 2  # logged on every pass
    agent.clients[KEY] = Client(KEY, pid=4242, kill_command=["x"], leases={label: Held(0)})
    watcher.check_domain(dom)
    assert [e["event"] for e in agent.events] == ["libvirt_unprotected", "libvirt_protected"]


def test_a_paused_domain_without_leases_is_a_warning_and_a_starting_one_is_left_to_the_hook(
    setup, caplog
):
    agent, watcher, dom, _ = setup
    dom.states = [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    watcher.check_domain(dom)
    assert agent.kinds("libvirt_unprotected")[0]["state"] == "paused"
    assert "resuming it would run it unprotected" in caplog.text
    agent.events.clear()
    dom.states = [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP]
    watcher.check_domain(dom)
    assert agent.events == []


def test_reconcile_releases_only_old_unbound_placeholders_of_domains_not_running(setup):
    agent, watcher, dom, label = setup
    old = time.time() - watcher.stale_after - 1
    for key, client in {
        "libvirt:gone-old": Client("libvirt:gone-old", leases={"L:a": Held(old)}),
        "libvirt:gone-new": Client("libvirt:gone-new", leases={"L:b": Held(time.time())}),
        "libvirt:gone-bound": Client("libvirt:gone-bound", pid=99, leases={"L:c": Held(old)}),
        "pid:5": Client("pid:5", leases={"L:d": Held(old)}),
        KEY: Client(KEY, pid=4242, kill_command=["x"], leases={label: Held(old)}),
    }.items():
        agent.clients[key] = client
    watcher.reconcile_all(Conn(dom))
    assert [c for c in agent.calls if c[0] == "release"] == [("release", "libvirt:gone-old")]
    assert agent.kinds("libvirt_stale_released") == [
        {"event": "libvirt_stale_released", "holder": "libvirt:gone-old", "leases": ["L:a"]}
    ]
    assert agent.kinds("libvirt_reconciled")[0]["running"] == 1
    assert watcher.passes == 1


def test_start_needs_the_flag_and_reports_a_bad_config_without_stopping_the_agent(tmp_path):
    agent = FakeAgent()
    args = argparse.Namespace(libvirt=None, libvirt_config=None)
    assert libvirt_events.start(args, agent) is None
    bad = tmp_path / "bad.conf"
    bad.write_text("nonsense\n")
    args = argparse.Namespace(libvirt="qemu:///system", libvirt_config=str(bad))
    assert libvirt_events.start(args, agent) is None
    assert "is not a known setting" in agent.kinds("libvirt_unavailable")[0]["error"]


def test_the_hooks_holder_key_is_what_the_agent_calls_a_domain():
    """virt.plan names a domain's placeholder (the hook cannot afford to import core); the agent's
    snapshot tells a domain from a process by the same prefix: one rule, two copies, pinned."""
    from vmlease_agent.core.snapshot import DOMAIN_KEY_PREFIX, holder_kind
    from vmlease_agent.virt.plan import KEY_PREFIX, holder_key

    assert KEY_PREFIX == DOMAIN_KEY_PREFIX
    assert holder_kind(holder_key("9f1c0e4a-0000-4000-8000-000000000001")) == "domain"
