"""Domain XML → leases: the rules the libvirt hook and the agent rely on (pure, no libvirt)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from vmlease_agent.virt.domain import (
    METADATA_NS,
    DiskIdentityError,
    DiskPathError,
    DomainXMLError,
    ExplicitLease,
    InvalidDomainXML,
    LeaseElementError,
    LeaseMode,
    UnparseableDomainXML,
    canonical_path,
    disk_resource_name,
    parse_domain,
)


def same(path: str) -> str:
    """A resolver for XML that names paths which do not exist on this machine."""
    return path


def disk(
    path: str = "/images/a.qcow2",
    dev: str = "vda",
    kind: str = "file",
    extra: str = "",
) -> str:
    attr = {"file": "file", "block": "dev", "dir": "dir"}.get(kind, "file")
    return (
        f"<disk type='{kind}' device='disk'><source {attr}='{path}'/>"
        f"<target dev='{dev}' bus='virtio'/>{extra}</disk>"
    )


def domain(*devices: str, metadata: str = "", head: str = "") -> str:
    meta = (
        f"<metadata><vmlease:leases xmlns:vmlease='{METADATA_NS}'>{metadata}"
        "</vmlease:leases></metadata>"
        if metadata
        else ""
    )
    return (
        "<domain type='qemu'><name>vm1</name>"
        "<uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>"
        f"{meta}{head}<devices>{''.join(devices)}</devices></domain>"
    )


def lease(key: str = "vm-key", lockspace: str = "LS", path: str = "/l", offset: str = "0") -> str:
    return (
        f"<lease><lockspace>{lockspace}</lockspace><key>{key}</key>"
        f"<target path='{path}' offset='{offset}'/></lease>"
    )


# ---- resource names ---------------------------------------------------------------------------


def test_resource_name_matches_libvirt_documented_example():
    assert (
        disk_resource_name("/var/lib/libvirt/images/demo.img") == "bfa0240911bc17753e0b473688822159"
    )


@pytest.mark.parametrize(
    "path",
    [
        "/var/lib/libvirt/images/lvt1.qcow2",
        "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
        "/srv/nfs/vm images/ünïcode.raw",
        "/",
    ],
)
def test_resource_name_is_lowercase_hex_md5_of_the_path_bytes(path):
    name = disk_resource_name(path)
    assert name == hashlib.md5(path.encode()).hexdigest()
    assert len(name) == 32 and name == name.lower()


def test_resource_name_of_reference_lab_image_matches_what_sanlock_showed():
    # libvirt-lab.md §5: `sanlock client status` showed this name for lvt1.qcow2.
    assert (
        disk_resource_name("/var/lib/libvirt/images/lvt1.qcow2")
        == "c64cd7a3b3c7d610c407ef6328fa1d37"
    )


# ---- domain identity --------------------------------------------------------------------------


def test_name_uuid_and_on_lockfailure_are_read():
    d = parse_domain(domain(head="<on_lockfailure>poweroff</on_lockfailure>"), resolve=same)
    assert (d.name, d.uuid, d.on_lockfailure) == (
        "vm1",
        "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
        "poweroff",
    )


def test_on_lockfailure_absent_is_none_and_uuid_optional():
    d = parse_domain("<domain><name>x</name></domain>", resolve=same)
    assert (d.uuid, d.on_lockfailure, d.disks, d.leases) == (None, None, (), ())


def test_unknown_on_lockfailure_is_refused_with_the_allowed_values():
    with pytest.raises(InvalidDomainXML, match="poweroff") as e:
        parse_domain(domain(head="<on_lockfailure>explode</on_lockfailure>"), resolve=same)
    assert "'vm1'" in str(e.value)


def test_unparseable_xml_raises_a_clear_error_not_a_parser_exception():
    with pytest.raises(UnparseableDomainXML, match=r"not well-formed.*virsh dumpxml"):
        parse_domain("<domain><name>x</name>", resolve=same)


def test_bytes_input_is_accepted_like_hook_stdin():
    assert parse_domain(domain(disk()).encode(), resolve=same).name == "vm1"


def test_non_domain_root_and_missing_name_are_refused():
    with pytest.raises(InvalidDomainXML, match="<network>"):
        parse_domain("<network><name>n</name></network>", resolve=same)
    with pytest.raises(InvalidDomainXML, match="no <name>"):
        parse_domain("<domain/>", resolve=same)


def test_all_errors_share_one_base_class_and_keep_their_fields():
    with pytest.raises(DomainXMLError) as e:
        parse_domain(domain(disk(path="relative.img")))
    assert e.value.fields["disk"] == "vda" and isinstance(e.value, ValueError)


# ---- modes --------------------------------------------------------------------------------------


def test_read_write_disk_gets_an_exclusive_lease_named_after_its_path():
    (d,) = parse_domain(domain(disk("/images/a.qcow2")), resolve=same).disks
    assert d.mode is LeaseMode.EXCLUSIVE
    assert d.resource == disk_resource_name("/images/a.qcow2")
    assert (d.target, d.source, d.path, d.identity) == (
        "vda",
        "/images/a.qcow2",
        "/images/a.qcow2",
        None,
    )


def test_readonly_disk_gets_a_shared_lease_unlike_libvirt_which_gives_none():
    (d,) = parse_domain(domain(disk(extra="<readonly/>")), resolve=same).disks
    assert d.mode is LeaseMode.SHARED and d.resource is not None
    assert "writer elsewhere is refused" in d.reason


def test_shareable_disk_gets_a_shared_lease():
    (d,) = parse_domain(domain(disk(extra="<shareable/>")), resolve=same).disks
    assert d.mode is LeaseMode.SHARED


def test_readonly_and_shareable_together_is_shared():
    (d,) = parse_domain(domain(disk(extra="<readonly/><shareable/>")), resolve=same).disks
    assert d.mode is LeaseMode.SHARED


@pytest.mark.parametrize("kind", ["file", "block", "dir"])
def test_local_storage_types_are_leased(kind):
    (d,) = parse_domain(domain(disk("/dev/sdz", kind=kind)), resolve=same).disks
    assert d.mode is LeaseMode.EXCLUSIVE and d.path == "/dev/sdz"


def test_disk_without_type_defaults_to_file_like_libvirt():
    xml = domain("<disk device='disk'><source file='/i.raw'/><target dev='vda'/></disk>")
    (d,) = parse_domain(xml, resolve=same).disks
    assert d.mode is LeaseMode.EXCLUSIVE


@pytest.mark.parametrize("kind", ["network", "volume", "nvme", "vhostuser"])
def test_non_path_storage_is_not_leased_and_says_why(kind):
    xml = domain(
        f"<disk type='{kind}' device='disk'><source protocol='rbd' name='p/i'/>"
        "<target dev='vdb'/></disk>"
    )
    (d,) = parse_domain(xml, resolve=same).disks
    assert (d.mode, d.resource, d.path) == (LeaseMode.NONE, None, None)
    assert kind in d.reason and "only file, block and dir" in d.reason


def test_empty_cdrom_is_not_leased_and_says_why():
    xml = domain("<disk type='file' device='cdrom'><target dev='sda'/><readonly/></disk>")
    (d,) = parse_domain(xml, resolve=same).disks
    assert d.mode is LeaseMode.NONE and "empty drive" in d.reason


def test_disk_without_target_is_named_by_its_position():
    xml = domain(disk(), "<disk type='file'><source file='/b'/></disk>")
    assert [d.target for d in parse_domain(xml, resolve=same).disks] == ["vda", "#1"]


def test_same_image_twice_is_one_resource_and_exclusive_wins():
    xml = domain(
        disk("/iso", "sda", extra="<readonly/>"),
        disk("/iso", "sdb", extra="<readonly/>"),
        disk("/img", "vda", extra="<readonly/>"),
        disk("/img", "vdb"),
    )
    assert parse_domain(xml, resolve=same).disk_resources() == {
        disk_resource_name("/iso"): LeaseMode.SHARED,
        disk_resource_name("/img"): LeaseMode.EXCLUSIVE,
    }


# ---- canonical paths ----------------------------------------------------------------------------


def test_symlinked_path_is_leased_under_its_canonical_name(tmp_path: Path):
    image = tmp_path / "real.qcow2"
    image.touch()
    (tmp_path / "link.qcow2").symlink_to(image)
    (d,) = parse_domain(domain(disk(str(tmp_path / "link.qcow2")))).disks
    assert d.path == os.path.realpath(image)
    assert d.resource == disk_resource_name(os.path.realpath(image))
    assert d.source == str(tmp_path / "link.qcow2")


def test_missing_disk_path_raises_disk_path_error_naming_domain_disk_and_fix(tmp_path: Path):
    missing = str(tmp_path / "nope.img")
    with pytest.raises(DiskPathError) as e:
        parse_domain(domain(disk(missing, dev="vdq")))
    message = str(e.value)
    assert "'vm1'" in message and "'vdq'" in message and missing in message
    assert "fix:" in message


def test_relative_disk_path_is_refused_not_resolved_against_the_cwd():
    with pytest.raises(DiskPathError, match="not an absolute path"):
        parse_domain(domain(disk("images/a.qcow2")))


def test_symlink_loop_is_a_disk_path_error(tmp_path: Path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(DiskPathError):
        parse_domain(domain(disk(str(tmp_path / "a"))))


def test_canonical_path_requires_absolute_existing_paths(tmp_path: Path):
    assert canonical_path(str(tmp_path)) == os.path.realpath(tmp_path)
    with pytest.raises(ValueError):
        canonical_path("x")
    with pytest.raises(OSError):
        canonical_path(str(tmp_path / "missing"))


def test_network_disk_is_never_resolved():
    def refuse(path: str) -> str:
        raise AssertionError(f"resolved {path}")

    xml = domain("<disk type='network'><source protocol='nbd' name='x'/><target dev='vda'/></disk>")
    assert parse_domain(xml, resolve=refuse).disks[0].mode is LeaseMode.NONE


# ---- stable identities --------------------------------------------------------------------------


def test_metadata_identity_replaces_the_path_in_the_resource_name():
    xml = domain(
        disk("/dev/sdc", kind="block"), metadata="<vmlease:disk target='vda' identity='pvc-1'/>"
    )
    (d,) = parse_domain(xml, resolve=same).disks
    assert d.identity == "pvc-1" and d.resource == disk_resource_name("pvc-1")
    assert d.path == "/dev/sdc"


def test_identity_makes_nodes_with_different_paths_agree_on_the_lease():
    meta = "<vmlease:disk target='vda' identity='lun-42'/>"
    on_a = parse_domain(domain(disk("/dev/sdc", kind="block"), metadata=meta), resolve=same)
    on_b = parse_domain(domain(disk("/dev/sdf", kind="block"), metadata=meta), resolve=same)
    assert on_a.disk_resources() == on_b.disk_resources()


def test_identity_from_serial_uses_the_disk_serial():
    xml = domain(
        disk(extra="<serial> SER-9 </serial>"),
        metadata="<vmlease:disk target='vda' identity-from='serial'/>",
    )
    (d,) = parse_domain(xml, resolve=same).disks
    assert d.identity == "SER-9" and d.resource == disk_resource_name("SER-9")


def test_serial_alone_is_not_an_identity_because_serials_are_often_reused():
    (d,) = parse_domain(domain(disk(extra="<serial>disk0</serial>")), resolve=same).disks
    assert d.identity is None and d.resource == disk_resource_name("/images/a.qcow2")


def test_identity_keeps_the_mode_of_the_disk():
    xml = domain(
        disk(extra="<readonly/>"), metadata="<vmlease:disk target='vda' identity='golden'/>"
    )
    assert parse_domain(xml, resolve=same).disks[0].mode is LeaseMode.SHARED


def test_metadata_in_another_namespace_is_ignored():
    xml = (
        "<domain><name>vm1</name><metadata><x:leases xmlns:x='urn:other'>"
        "<x:disk target='vda' identity='nope'/></x:leases></metadata>"
        f"<devices>{disk()}</devices></domain>"
    )
    assert parse_domain(xml, resolve=same).disks[0].identity is None


@pytest.mark.parametrize(
    ("metadata", "extra", "match"),
    [
        ("<vmlease:disk target='vdz' identity='x'/>", "", "does not have"),
        ("<vmlease:disk identity='x'/>", "", "no target"),
        ("<vmlease:disk target='vda' identity='x'/>" * 2, "", "twice"),
        ("<vmlease:disk target='vda'/>", "", "exactly one"),
        ("<vmlease:disk target='vda' identity='x' identity-from='serial'/>", "", "exactly one"),
        ("<vmlease:disk target='vda' identity-from='wwn'/>", "", "not supported"),
        ("<vmlease:disk target='vda' identity-from='serial'/>", "", "no <serial>"),
        ("<vmlease:disk target='vda' identity='/dev/sdc'/>", "", "reserved for paths"),
        ("<vmlease:disk target='vda' identity='  '/>", "", "empty"),
    ],
)
def test_bad_identity_metadata_is_an_error_never_a_silent_path_fallback(metadata, extra, match):
    with pytest.raises(DiskIdentityError, match=match) as e:
        parse_domain(domain(disk(extra=extra), metadata=metadata), resolve=same)
    assert "'vm1'" in str(e.value) and "fix:" in str(e.value) and METADATA_NS in str(e.value)


# ---- explicit <lease> elements ------------------------------------------------------------------


def test_explicit_lease_is_returned_as_a_resource():
    d = parse_domain(domain(lease("vm-key", "LS", "/leases", "1048576")), resolve=same)
    assert d.leases == (ExplicitLease("LS", "vm-key", "/leases", 1048576, False),)


def test_explicit_lease_offset_defaults_to_zero():
    xml = domain("<lease><lockspace>LS</lockspace><key>k</key><target path='/l'/></lease>")
    assert parse_domain(xml, resolve=same).leases[0].offset == 0


def test_explicit_lease_is_shared_only_through_vmlease_metadata():
    xml = domain(lease("a"), lease("b"), metadata="<vmlease:lease key='a' shared='yes'/>")
    assert [(x.key, x.shared) for x in parse_domain(xml, resolve=same).leases] == [
        ("a", True),
        ("b", False),
    ]


def test_explicit_lease_key_of_47_bytes_is_accepted_and_48_refused():
    ok = parse_domain(domain(lease("k" * 47)), resolve=same)
    assert ok.leases[0].key == "k" * 47
    with pytest.raises(LeaseElementError, match="48 bytes, libvirt allows 47"):
        parse_domain(domain(lease("k" * 48)), resolve=same)


def test_explicit_lease_key_limit_counts_bytes_not_characters():
    with pytest.raises(LeaseElementError, match="48 bytes"):
        parse_domain(domain(lease("é" * 24)), resolve=same)


def test_lockspace_name_of_48_bytes_is_accepted_and_49_refused():
    assert parse_domain(domain(lease(lockspace="s" * 48)), resolve=same).leases[0].lockspace
    with pytest.raises(LeaseElementError, match="49 bytes, sanlock allows 48"):
        parse_domain(domain(lease(lockspace="s" * 49)), resolve=same)


@pytest.mark.parametrize(
    ("element", "match"),
    [
        (lease(key=""), "no <key>"),
        (lease(lockspace=""), "no <lockspace>"),
        (lease(path="rel/path"), "not absolute"),
        ("<lease><lockspace>L</lockspace><key>k</key></lease>", "missing"),
        (lease(offset="0x10"), "decimal"),
        (lease(offset="-512"), "decimal"),
        (lease(offset="1.5"), "decimal"),
        (lease(offset="١٢"), "decimal"),
    ],
)
def test_malformed_explicit_lease_is_refused_naming_domain_lease_and_fix(element, match):
    with pytest.raises(LeaseElementError, match=match) as e:
        parse_domain(domain(element), resolve=same)
    assert "'vm1'" in str(e.value) and "<lease> #0" in str(e.value) and "fix:" in str(e.value)


def test_shared_metadata_for_a_lease_the_domain_lacks_is_an_error():
    xml = domain(lease("a"), metadata="<vmlease:lease key='zz' shared='yes'/>")
    with pytest.raises(LeaseElementError, match="does not have"):
        parse_domain(xml, resolve=same)


def test_malformed_shared_flag_in_metadata_is_an_error():
    xml = domain(lease("a"), metadata="<vmlease:lease key='a' shared='true'/>")
    with pytest.raises(LeaseElementError, match="malformed"):
        parse_domain(xml, resolve=same)
