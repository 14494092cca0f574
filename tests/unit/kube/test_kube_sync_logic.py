"""The Kubernetes mode's decisions (``kube_logic``): which lockspaces, which id, which step,
what the HostId status says and who reports other hosts."""

from __future__ import annotations

import datetime
import json

import pytest
from kube_builders import hostid, lockspace
from vmlease_agent.core.snapshot import FencedSnapshot, LockspaceSnapshot, WatchdogSnapshot
from vmlease_agent.kube import decisions as kube_logic
from vmlease_agent.kube.decisions import Local, Step
from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import HostId, HostIdStatus, HostState, Lockspace
from vmlease_api.patch import merge_patch

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(seconds=30)


def ls(**kw) -> Lockspace:
    return Lockspace.model_validate(lockspace(**kw))


def rec(node: str, host_id: int, state: str | None = None, name: str = "ls") -> HostIdRecord:
    body = hostid(name, node, host_id, state)
    body["metadata"]["resourceVersion"] = "7"
    return HostIdRecord.from_body(body)


# --- paths -------------------------------------------------------------------------------------


def test_paths_resolve_under_the_shared_volume_or_dev():
    assert kube_logic.resolve_path("/shared", "ls.img") == "/shared/ls.img"
    assert kube_logic.resolve_path("/shared", "a/b.img") == "/shared/a/b.img"
    assert kube_logic.resolve_path("/shared", "/dev/sdb") == "/dev/sdb"
    assert kube_logic.relative_path("/shared", "/shared/leases/x") == "leases/x"
    assert kube_logic.relative_path("/shared", "/elsewhere/x") is None
    assert kube_logic.relative_path("/shared", "/dev/sdb") == "/dev/sdb"


# --- which lockspaces, which id ----------------------------------------------------------------


def test_wanted_follows_the_node_selector_and_skips_deleting_lockspaces():
    mine = ls(name="mine", selector={"pool": "a"})
    other = ls(name="other", selector={"pool": "b"})
    everyone = ls(name="all")
    going = ls(name="going")
    going.metadata.deletion_timestamp = T0
    lockspaces = [mine, other, everyone, going]
    assert set(kube_logic.wanted(lockspaces, {"pool": "a"})) == {"mine", "all"}
    assert kube_logic.wanted(lockspaces, None) == {}  # no Node object: nothing


def test_my_hostid_is_the_operators_keeper():
    records = [rec("n1", 4), rec("n1", 2), rec("n2", 1), rec("n1", 3, "Joining")]
    assert kube_logic.my_hostid(records, "ls", "n1").host_id == 3  # claimed wins
    assert kube_logic.my_hostid(records[:2], "ls", "n1").host_id == 2  # else lowest
    assert kube_logic.my_hostid(records, "other", "n1") is None


# --- steps ---------------------------------------------------------------------------------------


def test_no_hostid_means_wait():
    d = kube_logic.decide(ls(), None, None, "n1", 10)
    assert d.step == Step.WAIT_HOSTID
    assert "n1" in d.message


def test_an_unclaimed_id_is_claimed_before_anything_touches_the_disk():
    assert kube_logic.decide(ls(), rec("n1", 1), None, "n1", 10).step == Step.CLAIM


def test_only_the_designated_node_formats():
    claimed = rec("n1", 1, "Joining")
    unformatted = ls(request=("n1", 1))
    assert kube_logic.decide(unformatted, claimed, None, "n1", 10).step == Step.FORMAT
    other = kube_logic.decide(unformatted, rec("n2", 2, "Joining"), None, "n2", 10)
    assert other.step == Step.WAIT_FORMAT
    assert "node n1" in other.message
    # a request naming this node with another id (an old allocation) is not for us
    stale = ls(request=("n1", 5))
    assert kube_logic.decide(stale, claimed, None, "n1", 10).step == Step.WAIT_FORMAT
    assert kube_logic.decide(ls(), claimed, None, "n1", 10).step == Step.WAIT_FORMAT


def test_a_formatted_lockspace_is_joined_never_formatted_again():
    # even if a stale request still names us
    formatted = ls(formatted=True, request=("n1", 1))
    assert kube_logic.decide(formatted, rec("n1", 1, "Joining"), None, "n1", 10).step == Step.JOIN


def test_a_joined_lockspace_stays_joined_and_a_stopped_one_is_rejoined():
    live = Local("ls", 1, "live", 3)
    formatted = ls(formatted=True)
    claimed = rec("n1", 1, "Live")
    assert kube_logic.decide(formatted, claimed, live, "n1", 10).step == Step.JOINED
    stopped = Local("ls", 1, "stopped", 3, error="io error")
    assert kube_logic.decide(formatted, claimed, stopped, "n1", 10).step == Step.JOIN


def test_a_joined_id_that_differs_from_the_allocation_is_reported_not_changed():
    d = kube_logic.decide(
        ls(formatted=True), rec("n1", 2, "Live"), Local("ls", 1, "live", 1), "n1", 10
    )
    assert d.step == Step.CONFLICT
    assert "host_id 1" in d.message and "host_id 2" in d.message and "rem_lockspace" in d.message


