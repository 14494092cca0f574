"""NodeHealthCheck remediation: Succeeded only on the storage proof node fencing acted on, at once
False when that proof can never come, and no status write when nothing changed."""

from __future__ import annotations

import datetime
import json
from typing import Any

from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import (
    NHC_TIMED_OUT_ANNOTATION,
    REMEDIATION_NODE_ANNOTATION,
    ConditionStatus,
    HostState,
    VmleaseRemediation,
)
from vmlease_operator import events, remediation
from vmlease_operator.node_fencing import FENCING_ANNOTATION, OUT_OF_SERVICE_TAINT
from vmlease_operator.remediation import FencingHost

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
OOS = {"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}


def cr(name: str = "n1", annotations: dict[str, str] | None = None, **status: Any):
    return VmleaseRemediation.model_validate(
        {
            "metadata": {"name": name, "namespace": "vmlease", "annotations": annotations or {}},
            "status": status,
        }
    )


def node(taints: list[dict] | None = None, marks: dict | None = None) -> dict[str, Any]:
    annotations = {FENCING_ANNOTATION: json.dumps(marks)} if marks is not None else {}
    return {"metadata": {"name": "n1", "annotations": annotations}, "spec": {"taints": taints}}


def fencing_host(state: HostState | None, armed: bool = True, **kw) -> FencingHost:
    fields = {
        "name": "ls.1", "lockspace": "ls", "node": "n1", "host_id": 1, "state": state,
        "observed_by": "n2", "last_renewal": NOW - datetime.timedelta(seconds=10),
        "node_fencing": armed,
    }  # fmt: skip
    fields.update(kw)
    return FencingHost(HostIdRecord(**fields), failover=26)


def applied(found: VmleaseRemediation, decision: remediation.Decision) -> VmleaseRemediation:
    status = remediation.status_patch(found, decision, NOW)
    assert status is not None
    return found.model_copy(update={"status": found.status.model_validate(status)})


def test_succeeded_only_when_node_fencing_put_the_out_of_service_taint_safety():
    proven = node([OOS], {"outOfService": ["ls"], "ownsTaint": True})
    d = remediation.judge(cr(), proven, [fencing_host(HostState.DEAD)])
    assert (d.succeeded, d.processing, d.reason) == ("True", "False", remediation.OUT_OF_SERVICE)
    assert "ls" in d.message


def test_a_taint_someone_else_put_is_not_our_success_safety():
    """vmlease vouches only for its own proof: an admin's taint is not a remediation it did."""
    d = remediation.judge(cr(), node([OOS]), [fencing_host(HostState.DEAD)])
    assert d.succeeded == ConditionStatus.UNKNOWN and d.processing == ConditionStatus.TRUE


def test_a_node_whose_agent_renews_is_never_reported_remediated_safety():
    live = fencing_host(HostState.LIVE, observed_by="n1")
    d = remediation.judge(cr(), node(), [live])
    assert d.reason == remediation.WAITING_FOR_PROOF and d.processing == ConditionStatus.TRUE
    assert "renews it, so the node runs and is not fenced" in d.message


def test_failing_host_waits_and_says_when_the_proof_can_be_complete():
    d = remediation.judge(cr(), node(), [fencing_host(HostState.FAILING)])
    assert d.reason == remediation.WAITING_FOR_PROOF
    assert "read by node n2" in d.message and "2026-12-06T12:00:16+00:00" in d.message


def test_no_fencing_lockspace_fails_at_once_so_nhc_escalates():
    d = remediation.judge(cr(), node(), [])
    assert (d.succeeded, d.processing, d.reason) == (
        "False", "False", remediation.NO_FENCING_LOCKSPACE,
    )  # fmt: skip
    assert "nodeFencing" in d.message


def test_an_agent_without_an_armed_watchdog_cannot_be_proven_reset_safety():
    d = remediation.judge(cr(), node(), [fencing_host(HostState.DEAD, armed=False)])
    assert d.succeeded == ConditionStatus.FALSE and d.reason == remediation.WATCHDOG_NOT_ARMED


def test_a_missing_node_fails():
    d = remediation.judge(cr(), None, [fencing_host(HostState.DEAD)])
    assert d.reason == remediation.NODE_NOT_FOUND and d.succeeded == ConditionStatus.FALSE


def test_nhc_timeout_stops_the_remediation():
    found = cr(annotations={NHC_TIMED_OUT_ANNOTATION: "2026-12-06T11:59:00Z"})
    d = remediation.judge(found, node(), [fencing_host(HostState.FAILING)])
    assert (d.succeeded, d.processing, d.reason) == ("False", "False", remediation.TIMED_OUT)


def test_succeeded_stays_true_when_the_node_comes_back_before_nhc_deletes_it():
    proven = node([OOS], {"outOfService": ["ls"], "ownsTaint": True})
    done = applied(cr(), remediation.judge(cr(), proven, [fencing_host(HostState.DEAD)]))
    again = remediation.judge(done, node(), [fencing_host(HostState.LIVE, observed_by="n1")])
    assert again.succeeded == ConditionStatus.TRUE
    assert remediation.status_patch(done, again, NOW) is None


def test_the_annotated_node_name_is_the_node_remediated():
    found = cr(name="nhc-generated-x7", annotations={REMEDIATION_NODE_ANNOTATION: "n1"})
    assert found.node == "n1"
    d = remediation.judge(found, node(), [fencing_host(HostState.FAILING)])
    assert "node n1" in d.message


def test_conditions_follow_nhcs_contract():
    found = applied(cr(), remediation.judge(cr(), node(), [fencing_host(HostState.FAILING)]))
    by_type = {c.type: c for c in found.status.conditions}
    assert set(by_type) == {"Processing", "Succeeded", "PermanentNodeDeletionExpected"}
    assert by_type["PermanentNodeDeletionExpected"].status == ConditionStatus.FALSE
    assert by_type["Processing"].last_transition_time == NOW


def test_an_unchanged_judgement_writes_nothing():
    """Our own status write comes back as a watch event: judging it again must not write."""
    hosts = [fencing_host(HostState.FAILING)]
    found = applied(cr(), remediation.judge(cr(), node(), hosts))
    assert remediation.status_patch(found, remediation.judge(found, node(), hosts), NOW) is None


def test_events_started_once_then_finished_or_failed_on_the_node():
    hosts = [fencing_host(HostState.FAILING)]
    first = remediation.judge(cr(), node(), hosts)
    assert [e.reason for e in remediation.transition_events(cr(), first)] == [
        events.REMEDIATION_STARTED
    ]
    waiting = applied(cr(), first)
    assert remediation.transition_events(waiting, first) == []
    proven = node([OOS], {"outOfService": ["ls"], "ownsTaint": True})
    done = remediation.judge(waiting, proven, hosts)
    [finished] = remediation.transition_events(waiting, done)
    assert finished.reason == events.REMEDIATION_FINISHED and finished.on_node
    failed = remediation.judge(waiting, None, hosts)
    assert [e.reason for e in remediation.transition_events(waiting, failed)] == [
        events.REMEDIATION_FAILED
    ]


# --- selfFence ----------------------------------------------------------------------------------


def self_fencing(**status: Any) -> VmleaseRemediation:
    found = cr(**status)
    return found.model_copy(update={"spec": found.spec.model_copy(update={"self_fence": True})})


def test_self_fence_asks_only_a_node_whose_agent_renews_with_an_armed_watchdog_safety():
    live = fencing_host(HostState.LIVE, observed_by="n1", generation=4)
    d = remediation.judge(self_fencing(), node(), [live])
    assert d.self_fence is live.record and "asked to fence itself" in d.message
    # without selfFence, or where the node is already not renewing, or not armed: nobody asked
    assert remediation.judge(cr(), node(), [live]).self_fence is None
    failing = fencing_host(HostState.FAILING)
    assert remediation.judge(self_fencing(), node(), [failing]).self_fence is None
    unarmed = fencing_host(HostState.LIVE, armed=False, observed_by="n1")
    assert remediation.judge(self_fencing(), node(), [unarmed]).self_fence is None


def test_the_fence_request_names_lockspace_and_generation_and_is_lifted_when_done():
    live = fencing_host(HostState.LIVE, observed_by="n1", generation=4)
    found = self_fencing()
    asked = remediation.judge(found, node(), [live])
    patch = remediation.fence_request_patch(node(), found, asked, NOW)
    value = json.loads(patch["metadata"]["annotations"]["vmlease.io/fence-request"])
    assert value == {"remediation": "vmlease/n1", "lockspace": "ls", "generation": 4,
                     "requestedAt": NOW.isoformat()}  # fmt: skip
    requested = node()
    requested["metadata"]["annotations"]["vmlease.io/fence-request"] = json.dumps(value)
    assert remediation.fence_request_patch(requested, found, asked, NOW) is None  # already
    failing = remediation.judge(found, requested, [fencing_host(HostState.FAILING)])
    lift = remediation.fence_request_patch(requested, found, failing, NOW)
    assert lift == {"metadata": {"annotations": {"vmlease.io/fence-request": None}}}
    assert remediation.fence_request_patch(requested, found, None, NOW) == lift  # deleted
    # another remediation's request is neither replaced nor lifted
    other = cr(name="n1-other")
    assert remediation.fence_request_patch(requested, other, None, NOW) is None
