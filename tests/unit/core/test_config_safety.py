"""Configuration the delta lease cannot honestly record is refused at every way in.

io_timeout N is stored in one byte of our delta lease (sanlock writes ``N & 0xFF``): an agent
running with N = 300 would wait out 8 x 300 s itself while every other host reads 44 and judges it
dead after 8 x 44 + W. W above sanlock's 60 is judged too early by sanlock hosts, which ignore our
fire-timeout tag and assume 60.
"""

from __future__ import annotations

import json
import os

import pytest
from leasekit import make_lockspace
from vmlease_agent.core import state
from vmlease_agent.core.lockspace import LockspaceConfig
from vmlease_agent.daemon import main as daemon
from vmlease_agent.engine import delta, errors


@pytest.mark.parametrize("bad", [0, 256, 300, -1, 10.5, True, "10"])
def test_io_timeout_the_record_cannot_hold_is_refused_safety(bad):
    with pytest.raises(errors.InvalidArgument, match=r"io_timeout .* in 1\.\.255"):
        LockspaceConfig("LS", 1, "/x", 0, bad)


def test_agent_command_line_refuses_io_timeout_300_safety(tmp_path, capsys):
    rc = daemon.main(
        [
            f"--run-dir={tmp_path}",
            "--watchdog=none",
            f"--lockspace=LS:1:{tmp_path}/ls:0:300",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "lockspace LS: io_timeout 300: must be a whole number of seconds in 1..255" in err
    assert not os.path.exists(tmp_path / "state.json")  # refused before anything started


def test_agent_command_line_names_a_non_numeric_io_timeout(tmp_path, capsys):
    rc = daemon.main([f"--run-dir={tmp_path}", "--watchdog=none", "--lockspace=LS:1:/p:0:ten"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "io_timeout 'ten': must be a whole number of seconds in 1..255" in err


def test_delta_lease_never_writes_a_wrapped_io_timeout_safety(lease_dir):
    ls = make_lockspace(lease_dir)
    with pytest.raises(errors.InvalidArgument, match="io_timeout 300"):
        delta.DeltaLease(ls.st, ls.loc, ls.sizes, 1, "host", 300)


def test_saved_state_with_an_impossible_io_timeout_is_refused(tmp_path):
    doc = {
        "version": state.VERSION,
        "boot_id": state.boot_id(),
        "node": "n",
        "lockspaces": [
            {"name": "LS", "host_id": 1, "path": "/p", "offset": 0, "io_timeout": 300,
             "record": "00" * 200}
        ],
        "clients": [],
    }  # fmt: skip
    (tmp_path / state.STATE_FILE).write_text(json.dumps(doc))
    with pytest.raises(errors.InvalidArgument, match="io_timeout 300"):
        state.load(str(tmp_path), "n")
