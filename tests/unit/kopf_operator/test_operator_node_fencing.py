"""Node fencing's judgement: a Node is tainted out of service only on the whole proof of its
reset, and only our taints are ever lifted."""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest
from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import HostState
from vmlease_operator import node_fencing
from vmlease_operator.node_fencing import (
    FAILING_TAINT,
    FENCING_ANNOTATION,
    OUT_OF_SERVICE_TAINT,
    Verdict,
)

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
FAILOVER = 26  # 8 x 2 + 10


def ago(seconds: float) -> datetime.datetime:
    return NOW - datetime.timedelta(seconds=seconds)


def host(node: str, host_id: int, state: HostState | None, **kw) -> HostIdRecord:
    fields = {
        "name": f"ls.{host_id}",
        "lockspace": "ls",
        "node": node,
        "host_id": host_id,
        "state": state,
        "observed_by": node,
        "state_since": ago(1),
        "last_renewal": ago(5),
        "node_fencing": True,
    }
    fields.update(kw)
    return HostIdRecord(**fields)


def dead(**kw) -> HostIdRecord:
    fields = {"observed_by": "n2", "last_renewal": ago(FAILOVER + 35)}
    fields.update(kw)
    return host("n1", 1, HostState.DEAD, **fields)


def verdict_for(hosts: list[HostIdRecord], node: str = "n1") -> Verdict:
    [v] = [v for v in node_fencing.assess("ls", FAILOVER, hosts, NOW) if v.node == node]
    return v


def test_a_dead_host_with_the_whole_proof_is_put_out_of_service():
    v = verdict_for([dead(), host("n2", 2, HostState.LIVE)])
    assert v.out_of_service is True and v.no_schedule
    assert "was reset" in v.why and "node n2" in v.why


def test_a_failing_host_is_never_put_out_of_service_safety():
    """Failing: the host may still be writing; its node only gets the NoSchedule taint."""
    v = verdict_for([host("n1", 1, HostState.FAILING), host("n2", 2, HostState.LIVE)])
    assert v.out_of_service is None and v.no_schedule


@pytest.mark.parametrize(
    ("dead_host", "observer", "missing"),
    [
        # its agent never said a device was armed for fencing (--watchdog none, an old agent)
        (dead(node_fencing=False), host("n2", 2, HostState.LIVE), "never confirmed"),
        # the only reader is itself stale: its own renewals stopped
        (dead(), host("n2", 2, HostState.LIVE, last_renewal=ago(600)), "stale reader"),
        (dead(), host("n2", 2, HostState.FAILING), "stale reader"),
        # the observer's Live was written by someone else, not its own agent
        (dead(), host("n2", 2, HostState.LIVE, observed_by="n3"), "stale reader"),
        # nobody else read it
        (dead(observed_by="n1"), host("n2", 2, HostState.LIVE), "no other node"),
        (dead(observed_by="n9"), host("n2", 2, HostState.LIVE), "no other node"),
        # the node's own last renewal is younger than the safe time: the clocks disagree
        (dead(last_renewal=ago(FAILOVER - 5)), host("n2", 2, HostState.LIVE), "less than"),
        (dead(last_renewal=None), host("n2", 2, HostState.LIVE), "never reported"),
    ],
)
def test_a_dead_report_without_the_whole_proof_taints_nothing_safety(dead_host, observer, missing):
    v = verdict_for([dead_host, observer])
    assert v.out_of_service is None, v.why
    assert missing in v.why
    assert v.no_schedule  # not renewing all the same: no new pods


def test_only_its_own_agents_live_lifts_the_taint_safety():
    """A Live written by another node (a stale status) is not the node renewing again."""
    assert verdict_for([host("n1", 1, HostState.LIVE)]).out_of_service is False
    reported = verdict_for([host("n1", 1, HostState.LIVE, observed_by="n2")])
    assert reported.out_of_service is None
    for state in (HostState.JOINING, HostState.FREE, None):
        assert verdict_for([host("n1", 1, state)]).out_of_service is None


# --- the Node ---------------------------------------------------------------------------------


def node(taints=(), fencing: dict | None = None) -> dict:
    meta = {"name": "n1", "resourceVersion": "42", "annotations": {}}
    if fencing is not None:
        meta["annotations"][FENCING_ANNOTATION] = json.dumps(fencing)
    return {"metadata": meta, "spec": {"taints": list(taints)}}


def applied(body: dict, change: node_fencing.NodeChange | None) -> dict:
    """The Node after the merge patch (enough of it for these tests)."""
    if change is None:
        return body
    out = json.loads(json.dumps(body))
    value = change.patch["metadata"]["annotations"][FENCING_ANNOTATION]
    if value is None:
        out["metadata"]["annotations"].pop(FENCING_ANNOTATION, None)
    else:
        out["metadata"]["annotations"][FENCING_ANNOTATION] = value
    if "spec" in change.patch:
        out["spec"]["taints"] = change.patch["spec"]["taints"]
    return out


def keys(body: dict) -> set[str]:
    return {t["key"] for t in body["spec"]["taints"]}


PROVEN = Verdict("n1", "ls", True, True, "proof")
LIVE = Verdict("n1", "ls", False, False, "its agent renews again")
FAILING = Verdict("n1", "ls", None, True, "failing")


