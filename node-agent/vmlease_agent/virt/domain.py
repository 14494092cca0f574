"""Which leases a libvirt domain needs, read from its domain XML alone.

Pure functions over ``xml.etree``: no libvirt import, no I/O except canonicalising disk paths
(and that goes through an injectable ``resolve`` function). The libvirt hook and the agent call
:func:`parse_domain` on the XML libvirt hands them (the hook's stdin, ``virsh dumpxml``).

Disks (``<devices><disk>``)
    Only storage that is a path on this node gets a lease: ``type='file'``, ``'block'`` and
    ``'dir'``, like libvirt's own lock manager (``virDomainLockManagerAddImage``). Network,
    pool-volume, NVMe and vhost-user disks, and drives without a source (an empty CD-ROM), are
    listed with mode ``none`` and the reason, so a caller can log why a disk is unprotected.
    Only the top image is leased: backing files are opened read-only by QEMU.

Modes
    * ``<shareable/>`` → **shared**: several domains may run on it at once (cluster FS).
    * ``<readonly/>`` → **shared**. libvirt's sanlock driver gives read-only disks *no* lease at
      all. vmlease deliberately takes a shared lease instead: readers then coexist with each
      other, but a writer elsewhere (who needs the lease exclusively) is refused while any
      reader runs, and a reader cannot start under a running writer. Without it a writer could
      rewrite an image under a reader's page cache and hand it torn or corrupt data.
    * otherwise → **exclusive**.

Resource names
    The lease name of a disk is the lowercase hex MD5 of its fully qualified path, computed
    exactly as libvirt's sanlock driver does (``virCryptoHashString(VIR_CRYPTO_HASH_MD5, path)``
    over the path's bytes): ``/var/lib/libvirt/images/demo.img`` →
    ``bfa0240911bc17753e0b473688822159``. vmlease hashes the *canonical* path
    (``os.path.realpath``), whereas libvirt hashes the path as written: two domains reaching one
    image through different symlinks must get the same lease. For an already canonical path
    (the usual ``/var/lib/libvirt/images/...``) both names are the same.

Stable identities (disks whose path differs between nodes)
    A path-derived name only works when every node sees the image under the same canonical path
    (a shared filesystem mounted at the same place). Block devices resolve to names like
    ``/dev/sdc`` that differ per node and per boot, and mount points may differ too. For those,
    the domain names the disk's identity in its ``<metadata>``, in the vmlease namespace
    :data:`METADATA_NS` (libvirt keeps a namespaced metadata element verbatim, and passes it to
    hooks)::

        <metadata>
          <vmlease:leases xmlns:vmlease="urn:vmlease:libvirt:1">
            <vmlease:disk target="vdb" identity="pvc-7d1e3c2a"/>   <!-- explicit identity -->
            <vmlease:disk target="vdc" identity-from="serial"/>    <!-- the disk's <serial> -->
            <vmlease:lease key="vm-key" shared="yes"/>             <!-- see explicit leases -->
          </vmlease:leases>
        </metadata>

    ``target`` is the disk's ``<target dev=...>`` (unique within a domain, unlike the path).
    The lease name is then the MD5 of the identity instead of the path, so every node computes
    the same name. An identity must not start with ``/``: that prefix is reserved for paths,
    so an identity can never collide with a path-derived name. The disk's ``<serial>`` is used
    only when asked for (``identity-from="serial"``), never implicitly: serials are guest-visible
    labels that tools often reuse (``disk0``) and would make unrelated disks share a lease.
    A metadata entry for a target the domain does not have is an error, not silently ignored:
    a typo would otherwise fall back to a per-node path name and lose mutual exclusion.

Explicit leases (``<devices><lease>``)
    ``<lockspace>``, ``<key>``, ``<target path= offset=>`` are returned as explicit resources.
    Validated as libvirt's sanlock driver and sanlock do: the key at most 47 bytes (libvirt
    copies it into sanlock's ``char[48]`` with a terminating NUL), the lockspace at most 48
    bytes (sanlock's on-disk name field; note libvirt's own driver would cap it at 47 as well),
    the offset a non-negative decimal integer (libvirt refuses ``0x10``). libvirt's lease XML
    has no "shared" flag and drops unknown attributes when it stores the XML, so a lease is
    marked shared through the metadata element ``<vmlease:lease key=... shared="yes"/>``.
"""

