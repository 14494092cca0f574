"""DiskLease status from the agent's lease table: the merge rules (``lease_status``) and the
publisher's writes against the fake API (``lease_publisher``)."""

from __future__ import annotations

import datetime
from typing import Any

from fake_kube_api import FakeKubeApi
from kube_builders import disklease, lockspace
from kube_builders import lease as wire_lease
from vmlease_agent.core.snapshot import LeaseSnapshot
from vmlease_agent.kube import lease_status
from vmlease_agent.kube.lease_publisher import LeasePublisher
from vmlease_api.models import DiskLease, DiskLeaseStatus, Holder, LeasePhase, Lockspace
from vmlease_api.naming import disk_resource_name

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SHARED = "/shared"
PATH = "/shared/res1.lease"


def lease(*args: Any, **kw: Any) -> LeaseSnapshot:
    """A lease as the agent's snapshot has it (built from its wire form)."""
    return LeaseSnapshot.from_wire(wire_lease(*args, **kw))


def view(*leases: LeaseSnapshot, node: str = "n1") -> lease_status.HeldView:
    views, skipped = lease_status.held_views(leases, node)
    assert not skipped
    (only,) = views.values()
    return only


# --- pure rules ----------------------------------------------------------------------------------


def test_held_views_group_by_object_name_and_skip_names_that_cannot_be_objects():
    views, skipped = lease_status.held_views(
        [lease("ls", "res1", PATH), lease("ls", "Res_2", PATH)], "n1"
    )
    assert list(views) == ["ls.res1"] and skipped == ["ls:Res_2"]
    holder = views["ls.res1"].holders[0]
    assert (holder.node, holder.host_id, holder.pid, holder.process) == ("n1", 1, 4242, "vm1")
    assert holder.since == datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_a_libvirt_placeholder_is_shown_as_a_domain():
    v = view(lease("ls", "res1", PATH, pid=0, holder="libvirt:1234", owner="web1"))
    assert v.holders[0].domain == "web1" and v.holders[0].process is None


def test_an_exclusive_hold_replaces_whatever_the_object_said():
    old = DiskLeaseStatus(phase=LeasePhase.HELD, holder=Holder(node="n2", host_id=2), lver=3)
    new = lease_status.held_status(old, view(lease("ls", "res1", PATH, lver=4)), "n1", T0, 1)
    assert new.phase == LeasePhase.HELD and new.holder.node == "n1" and new.lver == 4
    held = next(c for c in new.conditions if c.type == "Held")
    assert held.status == "True" and "node n1 (host_id 1, vm1, pid 4242)" in held.message


def test_a_pending_request_shows_the_lease_contended_until_it_is_gone():
    asked = {**wire_lease("ls", "res1", PATH, lver=4), "request": {"lver": 5, "force_mode": 2}}
    v = view(LeaseSnapshot.from_wire(asked))
    new = lease_status.held_status(DiskLeaseStatus(), v, "n1", T0, 1)
    assert new.phase == LeasePhase.CONTENDED and new.holder.node == "n1"
    held = next(c for c in new.conditions if c.type == "Held")
    assert held.reason == "Contended" and "requested it (lver 5)" in held.message
    assert "kill command or SIGTERM" in held.message
    calm = view(lease("ls", "res1", PATH, lver=4))
    assert calm.key() != v.key()  # the publisher writes again when the request is gone
    assert lease_status.held_status(new, calm, "n1", T0, 1).phase == LeasePhase.HELD


def test_shared_holders_are_merged_per_node():
    other = Holder(node="n2", host_id=2, pid=7)
    old = DiskLeaseStatus(phase=LeasePhase.SHARED, shared_holders=[other])
    v = view(lease("ls", "res1", PATH, shared=True), lease("ls", "res1", PATH, pid=5, shared=True))
    new = lease_status.held_status(old, v, "n1", T0, 1)
    assert new.phase == LeasePhase.SHARED and new.holder is None
    assert [(h.node, h.pid) for h in new.shared_holders] == [("n2", 7), ("n1", 4242), ("n1", 5)]
    released = lease_status.released_status(new, "n1", T0, 1)
    assert released.phase == LeasePhase.SHARED and [h.node for h in released.shared_holders] == [
        "n2"
    ]
    assert lease_status.released_status(released, "n2", T0, 1).phase == LeasePhase.FREE


def test_a_late_release_leaves_the_next_holder_alone():
    taken = DiskLeaseStatus(phase=LeasePhase.HELD, holder=Holder(node="n2", host_id=2), lver=5)
    assert lease_status.released_status(taken, "n1", T0, 1) is None
    mine = DiskLeaseStatus(phase=LeasePhase.HELD, holder=Holder(node="n1", host_id=1), lver=5)
    freed = lease_status.released_status(mine, "n1", T0, 1)
    assert freed.phase == LeasePhase.FREE and freed.holder is None and freed.lver == 5


