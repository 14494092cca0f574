"""The libvirt integration without libvirt: config, lease plan, lease files, installer, and the hook
run as libvirt runs it (a subprocess, domain XML on stdin) against a fake agent socket."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from libvirt_binding import libvirt_or_skip
from vmlease_agent.cli import libvirt as libvirt_cli
from vmlease_agent.engine import paxos
from vmlease_agent.engine.directio import Storage
from vmlease_agent.virt import files as libvirt_files
from vmlease_agent.virt.config import ConfigError, LibvirtConfig, load, parse
from vmlease_agent.virt.domain import METADATA_NS, parse_domain
from vmlease_agent.virt.hook import _element_text
from vmlease_agent.virt.plan import fence_command, holder_key, plan

UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
LS = "__LIBVIRT__DISKS__"


def same(path: str) -> str:
    return path


def domain_xml(*disks: str, extra: str = "", name: str = "vm1") -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><uuid>{UUID}</uuid>{extra}"
        f"<devices>{''.join(disks)}</devices></domain>"
    )


def disk(path: str, dev: str = "vda", flags: str = "") -> str:
    return (
        f"<disk type='file' device='disk'><source file='{path}'/><target dev='{dev}'/>"
        f"{flags}</disk>"
    )


# ---- config -------------------------------------------------------------------------------------


def test_config_defaults_are_libvirts_sanlock_driver_locations():
    cfg = LibvirtConfig()
    assert (cfg.lockspace, cfg.disk_lease_dir) == (LS, "/var/lib/libvirt/sanlock")
    assert cfg.lockspace_path == "/var/lib/libvirt/sanlock/__LIBVIRT__DISKS__"
    assert cfg.auto_disk_leases is True and cfg.on_lockfailure == "destroy"


def test_config_parses_libvirt_style_lines_and_round_trips():
    cfg = parse(
        '# comment\nrun_dir = "/run/x"  \nauto_disk_leases = 0 # off\nacquire_wait = 2.5\n'
        'on_lockfailure = "pause"\nio_timeout = 1\n',
        "/etc/x.conf",
    )
    assert (cfg.run_dir, cfg.auto_disk_leases, cfg.acquire_wait) == ("/run/x", False, 2.5)
    assert (cfg.on_lockfailure, cfg.io_timeout, cfg.path) == ("pause", 1, "/etc/x.conf")
    assert parse(cfg.render()) == cfg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("auto_disk_lease = 1", ":1: 'auto_disk_lease = 1' is not a known setting"),
        ("run_dir = /run/x", "run_dir = /run/x is not a quoted string"),
        ("io_timeout = ten", "io_timeout = ten is not a number"),
        ("auto_disk_leases = 2", "fix: write auto_disk_leases = 0 or 1"),
        ('on_lockfailure = "ignore"', "on_lockfailure = 'ignore'"),
        ('run_dir = "relative"', "run_dir is not an absolute path"),
        ("io_timeout = 300", "io_timeout = 300"),
    ],
)
def test_config_errors_name_the_line_and_the_fix(text: str, fragment: str):
    with pytest.raises(ConfigError) as e:
        parse(text, "/etc/vmlease/libvirt.conf")
    assert fragment in str(e.value) and "fix:" in str(e.value)


def test_config_missing_default_file_means_defaults_but_a_named_one_is_an_error(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("VMLEASE_LIBVIRT_CONFIG", raising=False)
    monkeypatch.setattr("vmlease_agent.virt.config.DEFAULT_PATH", str(tmp_path / "none"))
    assert load() == LibvirtConfig()
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "typo.conf"))


def test_policy_follows_on_lockfailure_and_refuses_what_sanlock_refuses():
    cfg = LibvirtConfig(on_lockfailure="pause")
    assert cfg.policy_for(None) == "pause"
    assert cfg.policy_for("poweroff") == "destroy"
    assert LibvirtConfig().policy_for("pause") == "pause"
    for value in ("restart", "ignore"):
        with pytest.raises(ValueError, match="not supported"):
            cfg.policy_for(value)


# ---- the plan -----------------------------------------------------------------------------------


def test_plan_one_lease_per_resource_sorted_with_modes_and_explicit_leases():
    xml = domain_xml(
        disk("/img/a.qcow2"),
        disk("/img/iso", "vdb", "<readonly/>"),
        disk("/img/iso", "vdc", "<readonly/>"),  # the same image twice: one lease
        disk("/img/shared", "vdd", "<shareable/>"),
        "<lease><lockspace>other</lockspace><key>vm-key</key>"
        "<target path='/l:x' offset='1048576'/></lease>",
    )
    wants = plan(LibvirtConfig(disk_lease_dir="/leases"), parse_domain(xml, resolve=same))
    assert [w.label for w in wants] == sorted(w.label for w in wants)
    by = {w.what.split(" (")[0]: w for w in wants}
    a = by["disk vda"]
    assert a.spec == f"{LS}:{a.resource}:/leases/{a.resource}:0" and a.auto
    assert a.disk == "/img/a.qcow2" and lease_not_disk(by)
    assert by["disk vdb"].spec.endswith(":SH") and "disk vdc" not in by
    assert by["disk vdd"].shared
    lease = by["<lease> key 'vm-key'"]
    assert lease.spec == "other:vm-key:/l\\:x:1048576" and not lease.auto
    assert len(wants) == 4


def lease_not_disk(by: dict) -> bool:
    return by["<lease> key 'vm-key'"].disk is None


def test_plan_without_auto_disk_leases_keeps_only_lease_elements():
    xml = domain_xml(
        disk("/img/a"),
        "<lease><lockspace>L</lockspace><key>k</key><target path='/l' offset='0'/></lease>",
    )
    wants = plan(LibvirtConfig(auto_disk_leases=False), parse_domain(xml, resolve=same))
    assert [w.label for w in wants] == ["L:k"]


def test_plan_names_a_disk_with_a_stable_identity_by_it():
    meta = (
        f"<metadata><vmlease:leases xmlns:vmlease='{METADATA_NS}'>"
        "<vmlease:disk target='vda' identity='pvc-1'/></vmlease:leases></metadata>"
    )
    (w,) = plan(
        LibvirtConfig(), parse_domain(domain_xml(disk("/dev/sdc"), extra=meta), resolve=same)
    )
    assert "identity 'pvc-1'" in w.what and w.path.endswith(w.resource)
    assert w.disk == "pvc-1"  # what the name hashes, for the DiskLease's label


def test_fence_command_names_the_domain_policy_and_agent():
    cmd = fence_command(LibvirtConfig(run_dir="/run/a"), UUID, "pause", python="/py")
    assert cmd[:3] == ["/py", "-m", "vmlease_agent.virt.fence"]
    assert cmd[cmd.index("--uuid") + 1] == UUID and cmd[cmd.index("--policy") + 1] == "pause"
    assert cmd[cmd.index("--run-dir") + 1] == "/run/a"
    assert holder_key(UUID) == f"libvirt:{UUID}"


def test_element_text_reads_libvirts_own_top_level_elements_only():
    xml = (
        f"<domain><name>x</name><uuid>{UUID}</uuid><metadata><on_lockfailure>destroy"
        "</on_lockfailure></metadata><on_lockfailure>pause</on_lockfailure>"
        "<devices><uuid>nope</uuid></devices></domain>"
    ).encode()
    assert _element_text(xml, b"uuid") == UUID
    assert _element_text(xml, b"on_lockfailure", last=True) == "pause"
    assert _element_text(b"<domain><devices/></domain>", b"uuid") is None


# ---- lease files --------------------------------------------------------------------------------


def test_two_nodes_creating_one_lease_file_at_once_one_creates_and_it_is_a_valid_lease(lease_dir):
    name = "93a3b1bb62ab470f81a6653c51d6b50a"
    path = os.path.join(lease_dir, name)
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):
        barrier, results = ctx.Barrier(4), ctx.Queue()

        def create(barrier=barrier, results=results) -> None:
            barrier.wait()
            results.put(libvirt_files.ensure_lease_file(LS, name, path, 10))

        procs = [ctx.Process(target=create) for _ in range(4)]
        for p in procs:
            p.start()
        created = sorted(results.get(timeout=30) for _ in procs)
        for p in procs:
            p.join()
        assert created == [False, False, False, True]
        with Storage(path, writable=False) as st:
            leader = paxos.read_leader(st, paxos.Resource(LS, name, path, 0), 5)
        assert (leader.space_name, leader.resource_name, leader.num_hosts) == (LS, name, 2000)
        assert os.path.getsize(path) == 1 << 20
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.listdir(lease_dir) == [name]  # no temporary file left
        os.unlink(path)


def test_an_existing_lease_file_is_never_written(lease_dir):
    path = os.path.join(lease_dir, "r")
    with open(path, "wb") as f:
        f.write(b"held by someone" + bytes(100))
    assert libvirt_files.ensure_lease_file(LS, "r", path, 10) is False
    with open(path, "rb") as f:
        assert f.read(15) == b"held by someone"


def test_without_hard_links_the_file_is_created_in_place_as_libvirt_does(lease_dir, monkeypatch):
    def no_links(_src, _dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = os.path.join(lease_dir, "r")
    assert libvirt_files.ensure_lease_file(LS, "r", path, 10) is True
    assert libvirt_files.ensure_lease_file(LS, "r", path, 10) is False
    with Storage(path, writable=False) as st:
        assert paxos.read_leader(st, paxos.Resource(LS, "r", path, 0), 5).resource_name == "r"


def test_lockspace_file_is_a_sanlock_lockspace(lease_dir):
    path = os.path.join(lease_dir, LS)
    assert libvirt_files.ensure_lockspace_file(LS, path, 1) is True
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "vmlease"), "direct", "read_leader", "-s",
         f"{LS}:0:{path}:0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"space_name {LS}" in out and "io_timeout 1" in out


# ---- installer ----------------------------------------------------------------------------------


def test_install_writes_an_executable_shim_and_never_replaces_a_foreign_hook(tmp_path):
    hooks = tmp_path / "hooks"
    path = Path(libvirt_cli.install_hook(str(hooks), "/etc/x.conf"))
    assert path == hooks / "qemu.d" / "50-vmlease"
    assert os.access(path, os.X_OK) and libvirt_cli.MARKER in path.read_text()
    assert not list(hooks.glob(".*"))  # the temporary file is gone
    # the shim runs: an op the hook ignores returns at once, exit 0, no output
    done = subprocess.run([str(path), "vm1", "start", "begin", "-"], capture_output=True, input=b"")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    libvirt_cli.install_hook(str(hooks), "/etc/x.conf")  # ours: replaced
    path.write_text("#!/bin/sh\n# the admin's own hook\n")
    with pytest.raises(libvirt_cli.HookInstallError, match="not written by vmlease"):
        libvirt_cli.install_hook(str(hooks), "/etc/x.conf")
    with pytest.raises(libvirt_cli.HookInstallError):
        libvirt_cli.uninstall_hook(str(hooks))
    libvirt_cli.install_hook(str(hooks), "/etc/x.conf", force=True)
    assert libvirt_cli.uninstall_hook(str(hooks)) == str(path) and not path.exists()


def test_default_config_is_written_once_and_never_overwritten(tmp_path):
    conf = tmp_path / "etc" / "libvirt.conf"
    assert libvirt_cli.write_default_config(str(conf)) is True
    assert load(str(conf)) == LibvirtConfig()
    conf.write_text('run_dir = "/mine"\n')
    assert libvirt_cli.write_default_config(str(conf)) is False
    assert load(str(conf)).run_dir == "/mine"


# ---- the hook, run as libvirt runs it, against a fake agent -------------------------------------


class FakeAgent:
    """A unix socket speaking the agent's JSON lines; ``replies[op]`` is a list of replies
    (the last one repeats) or a callable(request) -> reply; ``silent`` never answers."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(exist_ok=True)
        self.requests: list[dict] = []
        self.replies: dict[str, list[dict] | Callable[[dict], dict]] = {}
        self.silent = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(run_dir / "agent.sock"))
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        f = conn.makefile("rwb")
        for line in f:
            req = json.loads(line)
            self.requests.append(req)
            if self.silent:
                time.sleep(60)
                return
            reply = self.replies.get(req["op"], [{"ok": True, "result": None}])
            if callable(reply):
                out = reply(req)
            elif len(reply) > 1:
                out = reply.pop(0)
            else:
                out = reply[0]
            f.write(json.dumps(out).encode() + b"\n")
            f.flush()

    def ops(self) -> list[str]:
        return [r["op"] for r in self.requests]


