"""The operator's fake HostIdStore is an adapter over the one in-memory API server
(``fake_kube_api``, whose own tests check the server's semantics). These tests check that the
adapter hides nothing of it: the operator's allocation must meet the same 409s, preconditions and
finalizers as the agent's sync, or allocation tests would prove nothing. (The envtest tier
checks the real server.)"""

from __future__ import annotations

import pytest
from fake_hostid_store import FakeHostIdStore
from fake_kube_api import FakeKubeApi
from vmlease_api import naming
from vmlease_api.errors import AlreadyExists, Conflict, NotFound, Refused
from vmlease_operator.hostid_writes import hostid_body


def test_the_store_writes_to_the_api_server_the_agent_reads():
    api = FakeKubeApi()
    store = FakeHostIdStore(api)
    created = store.create(hostid_body("ls", "a", 1))
    items, _ = api.list("hostids", label_selector=naming.node_selector("ls", "a"))
    assert items == [created]
    # The agent's status write moves the version the operator's guarded delete relies on.
    api.patch_status(
        "hostids", "ls.1", {"state": "Joining"}, created["metadata"]["resourceVersion"]
    )
    with pytest.raises(Conflict):
        store.delete("ls.1", created["metadata"]["resourceVersion"])


def test_the_server_s_refusals_reach_the_allocator_as_they_are():
    store = FakeHostIdStore()
    store.create(hostid_body("ls", "a", 1))
    with pytest.raises(AlreadyExists):
        store.create(hostid_body("ls", "b", 1))
    misnamed = hostid_body("ls", "a", 1)
    misnamed["metadata"]["name"] = "ls.2"
    with pytest.raises(Refused):
        store.create(misnamed)
    with pytest.raises(NotFound):
        store.delete("ls.9", "1")
    assert [r.node for r in store.records()] == ["a"]


def test_release_s_two_writes_go_through_the_finalizer():
    store = FakeHostIdStore()
    created = store.create(hostid_body("ls", "a", 1))
    terminating = store.delete("ls.1", created["metadata"]["resourceVersion"])
    assert terminating["metadata"]["finalizers"] == [naming.HOSTID_FINALIZER]
    assert store.records()[0].terminating
    store.set_finalizers("ls.1", [], terminating["metadata"]["resourceVersion"])
    assert store.objects == {}


def test_list_for_node_filters_by_labels_and_exact_node_name_and_counts_reads():
    store = FakeHostIdStore()
    store.create(hostid_body("ls", "a", 1))
    store.create(hostid_body("ls", "b", 2))
    store.create(hostid_body("other", "a", 1))
    # Same node label (a long name is a digest), another node name: not this node's.
    lookalike = hostid_body("ls", "a", 3)
    lookalike["spec"]["nodeName"] = "a-but-longer"
    store.create(lookalike)
    assert [r.name for r in store.list_for_node("ls", "a")] == ["ls.1"]
    assert (store.writes, store.reads) == (4, 1)
    store.records()  # the watch's view is not a request
    assert store.reads == 1


def test_claim_refuses_terminating_and_stale_records():
    store = FakeHostIdStore()
    store.create(hostid_body("ls", "a", 1))
    (record,) = store.records()
    claimed = store.claim(record)
    assert claimed.claimed
    with pytest.raises(Conflict):
        store.claim(record)  # stale resourceVersion
    terminating = store.delete(claimed.name, claimed.resource_version)
    (record,) = store.records()
    assert terminating is not None and record.terminating
    with pytest.raises(Conflict):
        store.claim(record)


def test_before_create_hook_runs_before_the_write():
    store = FakeHostIdStore()
    seen = []
    store.before_create.append(lambda body: seen.append((body["metadata"]["name"], store.writes)))
    store.create(hostid_body("ls", "a", 1))
    assert seen == [("ls.1", 0)]
    assert store.writes == 1
