"""The fake API server must behave like the real one where the agent's sync and the operator's
allocation depend on it; otherwise their unit tests would prove nothing. (The envtest tier
checks the real one.)"""

from __future__ import annotations

import pytest
from fake_kube_api import FakeKubeApi, apply_merge_patch
from vmlease_api.errors import AlreadyExists, Conflict, Expired, NotFound, Refused, Unavailable


def hostid(name: str, node: str) -> dict:
    return {
        "metadata": {"name": name, "labels": {"vmlease.io/node": node}},
        "spec": {"lockspace": "ls", "nodeName": node, "hostId": int(name.split(".")[1])},
    }


def test_merge_patch_replaces_lists_and_removes_nulls():
    target = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}
    patch = {"a": None, "b": {"c": None, "e": 4}, "l": [3]}
    assert apply_merge_patch(target, patch) == {"b": {"d": 3, "e": 4}, "l": [3]}


def test_create_ignores_status_and_refuses_a_taken_name():
    api = FakeKubeApi()
    body = hostid("ls.1", "a") | {"status": {"state": "Live"}}
    created = api.create("hostids", body)
    assert "status" not in created
    with pytest.raises(AlreadyExists) as error:
        api.create("hostids", hostid("ls.1", "b"))
    assert error.value.already_exists and isinstance(error.value, Conflict)
    assert [o["spec"]["nodeName"] for o in api.stored("hostids")] == ["a"]


def test_create_enforces_the_hostid_naming_rule():
    api = FakeKubeApi()
    body = hostid("ls.1", "a")
    body["metadata"]["name"] = "ls.2"
    with pytest.raises(Refused) as error:
        api.create("hostids", body)
    assert error.value.status == 422
    assert api.stored("hostids") == [] and api.writes == []


def test_patch_status_checks_the_precondition_and_touches_only_status():
    api = FakeKubeApi()
    rv = api.create("hostids", hostid("ls.1", "a"))["metadata"]["resourceVersion"]
    new = api.patch_status("hostids", "ls.1", {"state": "Joining", "spec": "ignored"}, rv)
    assert new["status"]["state"] == "Joining"
    assert new["spec"]["nodeName"] == "a"
    assert new["metadata"]["resourceVersion"] != rv
    with pytest.raises(Conflict):
        api.patch_status("hostids", "ls.1", {"state": "Live"}, rv)
    api.patch_status("hostids", "ls.1", {"state": None})  # no precondition: always applies
    assert "state" not in api.obj("hostids", "ls.1")["status"]
    with pytest.raises(NotFound):
        api.patch_status("hostids", "ls.9", {"state": "Live"})


def test_selectors_filter_lists_and_watches():
    api = FakeKubeApi()
    _, rv = api.list("hostids")
    api.create("hostids", hostid("ls.1", "a"))
    api.create("hostids", hostid("ls.2", "b"))
    items, _ = api.list("hostids", label_selector="vmlease.io/node=b")
    assert [i["metadata"]["name"] for i in items] == ["ls.2"]
    items, _ = api.list("hostids", field_selector="metadata.name=ls.1")
    assert [i["metadata"]["name"] for i in items] == ["ls.1"]
    events = list(api.watch("hostids", rv, label_selector="vmlease.io/node=a"))
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("ADDED", "ls.1")]


def test_watch_replays_after_a_version_and_expires_after_compaction():
    api = FakeKubeApi()
    api.create("hostids", hostid("ls.1", "a"))
    _, rv = api.list("hostids")
    api.patch_status("hostids", "ls.1", {"state": "Live"})
    api.delete("hostids", "ls.1")
    assert [t for t, _ in api.watch("hostids", rv)] == ["MODIFIED", "DELETED"]
    api.compact()
    with pytest.raises(Expired):
        list(api.watch("hostids", rv))


def test_a_finalizer_turns_delete_into_terminating_until_it_goes():
    api = FakeKubeApi()
    api.put("hostids", hostid("ls.1", "a") | {"metadata": {"name": "ls.1", "finalizers": ["x"]}})
    terminating = api.delete("hostids", "ls.1")
    assert terminating == api.obj("hostids", "ls.1")
    assert terminating["metadata"]["deletionTimestamp"]
    rv = terminating["metadata"]["resourceVersion"]
    assert api.delete("hostids", "ls.1") == terminating  # again: nothing changes
    api.set_finalizers("hostids", "ls.1", [], rv)
    assert api.stored("hostids") == []


def test_delete_without_a_finalizer_removes_at_once():
    api = FakeKubeApi()
    created = api.create("hostids", hostid("ls.1", "a"))
    _, rv = api.list("hostids")
    assert api.delete("hostids", "ls.1", created["metadata"]["resourceVersion"]) is None
    assert api.stored("hostids") == []
    assert [t for t, _ in api.watch("hostids", rv)] == ["DELETED"]


def test_delete_and_finalizer_writes_check_their_preconditions():
    api = FakeKubeApi()
    body = hostid("ls.1", "a")
    body["metadata"]["finalizers"] = ["x"]
    rv = api.create("hostids", body)["metadata"]["resourceVersion"]
    api.patch_status("hostids", "ls.1", {"state": "Joining"})
    with pytest.raises(Conflict):
        api.delete("hostids", "ls.1", rv)
    with pytest.raises(Conflict):
        api.set_finalizers("hostids", "ls.1", [], rv)
    with pytest.raises(NotFound):
        api.delete("hostids", "ls.9")
    with pytest.raises(NotFound):
        api.set_finalizers("hostids", "ls.9", [])
    assert api.obj("hostids", "ls.1")["metadata"]["finalizers"] == ["x"]


def test_a_down_server_fails_every_call():
    api = FakeKubeApi()
    api.down = True
    for call in (
        lambda: api.list("lockspaces"),
        lambda: api.get("lockspaces", "x"),
        lambda: api.create("hostids", hostid("ls.1", "a")),
        lambda: api.patch_status("hostids", "ls.1", {}),
        lambda: api.delete("hostids", "ls.1"),
        lambda: api.set_finalizers("hostids", "ls.1", []),
        lambda: list(api.watch("hostids", "0")),
    ):
        with pytest.raises(Unavailable):
            call()