Done = subprocess.CompletedProcess


def refuse(code: int, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "name": "X", "message": message}}


@pytest.fixture
def hook_env(
    tmp_path, lease_dir
) -> Iterator[tuple[Callable[..., subprocess.CompletedProcess], FakeAgent, Path]]:
    agent = FakeAgent(tmp_path / "run")
    conf = tmp_path / "libvirt.conf"
    pid_dir = tmp_path / "qemu"
    pid_dir.mkdir()
    settings = {
        "run_dir": str(tmp_path / "run"),
        "disk_lease_dir": lease_dir,
        "pid_dir": str(pid_dir),
        "log_file": str(tmp_path / "hook.log"),
        "hook_timeout": 5.0,
    }
    conf.write_text(LibvirtConfig(**settings).render())
    hook = Path(libvirt_cli.install_hook(str(tmp_path / "hooks"), str(conf)))
    image = tmp_path / "vm1.img"
    image.write_bytes(b"")

    def run(op: str, xml: str | None = None, **overrides: object) -> subprocess.CompletedProcess:
        if overrides:
            conf.write_text(LibvirtConfig(**{**settings, **overrides}).render())
        return subprocess.run(
            [str(hook), "vm1", op, "begin", "-"],
            input=(xml if xml is not None else domain_xml(disk(str(image)))).encode(),
            capture_output=True,
            env={"LC_ALL": "C", "PATH": os.environ["PATH"]},
            timeout=60,
        )

    yield run, agent, image
    agent.sock.close()