from __future__ import annotations

import enum
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from vmlease_api.naming import disk_resource_name

from vmlease_agent.engine import Templated

METADATA_NS = "urn:vmlease:libvirt:1"
LEASE_KEY_MAX_BYTES = 47
LOCKSPACE_NAME_MAX_BYTES = 48
LEASED_DISK_TYPES = {"file": "file", "block": "dev", "dir": "dir"}  # disk type → <source> attr
ON_LOCKFAILURE_VALUES = frozenset({"poweroff", "restart", "pause", "ignore"})

_MD = f"{{{METADATA_NS}}}"


# ---- errors -------------------------------------------------------------------------------


class DomainXMLError(Templated, ValueError):
    """The domain XML cannot be turned into leases; the message names domain, disk and fix.

    Subclasses carry a ``template``; the keyword fields stay available as ``.fields`` so callers
    (the hook, the agent's API) can report them structurally.
    """

    template = "{problem}"


class UnparseableDomainXML(DomainXMLError):
    template = (
        "domain XML is not well-formed: {detail}; pass the XML libvirt produces "
        "(the hook's stdin or `virsh dumpxml`), not an edited copy"
    )


class InvalidDomainXML(DomainXMLError):
    template = "domain {domain!r}: {problem}; fix: {fix}"


class DiskPathError(DomainXMLError):
    template = (
        "domain {domain!r}, disk {disk!r}: source path {path!r} cannot be canonicalised "
        "({reason}); fix: correct <source> or make the storage available on this node "
        "before starting the domain"
    )


class DiskIdentityError(DomainXMLError):
    template = (
        "domain {domain!r}, disk {disk!r}: {problem}; fix: {fix} "
        "(vmlease metadata namespace " + METADATA_NS + ")"
    )


class LeaseElementError(DomainXMLError):
    template = "domain {domain!r}, <lease> {lease}: {problem}; fix: {fix}"


# ---- results ------------------------------------------------------------------------------


class LeaseMode(enum.Enum):
    EXCLUSIVE = "exclusive"
    SHARED = "shared"
    NONE = "none"


@dataclass(frozen=True)
class DiskLease:
    """One ``<disk>``: the lease it needs (``mode`` NONE: none, and ``reason`` says why)."""

    target: str  # <target dev=...>, e.g. "vda"
    source: str | None  # the path as written in the XML, None without a path
    path: str | None  # canonical path, None when not leased
    mode: LeaseMode
    resource: str | None  # 32 lowercase hex chars, None when not leased
    identity: str | None  # hashed instead of the path when set (see module docstring)
    reason: str


@dataclass(frozen=True)
class ExplicitLease:
    """One ``<lease>`` element: a sanlock resource the management layer laid out itself."""

    lockspace: str
    key: str
    path: str
    offset: int
    shared: bool


@dataclass(frozen=True)
class DomainLeases:
    name: str
    uuid: str | None
    on_lockfailure: str | None
    disks: tuple[DiskLease, ...]
    leases: tuple[ExplicitLease, ...]

    def disk_resources(self) -> dict[str, LeaseMode]:
        """Lease name → mode, one entry per resource: what must be acquired for the disks.

        A domain may attach one image twice (two read-only CD-ROMs of one ISO); sanlock takes a
        resource once per request, so duplicates merge, and exclusive wins over shared.
        """
        out: dict[str, LeaseMode] = {}
        for disk in self.disks:
            if disk.resource is None:
                continue
            if out.get(disk.resource) is not LeaseMode.EXCLUSIVE:
                out[disk.resource] = disk.mode
        return out


# ---- the functions ------------------------------------------------------------------------


def canonical_path(path: str) -> str:
    """The default ``resolve``: an absolute path with every symlink resolved; it must exist.

    Relative paths are refused: they would resolve against the agent's working directory.
    """
    if not os.path.isabs(path):
        raise ValueError("not an absolute path")
    return os.path.realpath(path, strict=True)


