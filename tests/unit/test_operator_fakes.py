"""The fake API server must behave like the real one where allocation's safety depends on it;
otherwise allocation tests would prove nothing. (The envtest tier checks the real one.)"""

from __future__ import annotations

import pytest
from fake_hostid_store import FakeHostIdStore, Invalid
from vmlease_api import naming
from vmlease_api.errors import AlreadyExists, Conflict, NotFound
from vmlease_operator.hostid_writes import hostid_body


def test_fake_refuses_a_second_object_with_the_same_name():
    store = FakeHostIdStore()
    store.create(hostid_body("ls", "a", 1))
    with pytest.raises(AlreadyExists):
        store.create(hostid_body("ls", "b", 1))
    assert [r.node for r in store.records()] == ["a"]


def test_fake_enforces_the_naming_rule():
    body = hostid_body("ls", "a", 1)
    body["metadata"]["name"] = "ls.2"
    with pytest.raises(Invalid):
        FakeHostIdStore().create(body)


def test_fake_bumps_resource_version_and_checks_preconditions():
    store = FakeHostIdStore()
    created = store.create(hostid_body("ls", "a", 1))
    rv = created["metadata"]["resourceVersion"]
    store.patch_status("ls.1", {"state": "Live"}, rv)
    with pytest.raises(Conflict):
        store.patch_status("ls.1", {"state": "Dead"}, rv)
    with pytest.raises(Conflict):
        store.delete("ls.1", rv)
    with pytest.raises(NotFound):
        store.delete("ls.9", rv)


def test_fake_ignores_status_on_create_like_the_status_subresource():
    body = hostid_body("ls", "a", 1)
    body["status"] = {"state": "Live"}
    assert "status" not in FakeHostIdStore().create(body)


def test_fake_finalizer_makes_delete_terminating_until_removed():
    store = FakeHostIdStore()
    created = store.create(hostid_body("ls", "a", 1))
    assert created["metadata"]["finalizers"] == [naming.HOSTID_FINALIZER]
    terminating = store.delete("ls.1", created["metadata"]["resourceVersion"])
    assert terminating["metadata"]["deletionTimestamp"]
    assert store.records()[0].terminating
    store.set_finalizers("ls.1", [], terminating["metadata"]["resourceVersion"])
    assert store.objects == {}


def test_fake_delete_without_finalizer_removes_at_once():
    store = FakeHostIdStore()
    created = store.create(hostid_body("ls", "a", 1))
    store.set_finalizers("ls.1", [], created["metadata"]["resourceVersion"])
    assert store.delete("ls.1", store.objects["ls.1"]["metadata"]["resourceVersion"]) is None
    assert store.objects == {}


def test_fake_lists_by_node_labels_and_counts_requests():
    store = FakeHostIdStore()
    store.create(hostid_body("ls", "a", 1))
    store.create(hostid_body("ls", "b", 2))
    store.create(hostid_body("other", "a", 1))
    assert [r.name for r in store.list_for_node("ls", "a")] == ["ls.1"]
    assert (store.writes, store.reads) == (3, 1)


def test_fake_claim_refuses_terminating_and_stale_records():
    store = FakeHostIdStore()
    store.create(hostid_body("ls", "a", 1))
    (record,) = store.records()
    claimed = store.claim(record)
    assert claimed.claimed
    with pytest.raises(Conflict):
        store.claim(record)  # stale resourceVersion


def test_fake_before_create_hook_runs_before_the_write():
    store = FakeHostIdStore()
    seen = []
    store.before_create.append(lambda body: seen.append((body["metadata"]["name"], store.writes)))
    store.create(hostid_body("ls", "a", 1))
    assert seen == [("ls.1", 0)]
