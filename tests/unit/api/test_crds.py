"""The generated CRDs: in sync with the models, structural, and declaring every field we write.

A CRD the API server accepts can still lose data silently: fields missing from a structural schema
are pruned on write (kopf's "status silently dropped" pitfall). These tests fail first.
"""

from __future__ import annotations

import datetime
import importlib.util
from typing import Any

import pytest
import yaml
from vmlease_api import crd as crdgen
from vmlease_api import gen
from vmlease_api.models import (
    ALIGN_BYTES,
    MAX_HOSTS,
    AutoDiskLeases,
    Condition,
    ConditionStatus,
    DiskLease,
    DiskLeaseSpec,
    DiskLeaseStatus,
    FormatRequest,
    Holder,
    HostId,
    HostIdSpec,
    HostIdStatus,
    HostState,
    LabelSelector,
    LabelSelectorRequirement,
    LeaseLocation,
    LeasePhase,
    Lockspace,
    LockspaceSpec,
    LockspaceStatus,
    ObjectMeta,
    SelectorOperator,
)

T = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
KINDS = (Lockspace, HostId, DiskLease)


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _pruned(obj: Any, schema: dict[str, Any]) -> Any:
    """What the API server keeps of ``obj`` under ``schema`` (unknown fields are dropped)."""
    if isinstance(obj, dict) and "properties" in schema:
        return {
            k: _pruned(v, schema["properties"][k])
            for k, v in obj.items()
            if k in schema["properties"]
        }
    if isinstance(obj, dict) and "additionalProperties" in schema:
        return {k: _pruned(v, schema["additionalProperties"]) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_pruned(v, schema["items"]) for v in obj]
    return obj


def _condition() -> Condition:
    return Condition(
        type="Ready", status=ConditionStatus.TRUE, reason="AllHostsLive", message="m",
        observed_generation=3, last_transition_time=T,
    )  # fmt: skip


def _holder() -> Holder:
    return Holder(
        node="node-a", host_id=7, generation=2, pid=4242, process="qemu", domain="vm1", since=T
    )


def _full_objects() -> list[dict[str, Any]]:
    """One object of each kind with every field set, as the operator and agents write them."""
    ls = Lockspace(
        metadata=ObjectMeta(name="ls1"),
        spec=LockspaceSpec(
            path="lockspaces/ls1", offset=2097152, sector_size=4096, align_size="2M",
            max_hosts=100, io_timeout_seconds=10, watchdog_fire_timeout_seconds=60,
            node_selector=LabelSelector(
                match_labels={"vmlease.io/enabled": "true"},
                match_expressions=[
                    LabelSelectorRequirement(key="zone", operator=SelectorOperator.IN, values=["a"])
                ],
            ),
            auto_disk_leases=AutoDiskLeases(enabled=True, directory="leases"),
        ),
        status=LockspaceStatus(
            formatted=True, formatted_by="node-a", formatted_at=T,
            format_request=FormatRequest(node="node-a", host_id=1, requested_at=T),
            allocated_hosts=3, live_hosts=2, failover_seconds=140, observed_generation=1,
            conditions=[_condition()],
        ),
    )  # fmt: skip
    hid = HostId(
        metadata=ObjectMeta(name="ls1.7"),
        spec=HostIdSpec(lockspace="ls1", node_name="node-a", host_id=7),
        status=HostIdStatus(
            state=HostState.LIVE, state_since=T, observed_by="node-a", generation=4,
            last_renewal=T, renewal_latency_ms=3, conditions=[_condition()],
        ),
    )  # fmt: skip
    dl = DiskLease(
        metadata=ObjectMeta(name="ls1.abc"),
        spec=DiskLeaseSpec(
            lockspace="ls1", resource="abc", disk_path="/var/lib/vm1.qcow2",
            lease=LeaseLocation(path="leases/abc", offset=0),
        ),
        status=DiskLeaseStatus(
            phase=LeasePhase.SHARED, holder=_holder(), shared_holders=[_holder()], lver=9,
            observed_generation=1, conditions=[_condition()],
        ),
    )  # fmt: skip
    return [m.to_api() for m in (ls, hid, dl)]


def test_crds_match_models(tmp_path):
    """crds/*.yaml or the chart's copies drifted from the models: run `make crds` and commit the
    result."""
    assert gen.stale_files() == []
    assert {p.parent for p in gen.targets(None)} == {gen.DEFAULT_DIR, gen.CHART / "crds"}
    assert gen.main(["--check", str(tmp_path)]) == 1
    assert gen.main([str(tmp_path)]) == 0
    assert gen.stale_files(tmp_path) == []