def test_a_watchdog_slower_than_the_lockspace_promises_is_refused():
    d = kube_logic.decide(ls(fire_timeout=10), rec("n1", 1), None, "n1", 60)
    assert d.step == Step.REFUSED
    assert "--watchdog-fire-timeout 10" in d.message
    # faster than promised is fine (only slower than others' safe time is unsafe)
    assert kube_logic.decide(ls(fire_timeout=60), rec("n1", 1), None, "n1", 10).step == Step.CLAIM


def test_to_leave_is_only_what_kubernetes_joined_and_nobody_wants():
    assert kube_logic.to_leave({"a", "b"}, ["a", "b", "manual"], ["a"]) == ["b"]


# --- own status ----------------------------------------------------------------------------------


def test_own_status_keeps_state_since_while_the_state_holds():
    local = Local("ls", 1, "live", 2, last_renewal_ago=1.5, renewal_ms=7.6)
    joined = (True, "Joined", "host_id 1")
    first = kube_logic.own_status(HostIdStatus(), HostState.LIVE, "n1", T0, local, 1000.0, joined)
    assert first.state == HostState.LIVE and first.state_since == T0
    assert first.generation == 2 and first.renewal_latency_ms == 8
    assert first.last_renewal == kube_logic.utc(998.5)
    assert first.observed_by == "n1"
    again = kube_logic.own_status(first, HostState.LIVE, "n1", T1, local, 1030.0, joined)
    assert again.state_since == T0
    conditions = {c.type: c for c in again.conditions}
    assert conditions["Joined"].status == "True"
    assert conditions["Renewing"].last_transition_time == T0
    failing = kube_logic.own_status(
        again,
        HostState.FAILING,
        "n1",
        T1,
        Local("ls", 1, "failed", 2, error="EIO"),
        1030.0,
        (False, "Failed", "EIO"),
    )
    assert failing.state_since == T1
    assert {c.type: c.status for c in failing.conditions} == {
        "Joined": "False",
        "Renewing": "False",
    }


def test_holders_stopped_says_whom_the_agent_stopped_and_makes_the_write_urgent():
    joined = (False, "Failed", "EIO")
    local = Local("ls", 1, "failed", 2, error="EIO")
    base = kube_logic.own_status(HostIdStatus(), HostState.FAILING, "n1", T0, local, 1.0, joined)
    stopping = FencedSnapshot("ls", 1000.0, "EIO", ("vm1 (pid 42): SIGTERM",), done=False)
    mid = kube_logic.own_status(base, HostState.FAILING, "n1", T0, local, 1.0, joined, stopping)
    cond = {c.type: c for c in mid.conditions}["HoldersStopped"]
    assert (cond.status, cond.reason) == ("False", "Stopping")
    assert "stopping its holders: vm1 (pid 42): SIGTERM" in cond.message
    done = FencedSnapshot("ls", 1000.0, "EIO", ("vm1 (pid 42): SIGTERM, SIGKILL",), done=True)
    end = kube_logic.own_status(mid, HostState.FAILING, "n1", T1, local, 1.0, joined, done)
    cond = {c.type: c for c in end.conditions}["HoldersStopped"]
    assert (cond.status, cond.reason) == ("True", "AllStopped")
    assert "failed at 1970-01-01T00:16:40+00:00 (EIO)" in cond.message
    assert "Nothing of this node writes under it" in cond.message
    keys = {kube_logic.status_key(x) for x in (base, mid, end)}
    assert len(keys) == 3  # each change is written at once, not at the next interval


def test_a_fence_request_is_honoured_only_at_the_generation_it_names_safety():
    """A NodeHealthCheck remediation's selfFence request resets a node once: after the reset the
    node rejoins at another generation and the same request is old news."""
    armed = Local("ls", 3, "live", 7, fencing=True)
    request = {"remediation": "vmlease/n1", "lockspace": "ls", "generation": 7,
               "requestedAt": "2026-12-06T12:00:00+00:00"}  # fmt: skip
    said = {"vmlease.io/fence-request": json.dumps(request)}
    why = kube_logic.fence_request(said, {"ls": armed})
    assert "remediation vmlease/n1" in why and "generation 7" in why
    rejoined = Local("ls", 3, "live", 8, fencing=True)
    assert kube_logic.fence_request(said, {"ls": rejoined}) == ""
    unarmed = Local("ls", 3, "live", 7, fencing=False)  # its reset would not be certain
    assert kube_logic.fence_request(said, {"ls": unarmed}) == ""
    assert kube_logic.fence_request(said, {}) == ""
    assert kube_logic.fence_request({"vmlease.io/fence-request": "{bad"}, {"ls": armed}) == ""
    assert kube_logic.fence_request(None, {"ls": armed}) == ""


def _watchdog(armed=True, enforced=True, condemned=""):
    return WatchdogSnapshot(10, 10, armed, 0.0 if armed else None, "", "", condemned, enforced)