def test_prepare_creates_the_lease_file_and_acquires_under_the_domain_key(hook_env, lease_dir):
    run, agent, image = hook_env
    agent.replies["inquire"] = [{"ok": True, "result": []}]
    done = run("prepare")
    assert done.returncode == 0, done.stderr
    assert agent.ops() == ["acquire"]
    acquire = agent.requests[-1]
    resource = parse_domain(domain_xml(disk(str(image)))).disks[0].resource
    assert acquire["key"] == f"libvirt:{UUID}" and acquire["wait"] is False
    assert acquire["resources"] == [f"{LS}:{resource}:{lease_dir}/{resource}:0"]
    assert acquire["owner"] == "vm1"
    # the disk each automatic lease protects, so its DiskLease can say so (spec.diskPath)
    assert acquire["disks"] == {f"{LS}:{resource}": str(image)}
    assert os.path.getsize(os.path.join(lease_dir, resource)) == 1 << 20


def test_prepare_refused_with_one_line_naming_the_disk_and_the_holder(hook_env):
    run, agent, image = hook_env
    resource = parse_domain(domain_xml(disk(str(image)))).disks[0].resource
    agent.replies["acquire"] = [
        refuse(-243, f"disk lease {LS}:{resource} at /x:0 is held by host 2 (node b, ...)")
    ]
    done = run("prepare")
    assert done.returncode == 1 and done.stdout == b""
    line = done.stderr.decode()
    assert line.count("\n") == 1, line
    assert line.startswith(f"vmlease: domain 'vm1', disk vda ({image}): disk lease {LS}:")
    assert line.rstrip().endswith("[error -243]")
    assert agent.ops().count("acquire") == 1  # acquire_wait 0: no retry for a live holder


