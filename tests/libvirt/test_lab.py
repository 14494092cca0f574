"""The lab works, and the libvirt facts the vmlease hook will rely on hold on this libvirt.

Each test documents one fact of Debian 12's libvirt 9.0 (see libvirt-lab.md for the recipe).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from lab import (
    HOOK_DIR,
    HOOKS,
    LIBVIRTD,
    VIRTLOGD,
    Lab,
    LeaseSpec,
    TinyDomain,
    hook_calls,
    recording_hook,
    running_pid,
)
from vmlease_agent.virt.domain import (
    METADATA_NS,
    ExplicitLease,
    LeaseMode,
    disk_resource_name,
    parse_domain,
)

pytestmark = pytest.mark.libvirt

HOOK = "50-vmlease-lab-test"


@pytest.fixture
def hook_log(libvirt_lab: Lab) -> Iterator[Path]:
    """A recording hook in qemu.d for the duration of one test; returns its log directory."""
    log = libvirt_lab.workdir / f"hook-{time.monotonic_ns()}"
    log.mkdir()
    libvirt_lab.install_hook(HOOK, recording_hook(log))
    yield log
    libvirt_lab.remove_hook(HOOK)


def test_a_second_lab_reuses_the_running_daemons_and_its_stop_leaves_them_running(
    libvirt_lab: Lab,
):
    pids = (running_pid(VIRTLOGD), running_pid(LIBVIRTD))
    second = Lab(libvirt_lab.workdir)
    second.start(timeout=10)
    assert second.started == {}
    second.stop()
    assert (running_pid(VIRTLOGD), running_pid(LIBVIRTD)) == pids
    libvirt_lab.connect().close()


def test_tiny_domain_starts_under_tcg_and_stops(tiny_domain: TinyDomain):
    tiny_domain.start()
    dom = tiny_domain.domain()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    cmdline = Path(f"/proc/{tiny_domain.qemu_pid()}/cmdline").read_bytes().split(b"\0")
    assert b"tcg" in cmdline[cmdline.index(b"-accel") + 1]
    tiny_domain.destroy()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF


def test_qemu_d_hook_sees_each_lifecycle_step_with_the_domain_xml_on_stdin(
    tiny_domain: TinyDomain, hook_log: Path
):
    tiny_domain.start()
    tiny_domain.destroy()
    assert hook_calls(hook_log, tiny_domain.name) == [
        "prepare begin",
        "start begin",
        "started begin",
        "stopped end",
        "release end",
    ]
    uuid = tiny_domain.domain().UUIDString()
    for op in ("prepare", "started", "stopped", "release"):
        xml = (hook_log / f"{tiny_domain.name}-{op}.xml").read_text()
        leases = parse_domain(xml)
        assert (leases.name, leases.uuid) == (tiny_domain.name, uuid)
        assert [d.path for d in leases.disks] == [str(tiny_domain.image("vda"))]


def test_hook_refusing_prepare_stops_the_start_and_its_stderr_reaches_the_client(
    tiny_domain: TinyDomain, hook_log: Path
):
    (hook_log / f"deny-{tiny_domain.name}").write_text("lease vm-disk is held by node-b")
    with pytest.raises(libvirt.libvirtError) as e:
        tiny_domain.start()
    err = e.value
    assert err.get_error_code() == libvirt.VIR_ERR_HOOK_SCRIPT_FAILED  # 70
    assert err.get_error_domain() == libvirt.VIR_FROM_HOOK  # 34
    # Exactly what `virsh start` prints after "error: Failed to start domain 'NAME'":
    # the hook's argv with libvirtd's environment, its exit status, then its stderr verbatim;
    # its stdout is dropped.
    expected = (
        r"Hook script execution failed: internal error: Child process \(LC_ALL=C PATH=\S+ "
        rf"HOME=\S+ {HOOK_DIR}/{HOOK} {tiny_domain.name} prepare begin -\) "
        r"unexpected exit status 1: lease vm-disk is held by node-b"
    )
    assert re.fullmatch(expected, str(err)), str(err)
    assert "stdout of the refusing hook" not in str(err)
    assert not tiny_domain.domain().isActive()
    # libvirt still runs the stop hooks after a refused prepare: a lease hook must release
    # only what its own prepare acquired.
    assert hook_calls(hook_log, tiny_domain.name) == ["prepare begin", "stopped end", "release end"]


def test_hook_added_to_a_running_libvirtd_without_hooks_runs_only_after_sighup(
    libvirt_lab: Lab, tiny_domain: TinyDomain
):
    others = [p for p in HOOK_DIR.glob("*") if p.is_file()] if HOOK_DIR.exists() else []
    if others or (HOOKS / "qemu").exists():
        pytest.skip(f"other qemu hooks are installed ({others}); libvirtd already runs hooks")
    libvirt_lab.reload()  # libvirtd now knows there is no hook
    log = libvirt_lab.workdir / "late-hook"
    log.mkdir()
    try:
        libvirt_lab.install_hook(HOOK, recording_hook(log), reload=False)
        tiny_domain.start()
        tiny_domain.destroy()
        assert hook_calls(log, tiny_domain.name) == []
        libvirt_lab.reload()
        tiny_domain.start()
        tiny_domain.destroy()
        assert hook_calls(log, tiny_domain.name)[0] == "prepare begin"
    finally:
        libvirt_lab.remove_hook(HOOK)


def test_hook_xml_keeps_what_vmlease_reads_for_every_disk_kind_serial_lease_and_metadata(
    new_domain: Callable[..., TinyDomain], hook_log: Path
):
    lease_file = hook_log / "lease-area"
    metadata = (
        f"<vmlease:leases xmlns:vmlease='{METADATA_NS}'>"
        "<vmlease:disk target='vda' identity-from='serial'/>"
        "<vmlease:lease key='vm-key' shared='yes'/>"
        "</vmlease:leases>"
    )
    domain = new_domain(
        readonly_disk=True,
        shareable_disk=True,
        lease=LeaseSpec("vmlease-ls", "vm-key", lease_file, 1048576),
        serial="PVC-0001",
        metadata=metadata,
    )
    domain.start()  # the default lock manager (nop) accepts <lease> and ignores it
    domain.destroy()
    leases = parse_domain((hook_log / f"{domain.name}-prepare.xml").read_text())
    assert [(d.target, d.mode, d.identity) for d in leases.disks] == [
        ("vda", LeaseMode.EXCLUSIVE, "PVC-0001"),
        ("vdb", LeaseMode.SHARED, None),
        ("vdc", LeaseMode.SHARED, None),
    ]
    assert leases.disks[0].resource == disk_resource_name("PVC-0001")
    assert leases.disks[1].resource == disk_resource_name(str(domain.image("vdb")))
    assert leases.leases == (ExplicitLease("vmlease-ls", "vm-key", str(lease_file), 1048576, True),)


def test_libvirt_drops_unknown_lease_attributes_so_shared_must_live_in_metadata(
    libvirt_lab: Lab, tiny_domain: TinyDomain
):
    xml = tiny_domain.xml().replace(
        "<memballoon",
        "<lease shared='yes'><lockspace>L</lockspace><key>k</key>"
        "<target path='/var/tmp/x' offset='0'/><shared/></lease><memballoon",
    )
    stored = libvirt_lab.connect().defineXML(xml).XMLDesc()
    lease = stored[stored.index("<lease") : stored.index("</lease>")]
    assert "shared" not in lease and "<key>k</key>" in lease
