"""What the agent saves in its run directory so that a restart harms nobody.

``state.json`` (written atomically: temp file, fsync, rename) holds, for this boot of this node:
  * every joined lockspace: its config and our last delta-lease record (hex of the 200 bytes);
  * every client process holding leases: pid, start time (pid-reuse guard), owner, kill command,
    and per lease the committed leader and our dblock, exactly what ``release`` needs.
It is only trusted if written by the same node name during the same boot (``boot_id``): after a
reboot every process it names is gone and the watchdog has long fired.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field

from .clients import Client, HeldLease
from .engine.ondisk import Dblock, Leader, Sizes
from .engine.paxos import Resource, Token
from .lockspace import LIVE, Lockspace, LockspaceConfig

STATE_FILE = "state.json"
VERSION = 1


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


@dataclass
class SavedLockspace:
    cfg: LockspaceConfig
    record: Leader


@dataclass
class SavedClient:
    key: str
    pid: int
    start_time: int
    owner: str
    kill_command: list[str] | None
    leases: list[HeldLease] = field(default_factory=list)


@dataclass
class Saved:
    lockspaces: list[SavedLockspace] = field(default_factory=list)
    clients: list[SavedClient] = field(default_factory=list)


def _lease_json(h: HeldLease) -> dict:
    t = h.token
    return {
        "lockspace": h.res.lockspace,
        "name": h.res.name,
        "path": h.res.path,
        "offset": h.res.offset,
        "shared": h.shared,
        "since": h.since,
        "sector_size": t.sizes.sector_size,
        "align_size": t.sizes.align_size,
        "host_id": t.host_id,
        "generation": t.generation,
        "leader": t.leader.pack().hex(),
        "dblock": t.dblock.pack().hex(),
    }


def _lease_from(d: dict) -> HeldLease:
    res = Resource(d["lockspace"], d["name"], d["path"], d["offset"])
    token = Token(
        res,
        Sizes(d["sector_size"], d["align_size"]),
        d["host_id"],
        d["generation"],
        d["shared"],
        Leader.unpack(bytes.fromhex(d["leader"])),
        Dblock.unpack(bytes.fromhex(d["dblock"])),
    )
    return HeldLease(res, token, d["shared"], d["since"])


def save(
    run_dir: str, node: str, lockspaces: dict[str, Lockspace], clients: dict[str, Client]
) -> None:
    doc = {
        "version": VERSION,
        "boot_id": boot_id(),
        "node": node,
        "lockspaces": [
            {**asdict(ls.cfg), "record": ls.lease.record.pack().hex()}
            for ls in lockspaces.values()
            if ls.state == LIVE and ls.lease is not None and ls.lease.record is not None
        ],
        "clients": [
            {
                "key": c.key,
                "pid": c.pid,
                "start_time": c.start_time,
                "owner": c.owner,
                "kill_command": c.kill_command,
                "leases": [_lease_json(h) for h in c.leases.values()],
            }
            for c in clients.values()
            if c.leases and not c.dead
        ],
    }
    os.makedirs(run_dir, mode=0o750, exist_ok=True)
    path = os.path.join(run_dir, STATE_FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(run_dir: str, node: str) -> Saved:
    """The saved state, or nothing if absent, from another boot or another node name."""
    try:
        with open(os.path.join(run_dir, STATE_FILE)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return Saved()
    if doc.get("version") != VERSION or doc.get("boot_id") != boot_id() or doc.get("node") != node:
        return Saved()
    saved = Saved()
    for d in doc["lockspaces"]:
        record = Leader.unpack(bytes.fromhex(d.pop("record")))
        saved.lockspaces.append(SavedLockspace(LockspaceConfig(**d), record))
    for d in doc["clients"]:
        saved.clients.append(
            SavedClient(
                d["key"],
                d["pid"],
                d["start_time"],
                d["owner"],
                d["kill_command"],
                [_lease_from(x) for x in d["leases"]],
            )
        )
    return saved


def clear(run_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir, STATE_FILE))