def test_prepare_retries_a_lost_ballot_and_a_holder_within_acquire_wait(hook_env):
    run, agent, _ = hook_env
    agent.replies["acquire"] = [
        refuse(-213, "lost the ballot"),
        refuse(-243, "held by host 2"),
        {"ok": True, "result": []},
    ]
    done = run("prepare", acquire_wait=3.0)
    assert done.returncode == 0, done.stderr
    assert agent.ops().count("acquire") == 3


def test_prepare_names_the_node_of_a_host_not_yet_known_dead(hook_env):
    run, agent, image = hook_env
    resource = parse_domain(domain_xml(disk(str(image)))).disks[0].resource
    agent.replies["acquire"] = [
        refuse(-247, f"disk lease {LS}:{resource} at /x:0 is owned by host 7, which has not ...")
    ]
    agent.replies["host_status"] = [
        {
            "ok": True,
            "result": [{"host_id": 7, "name": "node-g", "renewed_ago": 3.2, "state": "live"}],
        }
    ]
    line = run("prepare").stderr.decode()
    assert "(host 7 is node node-g, last renewed 3.2s ago, state live)" in line, line


@pytest.mark.parametrize(
    ("xml", "fragment"),
    [
        ("<domain", "domain XML is not well-formed"),
        (domain_xml(disk("/nonexistent/x.img")), "cannot be canonicalised"),
        (domain_xml(disk("relative.img")), "not an absolute path"),
        ("<domain><name>vm1</name><devices/></domain>", "has no <uuid>"),
    ],
)
def test_bad_input_refuses_the_start_with_the_reason(hook_env, xml: str, fragment: str):
    run, agent, _ = hook_env
    done = run("prepare", xml)
    assert done.returncode == 1 and fragment in done.stderr.decode(), done.stderr
    assert agent.ops() == []


