"""The local API: bad requests get errors, never a crash; credentials come from the kernel."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading

import pytest
from vmlease_agent.rpc import server as api


class StubAgent:
    """Records calls; raises like the real agent for lockspaces it does not know."""

    def __init__(self):
        self.calls = []

    def status(self):
        return {"node": "n"}

    def host_status(self, name):
        from vmlease_agent.core.agent import NotJoined

        raise NotJoined(lockspace=name, state="")

    def add_lockspace(self, cfg, wait=True):
        self.calls.append(("add", cfg))
        return {"name": cfg.name}

    def acquire(self, holder, resources, owner="", wait=True, disks=None):
        self.calls.append(("acquire", holder, resources, owner, disks))
        return []


@pytest.fixture
def server():
    agent = StubAgent()
    run_dir = tempfile.mkdtemp(prefix="vmlease-api-")
    os.chmod(run_dir, 0o711)  # reachable by the unprivileged peer of the credentials test
    srv = api.ApiServer(os.path.join(run_dir, "agent.sock"), api.Handlers(agent, lambda c: None))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.agent = agent
    yield srv
    srv.shutdown()
    srv.server_close()
    shutil.rmtree(run_dir)


def ask(path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = s.makefile("rb").readline()
    return json.loads(data)


def test_socket_mode_is_0660(server):
    assert os.stat(server.path).st_mode & 0o777 == 0o660


def test_malformed_json_gets_an_error_and_the_server_survives(server):
    r = ask(server.path, b"{not json\n")
    assert r["ok"] is False and "malformed request" in r["error"]["message"]
    assert ask(server.path, b'{"op": "status"}\n') == {"ok": True, "result": {"node": "n"}}


def test_oversized_request_is_refused(server):
    r = ask(server.path, b'{"op": "status", "x": "' + b"a" * (api.MAX_REQUEST + 10) + b'"}\n')
    assert r["ok"] is False and r["error"]["name"] == "TooLarge"
    assert ask(server.path, b'{"op": "status"}\n')["ok"]


def test_unknown_op_and_private_names_are_refused(server):
    assert "unknown op" in ask(server.path, b'{"op": "nope"}\n')["error"]["message"]
    assert ask(server.path, b'{"op": "_root"}\n')["ok"] is False
    assert ask(server.path, b"[1, 2]\n")["ok"] is False


def test_wrong_field_types_are_refused(server):
    r = ask(server.path, b'{"op": "acquire", "pid": "12", "resources": []}\n')
    assert r["ok"] is False and "pid" in r["error"]["message"]
    r = ask(server.path, b'{"op": "acquire", "pid": 1, "resources": []}\n')
    assert r["ok"] is False and "resources" in r["error"]["message"]
    assert server.agent.calls == []


def test_acquire_passes_the_disks_each_lease_protects(server):
    req = {"op": "acquire", "pid": os.getpid(), "resources": ["LS:r1:/l:0"],
           "disks": {"LS:r1": "/img/a"}}  # fmt: skip
    assert ask(server.path, json.dumps(req).encode() + b"\n")["ok"] is True
    assert server.agent.calls[-1][-1] == {"LS:r1": "/img/a"}
    bad = ask(server.path, json.dumps({**req, "disks": ["/img/a"]}).encode() + b"\n")
    assert bad["ok"] is False and "disks must map lease labels" in bad["error"]["message"]


def test_agent_errors_carry_code_and_message(server):
    r = ask(server.path, b'{"op": "host_status", "lockspace": "LS"}\n')
    assert r["error"]["code"] == -28 and "not joined" in r["error"]["message"]


def test_add_lockspace_refuses_an_io_timeout_the_record_cannot_hold_safety(server):
    req = {"op": "add_lockspace", "lockspace": "LS:1:/p:0", "io_timeout": 300}
    r = ask(server.path, json.dumps(req).encode() + b"\n")
    assert r["ok"] is False and r["error"]["code"] == -22
    assert "io_timeout 300: must be a whole number of seconds in 1..255" in r["error"]["message"]
    assert server.agent.calls == []


def test_unprivileged_peer_cannot_add_lockspaces_safety(server):
    os.chmod(server.path, 0o666)  # let uid 65534 connect, to test the check behind the mode
    code = (
        "import json,socket,sys;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
        's.sendall(b\'{"op":"add_lockspace","lockspace":"LS:1:/x:0"}\\n\');'
        "print(s.makefile().readline())"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-c", code, server.path],
        capture_output=True,
        text=True,
        user=65534,
        group=65534,
        check=True,
        cwd="/",
    ).stdout
    r = json.loads(out)
    assert r["ok"] is False and r["error"]["code"] == -13 and "needs root" in r["error"]["message"]
    assert server.agent.calls == []


def test_convert_names_the_lease_and_the_mode(server):
    server.agent.convert = lambda *a, **kw: server.agent.calls.append(("convert", a, kw))
    req = {"op": "convert", "pid": os.getpid(), "resource": "LS:r1", "shared": True}
    assert ask(server.path, json.dumps(req).encode() + b"\n")["ok"] is True
    assert server.agent.calls[-1] == ("convert", (os.getpid(), "LS:r1", True), {"wait": True})
    bad = ask(server.path, json.dumps({**req, "shared": "yes"}).encode() + b"\n")
    assert bad["ok"] is False and "'shared'" in bad["error"]["message"]
