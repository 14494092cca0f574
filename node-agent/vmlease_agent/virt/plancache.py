"""A per-domain cache of the hook's lease plan, so a restart skips the domain XML parser.

Why: ``prepare`` is on the start path of every domain, and importing ``virt.domain`` (it pulls
in ``dataclasses``, ``xml.etree``, ``typing``, ``enum``, ``hashlib``) costs a fresh Python process
about 25 ms: more than the agent's acquire. libvirt hands ``prepare`` the same XML at every start
of an unchanged domain, so the plan (``virt.plan``) of the last start is kept in
``<run_dir>/libvirt-plans/<uuid>`` (tmpfs: gone at reboot) and reused when it provably is the
same computation:

* the same XML bytes, except the root's ``id='N'`` attribute (libvirt numbers each start);
* the same configuration (its rendered text) and the same vmlease code (version and the mtimes
  of the modules that compute plans);
* every disk source path still canonicalises to the same path (``realpath``, as
  ``virt.domain.canonical_path``; a symlink moved since is a miss).

Those are all the inputs of the plan, so a hit gives exactly what parsing would. Anything else —
a missing or unreadable entry, a decoding error, a path that no longer resolves — is a miss, and
the full parse (with its error messages) runs. Entries are written atomically (rename); a reader
never trusts a partial one.
"""

import os

from vmlease_agent import __version__
from vmlease_agent.rpc.wire import decode, encode
from vmlease_agent.virt.plan import Want

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vmlease_agent.virt.config import LibvirtConfig

DIRECTORY = "libvirt-plans"
#: the modules (in this directory) whose code computes a plan: their mtimes are in the fingerprint
CODE = ("domain.py", "plan.py", "plancache.py")


def normalise(xml: bytes) -> str:
    """The XML without the root element's ``id='N'`` (the only part that changes per start)."""
    end = xml.find(b">")
    head = xml[:end]
    i = head.find(b" id='")
    if i >= 0:
        j = head.find(b"'", i + 5)
        if j > 0:
            xml = head[:i] + head[j + 1 :] + xml[end:]
    return xml.decode(errors="surrogateescape")


def fingerprint(cfg: "LibvirtConfig") -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    stamps = []
    for name in CODE:
        try:
            stamps.append(str(os.stat(os.path.join(here, name)).st_mtime_ns))
        except OSError:
            stamps.append("?")
    return f"{__version__} {' '.join(stamps)}\n{cfg.render()}"


def canonical(path: str) -> str:
    """``virt.domain.canonical_path`` (not imported: avoiding that import is the point)."""
    if not os.path.isabs(path):
        raise ValueError("not an absolute path")
    return os.path.realpath(path, strict=True)


def _path(cfg: "LibvirtConfig", uuid: str) -> str:
    return os.path.join(cfg.run_dir, DIRECTORY, uuid.replace("/", "_"))


class Plan:
    """What ``prepare`` needs from the XML: the domain's name, uuid, policy and leases."""

    def __init__(self, name: str, uuid: str, on_lockfailure: str | None, wants: list[Want]) -> None:
        self.name = name
        self.uuid = uuid
        self.on_lockfailure = on_lockfailure
        self.wants = wants


def load(cfg: "LibvirtConfig", uuid: str, xml: bytes) -> Plan | None:
    try:
        with open(_path(cfg, uuid)) as f:
            entry = decode(f.read())
        if entry["xml"] != normalise(xml) or entry["fingerprint"] != fingerprint(cfg):
            return None
        for source, path in entry["paths"]:
            if canonical(source) != path:
                return None
        wants = [Want(*w) for w in entry["wants"]]
        return Plan(entry["name"], entry["uuid"], entry["on_lockfailure"], wants)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(cfg: "LibvirtConfig", xml: bytes, plan: Plan, paths: dict[str, str]) -> None:
    """Best effort: a cache that cannot be written only costs the next start the parse."""
    entry = {
        "xml": normalise(xml),
        "fingerprint": fingerprint(cfg),
        "paths": [[source, path] for source, path in paths.items()],
        "name": plan.name,
        "uuid": plan.uuid,
        "on_lockfailure": plan.on_lockfailure,
        "wants": [
            [w.lockspace, w.resource, w.path, w.offset, w.shared, w.what, w.auto, w.disk]
            for w in plan.wants
        ],
    }
    path = _path(cfg, plan.uuid)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(encode(entry))
        os.replace(tmp, path)
    except OSError:
        try:  # noqa: SIM105 - contextlib costs the hook milliseconds per call
            os.unlink(tmp)
        except OSError:
            pass