def test_unsupported_lockfailure_policy_refuses_a_start_that_needs_leases(hook_env):
    run, _, image = hook_env
    done = run(
        "prepare", domain_xml(disk(str(image)), extra="<on_lockfailure>ignore</on_lockfailure>")
    )
    assert done.returncode == 1 and b"not supported with disk leases" in done.stderr


def test_no_agent_or_a_silent_one_refuses_within_the_deadline(hook_env, tmp_path):
    run, agent, _ = hook_env
    done = run("prepare", run_dir=str(tmp_path / "none"))
    assert done.returncode == 1
    assert b"the vmlease agent did not answer (cannot reach" in done.stderr, done.stderr
    agent.silent = True
    started = time.monotonic()
    done = run("prepare", hook_timeout=2.0)
    assert time.monotonic() - started < 2 + 1.0
    assert done.returncode == 1 and b"no reply within" in done.stderr, done.stderr


def test_started_binds_the_key_to_qemus_pid_and_sets_the_fencing_command(hook_env, tmp_path):
    run, agent, _ = hook_env
    (tmp_path / "qemu" / "vm1.pid").write_text("4242")
    xml = domain_xml(extra="<on_lockfailure>pause</on_lockfailure>")
    assert run("started", xml).returncode == 0
    assert agent.ops() == ["bind", "set_kill_command"]
    assert agent.requests[0] == {"op": "bind", "key": f"libvirt:{UUID}", "pid": 4242}
    command = agent.requests[1]["command"]
    assert command[command.index("--policy") + 1] == "pause"


def test_started_without_a_pid_file_refuses_only_if_leases_are_held(hook_env):
    run, agent, _ = hook_env
    agent.replies["inquire"] = [{"ok": True, "result": [{"lease": "L:r", "pid": 0}]}]
    done = run("started", domain_xml())
    assert done.returncode == 1 and b"cannot read QEMU's pid" in done.stderr
    agent.replies["inquire"] = [{"ok": True, "result": []}]
    assert run("started", domain_xml()).returncode == 0


def test_started_for_a_domain_without_leases_binds_nothing(hook_env, tmp_path):
    run, agent, _ = hook_env
    (tmp_path / "qemu" / "vm1.pid").write_text("4242")
    agent.replies["bind"] = [refuse(-2, f"pid libvirt:{UUID} holds no lease (any) on this node")]
    assert run("started", domain_xml()).returncode == 0
    assert agent.ops() == ["bind"]


def test_prepare_drops_leases_its_own_key_still_holds_from_an_abandoned_start(hook_env):
    run, agent, _ = hook_env
    agent.replies["acquire"] = [
        refuse(-17, f"disk lease L:r is already held on this node by pid libvirt:{UUID} (vm1)"),
        {"ok": True, "result": []},
    ]
    agent.replies["inquire"] = [{"ok": True, "result": [{"lease": "L:r", "pid": 0}]}]
    assert run("prepare").returncode == 0
    assert agent.ops() == ["acquire", "inquire", "release", "acquire"]


def test_stopped_releases_only_an_unbound_key_and_nothing_after_a_refused_prepare(hook_env):
    run, agent, _ = hook_env
    agent.replies["inquire"] = [{"ok": True, "result": []}]
    assert run("stopped", domain_xml()).returncode == 0
    assert agent.ops() == ["inquire"]  # nothing held: nothing released, nobody else's named
    agent.requests.clear()
    agent.replies["inquire"] = [{"ok": True, "result": [{"lease": "L:r", "pid": 0}]}]
    assert run("release", domain_xml()).returncode == 0
    assert agent.requests[-1] == {"op": "release", "key": f"libvirt:{UUID}"}
    agent.requests.clear()
    agent.replies["inquire"] = [{"ok": True, "result": [{"lease": "L:r", "pid": os.getpid()}]}]
    assert run("stopped", domain_xml()).returncode == 0
    assert agent.ops() == ["inquire"]  # a live bound pid: its exit releases