@pytest.mark.parametrize("model", KINDS, ids=lambda m: m.__name__)
def test_schema_is_structural(model):
    """The API server rejects $ref, anyOf/oneOf/allOf and untyped nodes (structural schemas)."""
    schema = crdgen.structural_schema(model)
    for path, node in _walk(schema):
        if "properties" in path.rsplit("/", 1)[-1:] or path.endswith("/x-kubernetes-validations"):
            continue
        for forbidden in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "nullable"):
            assert forbidden not in node, f"{model.__name__}{path} has {forbidden}"
        if path.endswith("/properties"):
            continue
        if any(key in node for key in ("type", "properties", "items", "enum")):
            assert "type" in node, f"{model.__name__}{path} has no type"
            assert node["type"] != "null"


@pytest.mark.parametrize("obj", _full_objects(), ids=lambda o: o["kind"])
def test_every_written_field_is_declared(obj):
    """Nothing the operator or an agent writes is pruned by the API server."""
    model = {m.crd.kind: m for m in KINDS}[obj["kind"]]
    schema = crdgen.structural_schema(model)
    del schema["properties"]["metadata"]  # the API server keeps ObjectMeta whole
    body = {k: v for k, v in obj.items() if k != "metadata"}
    assert _pruned(body, schema) == body


@pytest.mark.parametrize("model", KINDS, ids=lambda m: m.__name__)
def test_printer_columns_point_at_declared_fields(model):
    schema = crdgen.structural_schema(model)
    for column in model.crd.columns:
        node = schema
        path = column.json_path.split("[", 1)[0].strip(".").split(".")
        if path[0] == "metadata":
            continue
        for part in path:
            node = node["items"] if node.get("type") == "array" else node
            node = node["properties"][part]
        expected = "string" if column.type == "date" else column.type
        assert node["type"] in (expected, "array"), column


def test_crd_names_and_subresources():
    by_kind = {c["spec"]["names"]["kind"]: c for c in map(crdgen.crd, KINDS)}
    assert {k: c["spec"]["names"]["shortNames"] for k, c in by_kind.items()} == {
        "Lockspace": ["ls"],
        "HostId": ["hid"],
        "DiskLease": ["dl"],
    }
    for c in by_kind.values():
        assert c["spec"]["scope"] == "Cluster"
        assert c["spec"]["names"]["categories"] == ["vmlease"]
        (version,) = c["spec"]["versions"]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}


def test_conditions_follow_metav1_condition():
    schema = crdgen.structural_schema(HostId)["properties"]["status"]["properties"]["conditions"]
    assert schema["x-kubernetes-list-type"] == "map"
    assert schema["x-kubernetes-list-map-keys"] == ["type"]
    item = schema["items"]
    assert set(item["properties"]) == {
        "type", "status", "observedGeneration", "lastTransitionTime", "reason", "message",
    }  # fmt: skip
    assert set(item["required"]) >= {"type", "status", "lastTransitionTime", "reason"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_host_id_is_immutable_and_named_by_id():
    schema = crdgen.structural_schema(HostId)
    rules = schema["properties"]["spec"]["properties"]["hostId"]["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf"}.items() <= rules[0].items()
    assert "== self.spec.hostId" in schema["x-kubernetes-validations"][0]["rule"]


def test_generated_yaml_is_loadable_multi_kind():
    for text in gen.render().values():
        doc = yaml.safe_load(text)
        assert doc["kind"] == "CustomResourceDefinition"


@pytest.mark.skipif(
    importlib.util.find_spec("vmlease_agent.engine.ondisk") is None, reason="engine not written yet"
)
def test_api_geometry_and_limits_match_the_engine():
    """The API validates with the engine's numbers (they are duplicated only as schema data)."""
    from vmlease_agent.engine import ondisk, timeouts

    assert {(s, ALIGN_BYTES[a]): n for (s, a), n in MAX_HOSTS.items()} == {
        k: v[0] for k, v in ondisk.SIZE_CLASSES.items()
    }
    io = LockspaceSpec.model_json_schema(by_alias=True)["properties"]["ioTimeoutSeconds"]
    assert io["maximum"] == timeouts.MAX_IO_TIMEOUT
    assert io["default"] == timeouts.DEFAULT_IO_TIMEOUT
