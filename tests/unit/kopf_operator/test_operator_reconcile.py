"""The Lockspace pass: allocation catch-up, id release, the one formatter, status and events."""

from __future__ import annotations

import datetime

from vmlease_agent.engine.timeouts import host_dead_seconds
from vmlease_api.allocation import HostIdRecord, ReleaseClock
from vmlease_api.models import FormatRequest, HostState, Lockspace
from vmlease_operator import events, reconcile
from vmlease_operator.formatting import format_request

NOW = datetime.datetime(2025, 1, 1, 12, 0, tzinfo=datetime.UTC)


def _ls(status: dict | None = None, **spec) -> Lockspace:
    return Lockspace.model_validate(
        {
            "metadata": {"name": "ls", "generation": 3},
            "spec": {"path": "ls", "ioTimeoutSeconds": 1, "watchdogFireTimeoutSeconds": 10, **spec},
            "status": status or {},
        }
    )


def _rec(host_id: int, node: str, state: HostState | None = None, **kw) -> HostIdRecord:
    return HostIdRecord(
        name=f"ls.{host_id}",
        lockspace="ls",
        node=node,
        host_id=host_id,
        state=state,
        resource_version="1",
        **kw,
    )


NODES = {"a": {"zone": "x"}, "b": {"zone": "x"}, "c": {"zone": "y"}}


def _plan(ls: Lockspace, records, clock=None, mono=0.0, nodes=NODES) -> reconcile.Plan:
    return reconcile.plan(ls, nodes, records, clock or ReleaseClock(), mono, NOW)


def test_failover_seconds_is_the_engines_host_dead_seconds():
    spec = _ls().spec
    assert reconcile.failover_seconds(spec) == host_dead_seconds(1, 10) == 18


def test_plan_allocates_selected_nodes_without_ids_in_name_order():
    ls = _ls(nodeSelector={"matchLabels": {"zone": "x"}})
    assert _plan(ls, []).allocate == ["a", "b"]
    assert _plan(ls, [_rec(1, "b")]).allocate == ["a"]


def test_plan_keeps_ids_of_present_selected_nodes_even_when_dead():
    dead = _rec(1, "a", HostState.DEAD)
    clock = ReleaseClock()
    clock.observe(dead, 0.0)
    assert _plan(_ls(), [dead], clock, mono=1e6).release == []


def test_departed_nodes_id_is_not_released_before_the_safe_time_safety():
    gone = _rec(1, "gone", HostState.DEAD)
    clock = ReleaseClock()
    clock.observe(gone, 100.0)
    assert _plan(_ls(), [gone], clock, mono=100.0 + 17).release == []
    (released,) = _plan(_ls(), [gone], clock, mono=100.0 + 18).release
    assert released[0] is gone and "at least the safe time of 18 s" in released[1]


def test_unselected_nodes_unclaimed_id_is_released_at_once():
    ls = _ls(nodeSelector={"matchLabels": {"zone": "x"}})
    (released,) = _plan(ls, [_rec(1, "c")]).release
    assert "no agent ever claimed it" in released[1]


def test_duplicate_id_of_a_node_is_released_and_the_claimed_one_kept_safety():
    claimed, extra = _rec(2, "a", HostState.LIVE), _rec(1, "a")
    plan = _plan(_ls(), [claimed, extra])
    assert [r for r, _ in plan.release] == [extra]
    assert "a" not in plan.allocate


def test_deleting_lockspace_wants_no_ids():
    ls = _ls()
    ls.metadata.deletion_timestamp = NOW
    plan = _plan(ls, [_rec(1, "a")])
    assert plan.allocate == [] and [r.node for r, _ in plan.release] == ["a"]


def test_status_counts_and_conditions():
    records = [_rec(1, "a", HostState.LIVE), _rec(2, "b", HostState.JOINING)]
    plan = _plan(_ls({"formatted": True, "formattedBy": "a"}), records)
    status = plan.status_patch
    assert status["allocatedHosts"] == 2 and status["liveHosts"] == 1
    assert status["failoverSeconds"] == 18 and status["observedGeneration"] == 3
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Formatted"]["status"] == "True"
    assert by_type["Ready"] == {**by_type["Ready"], "status": "True", "reason": "HostsLive"}
    assert by_type["Degraded"]["status"] == "False"
    assert by_type["Degraded"]["observedGeneration"] == 3