def test_incoming_live_migration_of_a_leased_domain_is_refused_saying_why_safety(hook_env):
    """A hook cannot hand a lease over (no hook runs when the source pauses): the destination
    refuses at ``migrate``, before QEMU exists, naming the disk and the lock-driver path, and
    asks the agent for nothing; a domain without leases migrates."""
    run, agent, image = hook_env
    refused = run("migrate")
    assert refused.returncode == 1 and refused.stdout == b""  # stdout would be taken as XML
    message = refused.stderr.decode()
    assert "live migration is refused on this host" in message
    assert f"disk vda ({image})" in message and "--sanlock-api" in message
    assert agent.ops() == []
    bare = run("migrate", domain_xml())
    assert (bare.returncode, bare.stdout) == (0, b"")


def test_reconnect_never_fails_but_reports_missing_leases(hook_env):
    run, agent, _ = hook_env
    agent.replies["inquire"] = [{"ok": True, "result": []}]
    done = run("reconnect")
    assert done.returncode == 0
    assert b"runs WITHOUT the leases of disk vda" in done.stderr
    agent.silent = True
    assert run("reconnect", hook_timeout=1.0).returncode == 0


def test_config_error_refuses_prepare_but_not_release(hook_env, tmp_path):
    (tmp_path / "libvirt.conf").write_text("nonsense\n")
    hook = tmp_path / "hooks" / "qemu.d" / "50-vmlease"
    for op, code in (("prepare", 1), ("release", 0)):
        done = subprocess.run(
            [str(hook), "vm1", op, "begin", "-"], input=domain_xml().encode(), capture_output=True
        )
        assert done.returncode == code and b"is not a known setting" in done.stderr


# ---- what the hook imports (its cost: bench/libvirt_start.py) ------------------------------------

#: vmlease modules every hook call imports: the entry, its config, and the engine package (sanlock's
#: codes and the error pattern; not the engine's modules)
HOOK_ENTRY = {"vmlease_agent", "vmlease_agent.virt", "vmlease_agent.virt.config",
              "vmlease_agent.virt.hook", "vmlease_agent.engine"}  # fmt: skip
#: ... plus, for a call to the agent, the lean client and the plan's holder key.
HOOK_AGENT = {"vmlease_agent.rpc", "vmlease_agent.rpc.wire", "vmlease_agent.virt.plan"}
#: stdlib modules the hook may add to a bare ``python -I -S``: ``os``, the lean client's C modules
#: (``_json``, ``_socket``), ``select`` for the runner. Not ``__future__``: the modules on these
#: paths quote their annotations instead of importing it
HOOK_STDLIB = {"os", "os.path", "posixpath", "genericpath", "stat", "_stat", "_collections_abc",
               "_json", "_socket", "select"}  # fmt: skip
#: what each would cost a call (bench/libvirt_start.py): never imported on the lean paths
HEAVY = ("json", "socket", "typing", "xml.etree.ElementTree", "subprocess", "dataclasses", "enum",
         "re", "contextlib", "collections", "functools", "hashlib", "threading", "logging",
         "argparse", "signal", "selectors", "inspect", "vmlease_agent.engine.errors",
         "vmlease_agent.virt.domain", "vmlease_agent.rpc.client")  # fmt: skip


@pytest.fixture
def hook_imports(hook_env, tmp_path):
    """``hook_env`` whose installed hook writes ``sys.modules`` at each ``os._exit``: the process
    libvirt waits for ("parent") and, for the ops that fork, the worker ("worker"). The shim is
    the one ``install-hook`` wrote (``-I -S``, its sys.path), only ``exit_main()`` is wrapped."""
    run, agent, _ = hook_env
    hook = tmp_path / "hooks" / "qemu.d" / "50-vmlease"
    out = tmp_path / "modules."
    probe = (
        f"import os, sys; p0 = os.getpid(); real = os._exit; os._exit = lambda code: (open("
        f'"{out}" + ("parent" if os.getpid() == p0 else "worker"), "w").write('
        f'" ".join(sorted(sys.modules))), real(code)); '
    )

    def imports(op: str, xml: str | None = None, entry: str = "vmlease_agent.virt.hook") -> dict:
        text = hook.read_text()
        call = "from vmlease_agent.virt.hook import exit_main; exit_main()"
        assert call in text and "'" not in probe + str(out)
        hook.write_text(text.replace(call, probe + call.replace("vmlease_agent.virt.hook", entry)))
        try:
            for f in tmp_path.glob("modules.*"):
                f.unlink()
            done = run(op, xml)
            assert done.returncode == 0, done.stderr
        finally:
            hook.write_text(text)
        return {f.suffix[1:]: set(f.read_text().split()) for f in tmp_path.glob("modules.*")}

    baseline = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return imports, agent, set(baseline)


