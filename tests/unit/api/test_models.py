"""The models' own validation (the pydantic twins of the CRD's CEL rules), names and conditions."""

from __future__ import annotations

import datetime

import pytest
from pydantic import ValidationError
from vmlease_api import conditions, naming
from vmlease_api.models import (
    ConditionStatus,
    DiskLeaseSpec,
    HostId,
    LabelSelectorRequirement,
    LockspaceSpec,
)

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("sector", "align", "expected"),
    [
        (512, "1M", 2000),
        (4096, "1M", 250),
        (4096, "2M", 500),
        (4096, "4M", 1000),
        (4096, "8M", 2000),
    ],
)
def test_max_hosts_follows_geometry(sector, align, expected):
    spec = LockspaceSpec(path="ls", sector_size=sector, align_size=align)
    assert spec.effective_max_hosts == expected
    with pytest.raises(ValidationError, match=r"exceeds|less than or equal to 2000"):
        LockspaceSpec(path="ls", sector_size=sector, align_size=align, max_hosts=expected + 1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sector_size": 512, "align_size": "2M"}, "512-byte sectors"),
        ({"offset": 4096}, "multiple of alignSize"),
        ({"io_timeout_seconds": 256}, "less than or equal to 255"),
        ({"io_timeout_seconds": 0}, "greater than or equal to 1"),
        ({"sector_size": 1024}, "512 or 4096"),
        ({"align_size": "3M"}, "'1M', '2M', '4M' or '8M'"),
        ({"path": "../etc/shadow"}, "pattern"),
        ({"path": "/etc/shadow"}, "pattern"),
        ({"path": "a/../../b"}, "pattern"),
    ],
)
def test_invalid_lockspace_specs_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        LockspaceSpec.model_validate({"path": "ls", **fields})


@pytest.mark.parametrize("path", ["ls", "lockspaces/ls1", "/dev/disk/by-id/wwn-0x5", "a/..b/.c"])
def test_lease_paths_stay_under_the_shared_volume_or_dev(path):
    assert LockspaceSpec(path=path).path == path


def test_selector_requirement_values_match_operator():
    LabelSelectorRequirement(key="k", operator="Exists")
    with pytest.raises(ValidationError):
        LabelSelectorRequirement(key="k", operator="In")
    with pytest.raises(ValidationError):
        LabelSelectorRequirement(key="k", operator="Exists", values=["x"])


def test_disk_lease_needs_resource_or_disk_path():
    with pytest.raises(ValidationError, match="diskPath"):
        DiskLeaseSpec(lockspace="ls", lease={"path": "leases/x"})
    DiskLeaseSpec(lockspace="ls", disk_path="/vm.img", lease={"path": "leases/x"})


def test_names_encode_what_must_be_unique():
    assert naming.hostid_name("ls1", 12) == "ls1.12"
    assert naming.disklease_name("ls1", "abc") == "ls1.abc"


def test_node_label_value_is_a_valid_label_even_for_long_names():
    assert naming.node_label_value("node-a.example.com") == "node-a.example.com"
    long_name = "n" * 64 + ".example.com"
    value = naming.node_label_value(long_name)
    assert len(value) <= 63 and value != naming.node_label_value(long_name + "x")
    assert naming.node_selector("ls", "a") == "vmlease.io/lockspace=ls,vmlease.io/node=a"


def test_to_api_omits_unset_fields_and_uses_camel_case():
    body = HostId(spec={"lockspace": "ls", "node_name": "n", "host_id": 3}).to_api()
    assert body["spec"] == {"lockspace": "ls", "nodeName": "n", "hostId": 3}
    assert body["status"] == {"conditions": []}
    assert body["apiVersion"] == "vmlease.io/v1alpha1"


def test_condition_transition_time_moves_only_when_status_changes():
    later = T0 + datetime.timedelta(hours=1)
    first = conditions.set_condition([], "Ready", ConditionStatus.TRUE, "Ok", "m", 1, at=T0)
    same = conditions.set_condition(first, "Ready", ConditionStatus.TRUE, "Ok", "m2", 2, at=later)
    assert same[0].last_transition_time == T0 and same[0].message == "m2"
    assert same[0].observed_generation == 2
    flipped = conditions.set_condition(same, "Ready", ConditionStatus.FALSE, "No", "m", 2, at=later)
    assert flipped[0].last_transition_time == later


def test_set_condition_keeps_other_conditions_in_place():
    cs = conditions.set_condition([], "A", ConditionStatus.TRUE, "R", "", at=T0)
    cs = conditions.set_condition(cs, "B", ConditionStatus.TRUE, "R", "", at=T0)
    cs = conditions.set_condition(cs, "A", ConditionStatus.FALSE, "R", "", at=T0)
    assert [c.type for c in cs] == ["A", "B"]
    assert conditions.find_condition(cs, "B").status == ConditionStatus.TRUE
    assert conditions.find_condition(cs, "C") is None


def test_host_id_name_must_encode_lockspace_and_id():
    spec = {"lockspace": "ls", "node_name": "n", "host_id": 7}
    HostId(metadata={"name": "ls.7"}, spec=spec)
    for wrong in ("ls.007", "ls.8", "other.7"):
        with pytest.raises(ValidationError, match=r"named <lockspace>\.<hostId>"):
            HostId(metadata={"name": wrong}, spec=spec)