def test_status_patch_is_empty_when_nothing_changed():
    records = [_rec(1, "a", HostState.LIVE)]
    first = _plan(_ls(), records)
    ls = _ls(first.status_patch)
    assert _plan(ls, records).status_patch == {}


def test_the_agents_status_fields_are_never_patched_away():
    """The formatting agent writes formatted*, and storageId (the shared-storage check depends
    on it); the operator's status rebuilt from its own fields once merge-patched them to null."""
    agents = {
        "formatted": True,
        "formattedBy": "a",
        "formattedAt": "2025-01-01T11:00:00Z",
        "storageId": "0123456789abcdef0123456789abcdef",
    }
    patch = _plan(_ls(agents), [_rec(1, "a", HostState.LIVE)]).status_patch
    assert patch and not set(patch) & set(agents)


def test_full_lockspace_is_degraded_and_warned_once():
    records = [_rec(1, "a", HostState.LIVE)]
    formatted = {"formatted": True, "formattedBy": "a"}
    plan = _plan(_ls(formatted, maxHosts=1), records)
    degraded = next(c for c in plan.status_patch["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == events.LOCKSPACE_FULL
    assert "2 selected node(s) wait for a host_id" in degraded["message"]
    assert events.LOCKSPACE_FULL in [e.reason for e in plan.events]
    again = _plan(_ls({**formatted, **plan.status_patch}, maxHosts=1), records)
    assert again.events == []


def test_failing_hosts_make_the_lockspace_degraded():
    plan = _plan(_ls(), [_rec(1, "a", HostState.FAILING), _rec(2, "b"), _rec(3, "c")])
    degraded = next(c for c in plan.status_patch["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "HostsFailing" and "a (host_id 1" in degraded["message"]


def test_format_request_goes_to_the_lowest_claimed_id_and_is_announced():
    records = [_rec(1, "a"), _rec(2, "b", HostState.JOINING), _rec(3, "c", HostState.JOINING)]
    plan = _plan(_ls(), records)
    assert plan.status_patch["formatRequest"]["node"] == "b"
    assert [e.reason for e in plan.events] == [events.LOCKSPACE_FORMAT_REQUESTED]


def test_formatted_lockspace_is_never_formatted_again_safety():
    records = [_rec(1, "a", HostState.JOINING)]
    status = {"formatted": True, "formattedBy": "a"}
    assert format_request(_ls(status).status, records, NOW) is None
    plan = _plan(_ls(status), records)
    assert "formatRequest" not in plan.status_patch
    assert [e.reason for e in plan.events] == [events.LOCKSPACE_FORMATTED]


def test_format_request_stays_with_its_node_exactly_one_formatter_safety():
    """A slow formatter is not replaced: two formatters could both write the area."""
    request = FormatRequest(node="b", host_id=2, requested_at=NOW)
    status = _ls({"formatRequest": request.to_api()}).status
    keepers = [_rec(1, "a", HostState.JOINING), _rec(2, "b")]
    later = NOW + datetime.timedelta(hours=1)
    assert format_request(status, keepers, later) == request


def test_format_request_moves_only_when_its_node_left():
    request = FormatRequest(node="gone", host_id=1, requested_at=NOW)
    status = _ls({"formatRequest": request.to_api()}).status
    moved = format_request(status, [_rec(2, "b", HostState.JOINING)], NOW)
    assert (moved.node, moved.host_id) == ("b", 2)
    assert format_request(status, [_rec(2, "b")], NOW) is None


def test_departed_formatter_request_is_removed_from_status():
    request = FormatRequest(node="gone", host_id=9, requested_at=NOW)
    plan = _plan(_ls({"formatRequest": request.to_api()}), [_rec(1, "a")])
    assert plan.status_patch["formatRequest"] is None


def test_merge_patch():
    from vmlease_api.patch import merge_patch

    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    new = {"a": 1, "b": {"c": 2, "d": 4}, "e": [1, 2], "f": 5}
    assert merge_patch(old, new) == {"b": {"d": 4}, "e": [1, 2], "f": 5}
    assert merge_patch({"x": 1}, {}) == {"x": None}