def _check_lean(modules: set[str], vmlease: set[str], baseline: set[str], where: str) -> None:
    heavy = [m for m in HEAVY if m in modules]
    assert not heavy, f"{where} imports {heavy}: each costs every domain start or stop"
    assert {m for m in modules if m.startswith("vmlease")} == vmlease, where
    extra = {m for m in modules if not m.startswith("vmlease")} - baseline - HOOK_STDLIB
    assert not extra, f"{where} imports {sorted(extra)} (the pinned set is HOOK_STDLIB)"


def test_the_start_and_stop_ops_import_only_the_lean_modules(hook_imports, tmp_path):
    imports, agent, baseline = hook_imports
    (tmp_path / "qemu" / "vm1.pid").write_text(str(os.getpid()))
    agent.replies["inquire"] = [{"ok": True, "result": [{"lease": "L:r", "pid": 0}]}]
    for op in ("started", "stopped", "release"):  # inline: no worker, no runner
        seen = imports(op, domain_xml())
        assert list(seen) == ["parent"], op
        _check_lean(seen["parent"], HOOK_ENTRY | HOOK_AGENT, baseline, op)
    # a domain's restart: prepare, its plan cached by the first start (which parses the XML)
    assert imports("prepare")["worker"] >= {"vmlease_agent.virt.domain", "xml.etree.ElementTree"}
    seen = imports("prepare")
    runner = {"vmlease_agent.virt.runner"}
    _check_lean(seen["parent"], HOOK_ENTRY | runner, baseline, "prepare")
    cached = HOOK_ENTRY | runner | HOOK_AGENT | {"vmlease_agent.virt.plancache"}
    _check_lean(seen["worker"], cached, baseline, "prepare's worker")


def test_a_hook_installed_by_vmlease_0_1_still_runs(hook_imports, tmp_path):
    """0.1's hook files import ``vmlease_agent.libvirt_hook``: it stays a re-export."""
    imports, agent, baseline = hook_imports
    (tmp_path / "qemu" / "vm1.pid").write_text(str(os.getpid()))
    seen = imports("started", domain_xml(), entry="vmlease_agent.libvirt_hook")
    assert agent.ops() == ["bind", "set_kill_command"]
    old = HOOK_ENTRY | HOOK_AGENT | {"vmlease_agent.libvirt_hook"}
    _check_lean(seen["parent"], old, baseline, "started (0.1 hook file)")


# ---- the fencing command (libvirt's in-process test driver: no daemon) --------------------------


@pytest.fixture
def test_driver():
    libvirt = libvirt_or_skip()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")  # state shared by every connection while one is open
    yield conn, conn.lookupByName("test")
    conn.close()


def test_fence_destroys_the_domain_through_libvirt(test_driver, tmp_path):
    from vmlease_agent.virt.fence import fence

    _, dom = test_driver
    assert dom.isActive()
    assert fence("test:///default", dom.UUIDString(), "destroy", "/run/x", str(tmp_path), "7") == 0
    assert not dom.isActive()


def test_fence_pause_suspends_and_hands_the_leases_back_to_the_agent(test_driver, tmp_path):
    from vmlease_agent.virt.fence import fence

    _, dom = test_driver
    agent = FakeAgent(tmp_path / "run")
    run_dir = str(tmp_path / "run")
    assert fence("test:///default", dom.UUIDString(), "pause", run_dir, "/x", "77") == 0
    assert dom.state()[0] == 3  # VIR_DOMAIN_PAUSED
    assert agent.requests == [{"op": "release", "pid": 77}]
    agent.sock.close()