def test_automatic_disk_leases_are_only_those_in_the_lockspaces_directory():
    auto = Lockspace.model_validate(lockspace(auto=True))
    manual = Lockspace.model_validate(lockspace())
    inside = view(lease("ls", "abc", "/shared/leases/abc"))
    body = lease_status.auto_disk_lease(auto, inside, SHARED)
    assert body["metadata"]["name"] == "ls.abc"
    assert body["metadata"]["labels"] == {"vmlease.io/lockspace": "ls", "vmlease.io/auto": "true"}
    assert body["spec"] == {
        "lockspace": "ls",
        "resource": "abc",
        "lease": {"path": "leases/abc", "offset": 0},
    }
    assert lease_status.auto_disk_lease(manual, inside, SHARED) is None
    assert lease_status.auto_disk_lease(auto, view(lease("ls", "abc", PATH)), SHARED) is None
    assert lease_status.auto_disk_lease(None, inside, SHARED) is None


def _disk_lease_of(disk: str | None, resource: str) -> dict:
    auto = Lockspace.model_validate(lockspace(auto=True))
    held = LeaseSnapshot.from_wire(
        {**wire_lease("ls", resource, f"/shared/leases/{resource}"), "disk_path": disk}
    )
    body = lease_status.auto_disk_lease(auto, view(held), SHARED)
    assert body is not None
    return body


def test_an_automatic_disk_lease_says_which_disk_it_protects():
    path = "/var/lib/libvirt/images/demo.img"
    body = _disk_lease_of(path, disk_resource_name(path))
    assert body["spec"]["diskPath"] == path
    identity = "pvc-7d1e3c2a"
    body = _disk_lease_of(identity, disk_resource_name(identity))
    assert body["metadata"]["labels"]["vmlease.io/disk-identity"] == identity
    assert "diskPath" not in body["spec"]


def test_a_disk_that_does_not_hash_to_the_lease_name_is_not_shown_safety():
    """A person finding a lease by its disk must find the right one: what the acquirer said is
    shown only if it really is what the lease's name hashes."""
    body = _disk_lease_of("/img/other.img", disk_resource_name("/img/a.img"))
    assert "diskPath" not in body["spec"]
    assert "vmlease.io/disk-identity" not in body["metadata"]["labels"]


def test_a_spec_that_names_another_location_is_flagged():
    obj = DiskLease.model_validate(disklease("ls", "res1", "other.lease"))
    message = lease_status.location_mismatch(obj, view(lease("ls", "res1", PATH)), SHARED)
    assert "/shared/other.lease:0" in message and PATH in message
    ok = DiskLease.model_validate(disklease("ls", "res1", "res1.lease"))
    assert lease_status.location_mismatch(ok, view(lease("ls", "res1", PATH)), SHARED) == ""


# --- the publisher against the fake API -----------------------------------------------------------


def publisher(api: FakeKubeApi, node: str = "n1", said: list | None = None) -> LeasePublisher:
    said = said if said is not None else []
    return LeasePublisher(
        api, node, SHARED, lambda: 1767225600.0, 30, 600, lambda k, m: said.append(m)
    )


def status(api: FakeKubeApi, name: str = "ls.res1") -> DiskLeaseStatus:
    return DiskLease.model_validate(api.obj("diskleases", name)).status


def test_publish_writes_on_change_only_and_clears_on_release():
    api = FakeKubeApi()
    api.put("diskleases", disklease("ls", "res1", "res1.lease"))
    pub = publisher(api)
    held = [lease("ls", "res1", PATH)]
    pub.publish(held, lambda name: None, 0)
    assert status(api).holder.node == "n1"
    writes = len(api.writes)
    for t in range(1, 10):
        pub.publish(held, lambda name: None, t)
    assert len(api.writes) == writes  # nothing changed, nothing written
    pub.publish([], lambda name: None, 11)
    assert status(api).phase == LeasePhase.FREE and status(api).holder is None


def test_a_release_written_late_does_not_hide_the_new_holder():
    api = FakeKubeApi()
    api.put("diskleases", disklease("ls", "res1", "res1.lease"))
    a, b = publisher(api, "n1"), publisher(api, "n2")
    a.publish([lease("ls", "res1", PATH)], lambda name: None, 0)
    b.publish([lease("ls", "res1", PATH, host_id=2, lver=2)], lambda name: None, 1)
    a.publish([], lambda name: None, 2)  # n1's release reaches the API after n2's acquire
    assert status(api).phase == LeasePhase.HELD and status(api).holder.node == "n2"
    assert "ls.res1" not in a.published