def test_the_taint_goes_on_once_and_comes_off_when_live():
    kubelet = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    body = node([kubelet])
    change = node_fencing.node_change(body, [PROVEN])
    assert change is not None
    assert change.patch["metadata"]["resourceVersion"] == "42"  # a concurrent change conflicts
    assert [e.reason for e in change.events] == ["NodeOutOfService", "NodeNotRenewing"]
    body = applied(body, change)
    assert keys(body) == {kubelet["key"], OUT_OF_SERVICE_TAINT, FAILING_TAINT}
    oos = next(t for t in body["spec"]["taints"] if t["key"] == OUT_OF_SERVICE_TAINT)
    assert (oos["value"], oos["effect"]) == ("nodeshutdown", "NoExecute")
    assert node_fencing.node_change(body, [PROVEN]) is None  # nothing more to write
    assert node_fencing.node_change(body, [FAILING]) is None  # still not renewing: stays
    change = node_fencing.node_change(body, [LIVE])
    assert change is not None
    assert [e.reason for e in change.events] == ["NodeInService", "NodeRenewing"]
    body = applied(body, change)
    assert keys(body) == {kubelet["key"]}  # the kubelet's taint is not ours to touch
    assert FENCING_ANNOTATION not in body["metadata"]["annotations"]


def test_an_out_of_service_taint_someone_else_put_is_never_lifted_safety():
    """An administrator's out-of-service taint says the node is off: ours to leave alone."""
    theirs = {"key": OUT_OF_SERVICE_TAINT, "value": "manual", "effect": "NoExecute"}
    body = applied(node([theirs]), node_fencing.node_change(node([theirs]), [PROVEN]))
    change = node_fencing.node_change(body, [LIVE])
    assert change is not None
    assert theirs in applied(body, change)["spec"]["taints"]
    # and with an unreadable annotation nothing is lifted either
    garbled = node([theirs])
    garbled["metadata"]["annotations"][FENCING_ANNOTATION] = "{not json"
    change = node_fencing.node_change(garbled, [LIVE])
    assert change is None or theirs in applied(garbled, change)["spec"]["taints"]


def test_the_taint_stays_while_another_lockspace_still_proves_the_node_dead_safety():
    body = node()
    for ls in ("a", "b"):
        body = applied(
            body, node_fencing.node_change(body, [dataclasses.replace(PROVEN, lockspace=ls)])
        )
    body = applied(body, node_fencing.node_change(body, [dataclasses.replace(LIVE, lockspace="a")]))
    assert OUT_OF_SERVICE_TAINT in keys(body)
    body = applied(body, node_fencing.node_change(body, [dataclasses.replace(LIVE, lockspace="b")]))
    assert OUT_OF_SERVICE_TAINT not in keys(body)


def test_no_schedule_follows_renewals():
    body = applied(node(), node_fencing.node_change(node(), [FAILING]))
    assert keys(body) == {FAILING_TAINT}
    body = applied(body, node_fencing.node_change(body, [LIVE]))
    assert keys(body) == set()


def test_a_hostid_record_reads_the_fencing_evidence():
    body = {
        "metadata": {"name": "ls.1"},
        "spec": {"lockspace": "ls", "nodeName": "n1", "hostId": 1},
        "status": {
            "state": "Dead",
            "observedBy": "n2",
            "stateSince": "2026-12-06T12:00:00Z",
            "lastRenewal": "2026-12-06T11:58:00Z",
            "nodeFencing": True,
        },
    }
    view = HostIdRecord.from_body(body)
    assert view.state == HostState.DEAD and view.node_fencing and view.observed_by == "n2"
    assert view.last_renewal == ago(120)
    body["status"]["nodeFencing"] = "true"  # only a real true counts
    assert not HostIdRecord.from_body(body).node_fencing
    assert HostIdRecord.from_body({**body, "status": {}}).state is None


def test_a_proof_once_made_is_not_undone_by_weaker_evidence_safety():
    """The observer's status ages after the taint went on: the node is still reset, and the
    taint must stay until the node's own agent renews again."""
    body = applied(node(), node_fencing.node_change(node(), [PROVEN]))
    stale = verdict_for([dead(), host("n2", 2, HostState.LIVE, last_renewal=ago(600))])
    assert node_fencing.node_change(body, [stale]) is None
    assert OUT_OF_SERVICE_TAINT in keys(body)


def test_a_running_node_is_never_put_out_of_service_by_an_old_ids_record_safety():
    """Two HostIds for one node (the old one being released after a reset, a new one in use):
    the old Dead record, whole proof and all, is history; its own agent's Live is now."""
    old = dead(name="ls.1")
    new = host("n1", 3, HostState.LIVE, name="ls.3")
    verdicts = node_fencing.assess("ls", FAILOVER, [old, new, host("n2", 2, HostState.LIVE)], NOW)
    mine = [v for v in verdicts if v.node == "n1"]
    assert len(mine) == 1  # one verdict per node: two ids cannot flap the taint
    assert mine[0].out_of_service is False and not mine[0].no_schedule
    # without the Live id, the same record is the proof
    [proof] = [
        v
        for v in node_fencing.assess("ls", FAILOVER, [old, host("n2", 2, HostState.LIVE)], NOW)
        if v.node == "n1"
    ]
    assert proof.out_of_service is True and proof.hostid == "ls.1"


def test_an_unproven_dead_report_is_marked_for_its_event():
    [v] = [
        v
        for v in node_fencing.assess(
            "ls", FAILOVER, [dead(node_fencing=False), host("n2", 2, HostState.LIVE)], NOW
        )
        if v.node == "n1"
    ]
    assert v.unproven and v.hostid == "ls.1" and v.out_of_service is None