def test_fence_falls_back_to_sigterm_when_libvirt_cannot_do_it(test_driver, tmp_path):
    from vmlease_agent.virt.fence import fence

    _, dom = test_driver
    for uri, pidfile in (("test:///nonexistent.xml", None), ("test:///default", "1")):
        victim = subprocess.Popen(["sleep", "60"])
        if pidfile:  # the domain now runs as another QEMU than the one being fenced
            (tmp_path / "test.pid").write_text(pidfile)
        assert fence(uri, dom.UUIDString(), "destroy", "/x", str(tmp_path), str(victim.pid)) == 1
        assert victim.wait(10) == -15  # SIGTERM
    assert dom.isActive()


def test_the_hooks_lean_client_speaks_the_agents_json():
    from vmlease_agent.rpc.wire import decode, encode

    request = {"op": "acquire", "key": 'libvirt:"é"', "resources": ["L:R:/a\\:b:0", "x"],
               "wait": False, "pid": 42, "n": None, "t": 1.5}  # fmt: skip
    assert json.loads(encode(request)) == request
    reply = {"ok": True, "result": [{"lease": "L:R", "pid": 0, "shared": False, "s": 1.25}]}
    assert decode(json.dumps(reply)) == reply
    for bad in ('{"ok": true} junk', '{"ok": ', ""):
        with pytest.raises(ValueError):
            decode(bad)


# ---- the plan cache ------------------------------------------------------------------------------


def test_plan_cache_hits_only_when_every_input_of_the_plan_is_unchanged(tmp_path):
    from vmlease_agent.virt import plancache as cache

    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    link = tmp_path / "link.img"
    link.symlink_to(image)
    cfg = LibvirtConfig(run_dir=str(tmp_path / "run"))
    xml = domain_xml(disk(str(link))).replace("<domain type='qemu'>", "<domain type='qemu' id='3'>")
    leases = parse_domain(xml.encode())
    result = cache.Plan("vm1", UUID, None, plan(cfg, leases))
    cache.store(cfg, xml.encode(), result, {str(link): str(image)})

    again = xml.replace("id='3'", "id='4'").encode()  # libvirt numbers each start
    hit = cache.load(cfg, UUID, again)
    assert hit is not None and hit.wants == result.wants and hit.name == "vm1"
    assert cache.load(cfg, UUID, again.replace(b"vda", b"vdb")) is None  # other XML
    assert cache.load(cfg.replace(disk_lease_dir="/other"), UUID, again) is None  # other config
    other = tmp_path / "other.img"
    other.write_bytes(b"")
    link.unlink()
    link.symlink_to(other)  # the path now leads elsewhere: another lease name
    assert cache.load(cfg, UUID, again) is None
    link.unlink()
    assert cache.load(cfg, UUID, again) is None  # gone: the full parse reports it
    (tmp_path / "run" / "libvirt-plans" / UUID).write_text('{"xml": ')
    assert cache.load(cfg, UUID, again) is None


def test_prepare_uses_the_cached_plan_and_acquires_the_same_leases(hook_env, tmp_path):
    run, agent, _ = hook_env
    assert run("prepare").returncode == 0
    assert run("prepare").returncode == 0
    first, second = (r for r in agent.requests if r["op"] == "acquire")
    assert first == second
    assert (tmp_path / "run" / "libvirt-plans" / UUID).exists()


def test_the_plan_cache_fingerprints_code_that_exists():
    """A module renamed away from ``CODE`` would stamp "?" forever, and an edited plan computation
    would reuse plans cached by the old code (the 0.1 names did that after the move to virt/)."""
    from vmlease_agent.virt import plancache as cache

    here = Path(cache.__file__).parent
    assert all((here / name).is_file() for name in cache.CODE)
    assert "?" not in cache.fingerprint(LibvirtConfig()).split("\n")[0]


def test_every_error_family_is_built_from_the_one_template_pattern():
    from vmlease_agent.engine import Templated
    from vmlease_agent.engine.errors import LeaseError
    from vmlease_agent.rpc import wire
    from vmlease_agent.virt import hook
    from vmlease_agent.virt.domain import DomainXMLError

    for family in (LeaseError, hook.HookError, ConfigError, DomainXMLError, wire.Unreachable,
                   wire.Refused):  # fmt: skip
        assert issubclass(family, Templated) and family.__init__ is Templated.__init__, family
    e = hook.NoQemuPid(domain="vm1", path="/run/x.pid", detail="No such\nfile", config="c")
    assert "\n" not in str(e) and e.fields["path"] == e.path == "/run/x.pid"  # one line, fields
    assert isinstance(ConfigError(path="p", problem="q", fix="f"), ValueError)