def parse_domain(
    xml: str | bytes, *, resolve: Callable[[str], str] = canonical_path
) -> DomainLeases:
    """Every lease the domain needs: one :class:`DiskLease` per disk plus the ``<lease>``s.

    ``resolve`` canonicalises a disk path and raises ``OSError`` or ``ValueError`` when it
    cannot (tests and off-node callers pass their own).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise UnparseableDomainXML(detail=str(e)) from None
    if root.tag != "domain":
        raise InvalidDomainXML(
            domain="?",
            problem=f"the root element is <{root.tag}>, not <domain>",
            fix="pass a libvirt domain XML",
        )
    name = (root.findtext("name") or "").strip()
    if not name:
        raise InvalidDomainXML(
            domain="?", problem="no <name> element", fix="give the domain a <name>"
        )
    uuid = (root.findtext("uuid") or "").strip() or None
    on_lockfailure = _on_lockfailure(root, name)
    identities, shared_keys = _metadata(root, name)

    disks = tuple(
        _disk(disk, index, name, identities, resolve)
        for index, disk in enumerate(root.iterfind("devices/disk"))
    )
    unknown = sorted(set(identities) - {d.target for d in disks})
    if unknown:
        raise DiskIdentityError(
            domain=name,
            disk=unknown[0],
            problem="the metadata names a disk target the domain does not have",
            fix="use the <target dev=...> of one of the domain's disks",
        )
    leases = tuple(
        _lease(lease, index, name, shared_keys)
        for index, lease in enumerate(root.iterfind("devices/lease"))
    )
    missing = sorted(shared_keys - {lease.key for lease in leases})
    if missing:
        raise LeaseElementError(
            domain=name,
            lease=f"key {missing[0]!r}",
            problem="the vmlease metadata marks a lease shared that the domain does not have",
            fix="use the <key> of one of the domain's <lease> elements",
        )
    return DomainLeases(name, uuid, on_lockfailure, disks, leases)


# ---- helpers ------------------------------------------------------------------------------


def _on_lockfailure(root: ET.Element, domain: str) -> str | None:
    value = root.findtext("on_lockfailure")
    if value is None:
        return None
    value = value.strip()
    if value not in ON_LOCKFAILURE_VALUES:
        raise InvalidDomainXML(
            domain=domain,
            problem=f"<on_lockfailure> is {value!r}",
            fix="use one of " + ", ".join(sorted(ON_LOCKFAILURE_VALUES)),
        )
    return value


def _metadata(root: ET.Element, domain: str) -> tuple[dict[str, ET.Element], set[str]]:
    """The vmlease metadata: per-disk identity elements by target, and the shared lease keys."""
    identities: dict[str, ET.Element] = {}
    shared_keys: set[str] = set()
    for element in root.iterfind(f"metadata/{_MD}leases/{_MD}disk"):
        target = (element.get("target") or "").strip()
        if not target:
            raise DiskIdentityError(
                domain=domain,
                disk="?",
                problem="a <vmlease:disk> element has no target attribute",
                fix='add target="<the disk\'s target dev>"',
            )
        if target in identities:
            raise DiskIdentityError(
                domain=domain,
                disk=target,
                problem="the metadata names this disk twice",
                fix="keep one <vmlease:disk> element per disk",
            )
        identities[target] = element
    for element in root.iterfind(f"metadata/{_MD}leases/{_MD}lease"):
        key = (element.get("key") or "").strip()
        shared = element.get("shared", "no")
        if not key or shared not in ("yes", "no"):
            raise LeaseElementError(
                domain=domain,
                lease=f"key {key!r}",
                problem=f"<vmlease:lease key={key!r} shared={shared!r}> is malformed",
                fix='write <vmlease:lease key="<the lease key>" shared="yes"/>',
            )
        if shared == "yes":
            shared_keys.add(key)
    return identities, shared_keys


def _disk(
    disk: ET.Element,
    index: int,
    domain: str,
    identities: dict[str, ET.Element],
    resolve: Callable[[str], str],
) -> DiskLease:
    target_element = disk.find("target")
    target = (target_element.get("dev") if target_element is not None else None) or f"#{index}"
    kind = disk.get("type", "file")

    def ignored(source: str | None, reason: str) -> DiskLease:
        return DiskLease(target, source, None, LeaseMode.NONE, None, None, reason)

    if kind not in LEASED_DISK_TYPES:
        return ignored(
            None,
            f"type={kind!r} storage is not a path on this node; only file, block and dir "
            "disks get leases (as with libvirt's lock manager)",
        )
    element = disk.find("source")
    source = element.get(LEASED_DISK_TYPES[kind]) if element is not None else None
    if not source:
        return ignored(None, "no source (empty drive): nothing to lease")
    try:
        path = resolve(source)
    except (OSError, ValueError) as e:
        raise DiskPathError(domain=domain, disk=target, path=source, reason=str(e)) from None

    if disk.find("shareable") is not None:
        mode, reason = LeaseMode.SHARED, "<shareable/>: several domains may use it at once"
    elif disk.find("readonly") is not None:
        mode, reason = (
            LeaseMode.SHARED,
            "<readonly/>: shared, so readers coexist but a writer elsewhere is refused",
        )
    else:
        mode, reason = LeaseMode.EXCLUSIVE, "read/write disk: one writer at a time"

    identity = _identity(disk, target, domain, identities.get(target))
    resource = disk_resource_name(identity if identity is not None else path)
    return DiskLease(target, source, path, mode, resource, identity, reason)


def _identity(disk: ET.Element, target: str, domain: str, element: ET.Element | None) -> str | None:
    if element is None:
        return None
    explicit = element.get("identity")
    source = element.get("identity-from")
    if (explicit is None) == (source is None):
        raise DiskIdentityError(
            domain=domain,
            disk=target,
            problem="<vmlease:disk> needs exactly one of identity= and identity-from=",
            fix='write identity="<stable id>" or identity-from="serial"',
        )
    if source is not None:
        if source != "serial":
            raise DiskIdentityError(
                domain=domain,
                disk=target,
                problem=f"identity-from={source!r} is not supported",
                fix='use identity-from="serial" or an explicit identity=',
            )
        explicit = disk.findtext("serial")
        if explicit is None or not explicit.strip():
            raise DiskIdentityError(
                domain=domain,
                disk=target,
                problem='identity-from="serial" but the disk has no <serial>',
                fix="add <serial>...</serial> to the disk or use an explicit identity=",
            )
    assert explicit is not None  # exactly one of the two is set, checked above
    identity = explicit.strip()
    if not identity or identity.startswith("/"):
        raise DiskIdentityError(
            domain=domain,
            disk=target,
            problem=f"identity {identity!r} is empty or starts with '/' (reserved for paths)",
            fix="use a stable id such as the volume's UUID or PVC name",
        )
    return identity


def _lease(lease: ET.Element, index: int, domain: str, shared_keys: set[str]) -> ExplicitLease:
    key = (lease.findtext("key") or "").strip()
    lockspace = (lease.findtext("lockspace") or "").strip()
    target = lease.find("target")
    label = f"#{index} (key {key!r})"

    def bad(problem: str, fix: str) -> LeaseElementError:
        return LeaseElementError(domain=domain, lease=label, problem=problem, fix=fix)

    if not key:
        raise bad("no <key>", "name the sanlock resource in <key>")
    if len(key.encode()) > LEASE_KEY_MAX_BYTES:
        raise bad(
            f"<key> is {len(key.encode())} bytes, libvirt allows {LEASE_KEY_MAX_BYTES}",
            "use a shorter resource name",
        )
    if not lockspace:
        raise bad("no <lockspace>", "name the sanlock lockspace that holds the lease")
    if len(lockspace.encode()) > LOCKSPACE_NAME_MAX_BYTES:
        raise bad(
            f"<lockspace> is {len(lockspace.encode())} bytes, sanlock allows "
            f"{LOCKSPACE_NAME_MAX_BYTES}",
            "use a shorter lockspace name",
        )
    path = target.get("path", "") if target is not None else ""
    if target is None or not os.path.isabs(path):
        raise bad(
            f"<target path={path!r}> is missing or not absolute",
            "give the absolute path of the lease area",
        )
    offset_text = target.get("offset", "0").strip()
    if not (offset_text.isascii() and offset_text.isdigit()):
        raise bad(
            f"<target offset={offset_text!r}> is not a non-negative decimal integer",
            "write the byte offset in decimal (libvirt refuses hex too)",
        )
    return ExplicitLease(lockspace, key, path, int(offset_text), key in shared_keys)