@pytest.mark.parametrize(
    ("fence_node", "watchdog", "says"),
    [
        (True, _watchdog(), True),
        (False, _watchdog(), False),  # the lockspace does not fence the node
        (True, _watchdog(armed=False), False),
        (True, _watchdog(enforced=False), False),  # --watchdog none resets nobody
        # condemned (a failed fence lockspace, or a remediation's self-fence): reset for certain
        (True, _watchdog(condemned="lockspace ls failed"), True),
    ],
)
def test_node_fencing_is_claimed_only_with_a_real_armed_device_safety(fence_node, watchdog, says):
    """The operator taints a Dead node out of service only on this word: a node that would not
    be reset must never give it."""
    snap = LockspaceSnapshot("ls", 1, "/s/ls", 0, 10, 2, "live", "", 1.0, 5.0, 70.0, fence_node)
    local = Local.of(snap, watchdog)
    joined = (True, "Joined", "host_id 1")
    status = kube_logic.own_status(HostIdStatus(), HostState.LIVE, "n1", T0, local, 1000.0, joined)
    assert status.node_fencing is says
    assert status.to_api()["nodeFencing"] is says
    free = kube_logic.own_status(status, HostState.FREE, "n1", T1, None, 1030.0, joined)
    assert free.node_fencing is False
    # a change of the word alone is written at once, not at the next refresh
    other = Local.of(snap, _watchdog(armed=False) if says else _watchdog())
    changed = kube_logic.own_status(status, HostState.LIVE, "n1", T1, other, 1030.0, joined)
    assert kube_logic.status_key(changed) != kube_logic.status_key(status) or not fence_node


def test_status_writes_are_rate_limited_unless_the_state_changes():
    gate = kube_logic.WriteGate(interval=30)
    live = kube_logic.status_key(HostIdStatus(state=HostState.LIVE, generation=1))
    assert gate.due("h", live, 0)
    gate.done("h", live, 0)
    assert not gate.due("h", live, 29.9)  # a renewal never forces a write
    assert gate.due("h", live, 30)
    failing = kube_logic.status_key(HostIdStatus(state=HostState.FAILING, generation=1))
    assert gate.due("h", failing, 1)  # a change is written at once


# --- other hosts ---------------------------------------------------------------------------------


def row(host_id: int, state: str, name: str, generation: int = 1) -> dict:
    return {
        "host_id": host_id,
        "state": state,
        "name": name,
        "generation": generation,
        "renewed_ago": 42.0,
    }


def test_the_reporter_is_the_lowest_host_that_may_be_alive():
    rows = [row(1, "dead", "n1"), row(2, "live", "n2"), row(3, "live", "n3")]
    assert kube_logic.is_reporter(rows, 2)
    assert not kube_logic.is_reporter(rows, 3)
    assert not kube_logic.is_reporter([row(1, "unknown", "n1"), *rows[1:]], 2)


def model(node: str, host_id: int, state: str | None) -> HostId:
    body = hostid("ls", node, host_id, state)
    body["metadata"]["resourceVersion"] = "9"
    return HostId.model_validate(body)


def test_peer_reports_only_claimed_ids_whose_disk_record_is_theirs():
    hostids = [
        model("n1", 1, "Live"),  # ourselves: never
        model("n2", 2, "Live"),  # dead on disk: Dead
        model("n3", 3, "Dead"),  # already Dead: nothing to write
        model("n4", 4, "Joining"),  # still joining: its own agent speaks
        model("n5", 5, None),  # unclaimed: writing a state would claim it
        model("n6", 6, "Live"),  # the record on disk is an earlier holder's
        model("n7", 7, "Live"),  # freed cleanly
    ]
    rows = [
        row(1, "live", "n1"),
        row(2, "dead", "n2"),
        row(3, "dead", "n3"),
        row(4, "dead", "old"),
        row(5, "dead", "n5"),
        row(6, "dead", "someone-else"),
        row(7, "free", "n7"),
    ]
    reports = kube_logic.peer_reports(hostids, rows, "n1", T0)
    assert [(r.name, r.state) for r in reports] == [
        ("ls.2", HostState.DEAD),
        ("ls.7", HostState.FREE),
    ]
    dead = reports[0]
    assert dead.resource_version == "9"  # guarded: a concurrent own write wins
    assert dead.status["observedBy"] == "n1" and dead.status["stateSince"] == "2026-01-01T00:00:00Z"
    renewing = next(c for c in dead.status["conditions"] if c["type"] == "Renewing")
    assert renewing["status"] == "False" and "n1 reads host_id 2 as Dead" in renewing["message"]


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"h": {"x": 1, "y": 2}}, {"h": {"x": 1}}, {"h": {"y": None}}),
        ({"l": [1]}, {"l": [1, 2]}, {"l": [1, 2]}),
    ],
)
def test_merge_patch(old, new, patch):
    assert merge_patch(old, new) == patch
