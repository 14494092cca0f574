"""What the agent saves in its run directory so that a restart harms nobody.

``state.json`` (written atomically: temp file, fsync, rename) holds, for this boot of this node:
  * every joined lockspace: its config and our last delta-lease record (hex of the 200 bytes);
  * every client process holding leases: pid, start time (pid-reuse guard), owner, kill command,
    and per lease the committed leader and our dblock, exactly what ``release`` needs.
It is only trusted if written by the same node name during the same boot (``boot_id``): after a
reboot every process it names is gone and the watchdog has long fired.

A file of this boot that cannot be adopted (another node name, another format version, not
readable) is never overwritten: it is moved aside (``state.json.unusable-<time>``) and reported,
and the agent fails closed: the delta leases' machine identity makes it wait out the previous
incarnation's deadline + W before re-joining, and the watchdog stays closed meanwhile (``agent``).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
from dataclasses import asdict, dataclass, field

from vmlease_agent.core.holders import Client, HeldLease
from vmlease_agent.core.lockspace import LIVE, JoinedLockspace, LockspaceConfig
from vmlease_agent.engine import ondisk, timeouts
from vmlease_agent.engine.ondisk import Dblock, Leader, Sizes
from vmlease_agent.engine.paxos import Resource, Token

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
    kill_appends_pid: bool = True
    #: the pid had exited with its lifeline open (``core.holders``): unknown processes hold it
    exited: bool = False
    restrict: int = 0


@dataclass
class Saved:
    lockspaces: list[SavedLockspace] = field(default_factory=list)
    clients: list[SavedClient] = field(default_factory=list)
    #: why a state file of this boot was not adopted ("" when adopted, absent, or of another boot)
    problem: str = ""
    #: for such a file: until when (our clock) its holders may still run and its agent's
    #: watchdog countdown may still be fed by an open (the latest T + 1 + 8N + W it records)
    previous_until: float = 0.0


def _lease_json(h: HeldLease) -> dict:
    t = h.token
    return {
        "lockspace": h.res.lockspace,
        "name": h.res.name,
        "path": h.res.path,
        "offset": h.res.offset,
        "shared": h.shared,
        "since": h.since,
        "disk_path": h.disk_path,
        "sector_size": t.sizes.sector_size,
        "align_size": t.sizes.align_size,
        "host_id": t.host_id,
        "generation": t.generation,
        "leader": t.leader.pack().hex(),
        "dblock": t.dblock.pack().hex(),
        "lvb": None if t.lvb is None else t.lvb.hex(),
        "lvb_dirty": t.lvb_dirty,
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
        None if d.get("lvb") is None else bytearray.fromhex(d["lvb"]),
        d.get("lvb_dirty", False),
    )
    return HeldLease(res, token, d["shared"], d["since"], disk_path=d.get("disk_path"))


def save(
    run_dir: str, node: str, lockspaces: dict[str, JoinedLockspace], clients: dict[str, Client]
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
                "kill_appends_pid": c.kill_appends_pid,
                "exited": c.exited,
                "restrict": c.restrict,
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
    """The saved state; nothing if absent or of another boot; ``problem`` if not adoptable."""
    path = os.path.join(run_dir, STATE_FILE)
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return Saved()
    except (OSError, ValueError) as e:
        return _unusable(path, f"it is not readable ({e})")
    if not isinstance(doc, dict):
        return _unusable(path, "it is not a state document")
    if doc.get("boot_id") != boot_id():
        return Saved()  # a previous boot: every process it names is gone
    if doc.get("version") != VERSION:
        return _unusable(
            path,
            f"it has format version {doc.get('version')!r}, this agent reads {VERSION}",
            _previous_until(doc),
        )
    if doc.get("node") != node:
        return _unusable(
            path,
            f"it was written by node {doc.get('node')!r}, and this agent is {node!r}",
            _previous_until(doc),
        )
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
                current_kill_command(d["kill_command"]),
                [_lease_from(x) for x in d["leases"]],
                d.get("kill_appends_pid", True),  # absent: saved before sanlock's killpath
                d.get("exited", False),
                d.get("restrict", 0),  # absent: saved before sanlock's restrict
            )
        )
    return saved


#: modules a kill command saved by an earlier agent may name, and where they live now
_MOVED_MODULES = {"vmlease_agent.libvirt_fence": "vmlease_agent.virt.fence"}


def current_kill_command(command: list[str] | None) -> list[str] | None:
    """A kill command saved before the modules moved (vmlease 0.1) runs the module's new path:
    a holder adopted across that upgrade must still be fenced through libvirt."""
    if command is None:
        return None
    return [_MOVED_MODULES.get(arg, arg) for arg in command]


def _previous_until(doc: dict) -> float:
    """The latest deadline + W of the delta leases a state document of this boot records, on
    our clock (same boot, same clock; +1: timestamps are whole seconds). 0 if none is legible."""
    until = 0.0
    for d in doc.get("lockspaces") or []:
        try:
            rec = Leader.unpack(bytes.fromhex(d["record"]))
        except (KeyError, TypeError, ValueError, struct.error):
            continue
        n = rec.io_timeout or int(d.get("io_timeout") or timeouts.MAX_IO_TIMEOUT)
        w = ondisk.watchdog_fire_timeout_of(rec, timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT)
        until = max(until, rec.timestamp + 1 + timeouts.host_dead_seconds(n, w))
    return until


def _unusable(path: str, why: str, previous_until: float = 0.0) -> Saved:
    aside = f"{path}.unusable-{int(time.time())}"
    os.replace(path, aside)
    return Saved(
        problem=f"the saved state {path} was not adopted: {why}; it is kept as {aside}. The "
        "holders it names may still run: the watchdog stays closed until the deadline + W of "
        "every delta lease it records, and lockspaces whose records show an earlier agent of "
        "this boot are re-joined only after it",
        previous_until=previous_until,
    )


def clear(run_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir, STATE_FILE))