def test_a_missing_manual_disklease_is_explained_once_and_automatic_ones_are_created():
    api = FakeKubeApi()
    said: list[str] = []
    pub = publisher(api, said=said)
    pub.publish([lease("ls", "res1", PATH)], lambda name: None, 0)
    pub.publish([lease("ls", "res1", PATH)], lambda name: None, 1)
    assert len(said) == 1 and "no DiskLease ls.res1 exists: create one" in said[0]
    assert api.writes == []
    auto = Lockspace.model_validate(lockspace(auto=True))
    pub.publish([lease("ls", "abc", "/shared/leases/abc")], lambda name: auto, 2)
    assert status(api, "ls.abc").holder.node == "n1"
    assert [v for v, *_ in api.writes] == ["create", "patch_status"]


def test_a_resync_clears_holds_released_while_the_agent_was_away():
    api = FakeKubeApi()
    api.put("diskleases", disklease("ls", "res1", "res1.lease"))
    publisher(api).publish([lease("ls", "res1", PATH)], lambda name: None, 0)
    restarted = publisher(api)  # a new agent process: nothing published in memory
    restarted.publish([], lambda name: None, 0)
    assert status(api).phase == LeasePhase.FREE


# --- Orphaned: the lockspace reporter's word on other nodes' leases ----------------------------


def row(host_id: int, name: str, state: str, renewed_ago: float | None = 20.0) -> dict:
    return {"host_id": host_id, "name": name, "state": state, "renewed_ago": renewed_ago}


def held_by(node: str, host_id: int, phase: LeasePhase = LeasePhase.HELD) -> DiskLease:
    body = disklease("ls", "res1", "res1.lease")
    lease = DiskLease.model_validate(body)
    lease.status = DiskLeaseStatus(phase=phase, holder=Holder(node=node, host_id=host_id), lver=3)
    return lease


def test_a_lease_whose_holder_host_stopped_renewing_is_orphaned_with_its_free_time():
    [(_, new)] = lease_status.orphan_updates(
        [held_by("n2", 2)], "ls", [row(2, "n2", "fail", renewed_ago=20)], 26, T0
    )
    assert new.phase == LeasePhase.ORPHANED and new.holder.node == "n2"  # still its holder
    assert new.free_after == T0 + datetime.timedelta(seconds=6)
    held = next(c for c in new.conditions if c.type == "Held")
    assert "stopped renewing" in held.message and "free after" in held.message
    # and back to Held when that host renews again
    again = held_by("n2", 2, LeasePhase.ORPHANED)
    [(_, back)] = lease_status.orphan_updates([again], "ls", [row(2, "n2", "live")], 26, T0)
    assert back.phase == LeasePhase.HELD and back.free_after is None


def test_orphaned_is_said_only_on_the_disks_word_about_that_very_holder():
    live = [row(2, "n2", "live")]
    assert not lease_status.orphan_updates([held_by("n2", 2)], "ls", live, 26, T0)
    # the row is an earlier holder of the id (another node's name): it says nothing of n2
    other = [row(2, "n9", "dead")]
    assert not lease_status.orphan_updates([held_by("n2", 2)], "ls", other, 26, T0)
    # another lockspace's lease, or one already Orphaned, is not written again
    dead = [row(2, "n2", "dead")]
    assert not lease_status.orphan_updates([held_by("n2", 2)], "other", dead, 26, T0)
    orphaned = held_by("n2", 2, LeasePhase.ORPHANED)
    assert not lease_status.orphan_updates([orphaned], "ls", dead, 26, T0)


def test_a_contended_lease_whose_holder_host_stopped_renewing_is_orphaned():
    contended = held_by("n2", 2, LeasePhase.CONTENDED)
    [(_, new)] = lease_status.orphan_updates([contended], "ls", [row(2, "n2", "dead")], 26, T0)
    assert new.phase == LeasePhase.ORPHANED


def test_taking_an_orphaned_lease_over_clears_its_free_time():
    old = held_by("n2", 2, LeasePhase.ORPHANED).status
    old.free_after = T0
    new = lease_status.held_status(old, view(lease("ls", "res1", PATH, lver=4)), "n1", T0, 1)
    assert new.phase == LeasePhase.HELD and new.holder.node == "n1" and new.free_after is None


def test_the_reporter_writes_other_nodes_leases_orphaned_never_its_own():
    api = FakeKubeApi()
    for resource, node, host_id in (("res1", "n2", 2), ("res2", "n1", 1)):
        body = disklease("ls", resource, f"{resource}.lease")
        body["status"] = {"phase": "Held", "holder": {"node": node, "hostId": host_id}}
        api.put("diskleases", body)
    rows = [row(1, "n1", "fail"), row(2, "n2", "dead")]
    publisher(api).report_orphans("ls", rows, 26)
    assert status(api, "ls.res1").phase == LeasePhase.ORPHANED
    assert status(api, "ls.res2").phase == LeasePhase.HELD  # ours: our own publisher says
