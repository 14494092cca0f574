"""``vmlease direct ...``: lease operations straight on storage, without an agent (sanlock direct).

Output mirrors sanlock's where admins parse it (``dump`` columns, ``read_leader`` fields, the
``<cmd> done <rv>`` line). Two deliberate differences: ``release`` really releases (sanlock 3.8.5's
direct release writes nothing), and the host name written by ``acquire_id`` is this node's stable
name (``-e``, default the hostname) rather than a fresh random UUID, so acquiring the same host_id
again after a crash does not wait 8N+60 s.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Iterator

from vmlease_agent.engine import delta, errors, leasespec, ondisk, paxos, timeouts
from vmlease_agent.engine.directio import Storage
from vmlease_agent.engine.ondisk import Leader, Sizes


def _sizes(args: argparse.Namespace, st: Storage) -> Sizes:
    """-Z/-A as given; sanlock's defaults otherwise (storage sector size, 1M for 512, 8M for 4K)."""
    sector = args.sector_size or st.sector_size
    if sector not in ondisk.SECTOR_SIZES:
        raise errors.InvalidArgument(what=f"sector size {sector}", detail="use -Z 512 or -Z 4096")
    if args.align_size:
        return Sizes(sector, ondisk.parse_align(args.align_size))
    return Sizes.default_for(sector)


def _io_timeout(args: argparse.Namespace) -> int:
    n = args.io_timeout if args.io_timeout is not None else timeouts.DEFAULT_IO_TIMEOUT
    return delta.check_io_timeout(n, "-o")


def cmd_init(args: argparse.Namespace) -> int:
    if bool(args.lockspace) == bool(args.resource):
        raise errors.InvalidArgument(what="init", detail="give exactly one of -s or -r")
    if args.lockspace:
        ls = leasespec.parse_lockspace(args.lockspace)
        with Storage(ls.path) as st:
            delta.init_lockspace(
                st, ls.location, _sizes(args, st), _io_timeout(args), force=args.force
            )
    else:
        r = leasespec.parse_resource(args.resource).resource
        with Storage(r.path) as st:
            paxos.init_resource(
                st,
                r,
                _sizes(args, st),
                num_hosts=args.num_hosts,
                clear=bool(args.clear),
                force=args.force,
            )
    print("init done 0")
    return 0


# ---- dump -----------------------------------------------------------------------------------

_HEADER = "%8s %36s %48s %10s %4s %4s %s"


def _row(offset: int, lr: Leader) -> str:
    return (
        f"{offset:08d} {lr.space_name:>36} {lr.resource_name:>48} {lr.timestamp:010d} "
        f"{lr.owner_id:04d} {lr.owner_generation:04d}"
    )


def dump_lines(st: Storage, start: int, size: int, force_mode: int) -> Iterator[str]:
    """sanlock ``direct dump``: one line per used delta record / resource, area by area."""
    yield _HEADER % ("offset", "lockspace", "resource", "timestamp", "own", "gen", "lver") + (
        "/req/mode" if force_mode else ""
    )
    sizes = None
    probe = start
    while sizes is None and (not size or probe < start + size) and probe < st.size():
        head = st.read(probe, 4096, 60.0)
        magic = int.from_bytes(head[:4], "little")
        if magic in (ondisk.DELTA_DISK_MAGIC, ondisk.PAXOS_DISK_MAGIC):
            sizes = Leader.unpack(head).sizes
        probe += ondisk.MiB
    if sizes is None:
        raise errors.InvalidArgument(
            what=f"dump of {st.path}:{start}", detail="no lease found: check the path and offset"
        )
    ss, align = sizes.sector_size, sizes.align_size
    off = start
    end = start + size if size else None
    while end is None or off < end:
        area = st.read(off, align, 60.0) if off < st.size() else b""
        magic = int.from_bytes(area[:4], "little") if len(area) >= 4 else 0
        if magic == ondisk.DELTA_DISK_MAGIC:
            for i in range(len(area) // ss):
                rec = area[i * ss : i * ss + ondisk.LEADER_SIZE]
                if not int.from_bytes(rec[:4], "little"):
                    continue
                lr = Leader.unpack(rec)
                if not lr.owner_id and not lr.owner_generation:
                    continue
                line = _row(off + i * ss, lr)
                if force_mode:
                    bitmap = area[i * ss + ondisk.HOSTID_BITMAP_OFFSET :]
                    line += "".join(
                        f" {h}"
                        for h in range(1, sizes.max_hosts + 1)
                        if ondisk.bitmap_test(bitmap, h)
                    )
                yield line
        elif magic == ondisk.PAXOS_DISK_MAGIC:
            lr = Leader.unpack(area)
            line = f"{_row(off, lr)} {lr.lver}"
            if force_mode:
                rr = ondisk.RequestRecord.unpack(area, ss)
                line += f"/{rr.lver}/{rr.force_mode}"
            yield line
            for i in range(lr.num_hosts):
                pos = (2 + i) * ss
                if pos + ss > len(area):
                    break
                if force_mode > 1:
                    db = ondisk.Dblock.unpack(area, pos)
                    if db.mbal or db.inp or db.lver:
                        yield (
                            f"dblock[{i:04d}] mbal {db.mbal} bal {db.bal} inp {db.inp} inp2 "
                            f"{db.inp2} inp3 {db.inp3} lver {db.lver} sum {db.checksum:x}"
                        )
                mb = ondisk.ModeBlock.unpack(area, pos + ondisk.MBLOCK_OFFSET)
                if mb.shared:
                    yield " " * 106 + f"{i + 1:04d} {mb.generation:04d} SH"
        elif end is None:
            break
        off += align


def cmd_dump(args: argparse.Namespace) -> int:
    parts = leasespec.split_escaped(args.target)
    path = parts[0]
    start = leasespec.parse_size(parts[1], "offset") if len(parts) > 1 and parts[1] else 0
    size = leasespec.parse_size(parts[2], "size") if len(parts) > 2 and parts[2] else 0
    if start % ondisk.MiB:
        print("WARNING: dump offset should be a multiple of 1048576 bytes.")
    with Storage(path, writable=False) as st:
        for line in dump_lines(st, start, size, args.force_mode):
            print(line)
    return 0


# ---- read_leader ----------------------------------------------------------------------------


def leader_lines(lr: Leader, is_lockspace: bool) -> list[str]:
    """sanlock ``print_leader``."""
    w = (
        ("extra1", "extra2", "extra3")
        if is_lockspace
        else ("write_id", "write_generation", "write_timestamp")
    )
    return [
        f"magic 0x{lr.magic:x}",
        f"version 0x{lr.version:x}",
        f"flags 0x{lr.flags:x}",
        f"sector_size {lr.sector_size}",
        f"num_hosts {lr.num_hosts}",
        f"max_hosts {lr.max_hosts}",
        f"owner_id {lr.owner_id}",
        f"owner_generation {lr.owner_generation}",
        f"lver {lr.lver}",
        f"space_name {lr.space_name}",
        f"resource_name {lr.resource_name}",
        f"timestamp {lr.timestamp}",
        f"checksum 0x{lr.checksum:x}",
        f"io_timeout {lr.io_timeout}",
        f"{w[0]} {lr.write_id}",
        f"{w[1]} {lr.write_generation}",
        f"{w[2]} {lr.write_timestamp}",
    ]


def cmd_read_leader(args: argparse.Namespace) -> int:
    n = _io_timeout(args)
    if args.resource:
        r = leasespec.parse_resource(args.resource).resource
        with Storage(r.path, writable=False) as st:
            lr = paxos.read_leader(st, r, n)
        lines = leader_lines(lr, False)
    else:
        if not args.lockspace:
            raise errors.InvalidArgument(what="read_leader", detail="give -s or -r")
        ls = leasespec.parse_lockspace(args.lockspace)
        with Storage(ls.path, writable=False) as st:
            sizes, _ = delta.read_sizes(st, ls.location, n)
            lr = delta.read_host(st, ls.location, sizes, ls.host_id or 1, n)
        lines = leader_lines(lr, True)
    print("read_leader done 0")
    print("\n".join(lines))
    return 0


# ---- host_id leases -------------------------------------------------------------------------


def _delta_lease(
    args: argparse.Namespace, st: Storage, ls: leasespec.LockspaceArg
) -> delta.DeltaLease:
    n = _io_timeout(args)
    sizes, _ = delta.read_sizes(st, ls.location, n)
    delta.check_host_id(ls.location, sizes, ls.host_id)
    return delta.DeltaLease(
        st,
        ls.location,
        sizes,
        ls.host_id,
        args.host_name,
        n,
        fire_timeout=args.watchdog_fire_timeout,
    )


def _our_record(lease: delta.DeltaLease) -> Leader:
    """For renew/release from a fresh process: the record on disk must be ours (same name)."""
    current = delta.read_host(lease.st, lease.loc, lease.sizes, lease.host_id, lease.io_timeout)
    if current.owner_id != lease.host_id or current.resource_name != lease.host_name:
        raise errors.RenewOwner(
            **lease.loc.describe(), host_id=lease.host_id, detail=delta.host_label(current)
        )
    return current


def cmd_acquire_id(args: argparse.Namespace) -> int:
    ls = leasespec.parse_lockspace(args.lockspace)
    with Storage(ls.path) as st:
        rec = _delta_lease(args, st, ls).acquire()
    print(f"acquire_id done 0 (host_id {ls.host_id} generation {rec.owner_generation})")
    return 0


def _on_our_delta_lease(args: argparse.Namespace, action: str) -> int:
    """``renew_id`` / ``release_id``: ``action`` on our own delta lease record."""
    ls = leasespec.parse_lockspace(args.lockspace)
    with Storage(ls.path) as st:
        lease = _delta_lease(args, st, ls)
        lease.record = _our_record(lease)
        getattr(lease, action)()
    print(f"{action}_id done 0")
    return 0


def cmd_renew_id(args: argparse.Namespace) -> int:
    return _on_our_delta_lease(args, "renew")


def cmd_release_id(args: argparse.Namespace) -> int:
    return _on_our_delta_lease(args, "release")


# ---- resource leases ------------------------------------------------------------------------


def _acquirer(args: argparse.Namespace, st: Storage, r: paxos.Resource) -> paxos.Acquirer:
    if not args.host_id or args.generation is None:
        raise errors.InvalidArgument(
            what="acquire/release", detail="give the acting host with -i HOST_ID -g GENERATION"
        )
    n = _io_timeout(args)
    view = None
    if args.lockspace:
        ls = leasespec.parse_lockspace(args.lockspace)
        if ls.name != r.lockspace:
            raise errors.InvalidArgument(
                what=f"-s {args.lockspace}", detail=f"the resource is in lockspace {r.lockspace}"
            )
        ls_st = Storage(ls.path, writable=False)
        sizes, _ = delta.read_sizes(ls_st, ls.location, n)
        view = paxos.OwnerView(ls_st, ls.location, sizes, n)

    def report(owner: int, waited: float) -> None:
        if int(waited) % 10 == 0:
            print(
                f"waiting for silent host {owner} to be declared dead ({waited:.0f}s)",
                file=sys.stderr,
            )

    return paxos.Acquirer(st, r, args.host_id, args.generation, n, view, on_wait=report)


def cmd_acquire(args: argparse.Namespace) -> int:
    spec = leasespec.parse_resource(args.resource)
    with Storage(spec.resource.path) as st:
        acq = _acquirer(args, st, spec.resource)
        token = acq.acquire(shared=spec.shared or args.shared, acquire_lver=spec.lver)
    print(f"acquire done 0 (lver {token.lver})")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    spec = leasespec.parse_resource(args.resource)
    r = spec.resource
    with Storage(r.path) as st:
        acq = _acquirer(args, st, r)
        leader = paxos.read_leader(st, r, acq.io_timeout, args.host_id)
        sizes = leader.sizes
        off = r.offset + ondisk.dblock_sector_index(args.host_id) * sizes.sector_size
        buf = st.read(off, sizes.sector_size, acq.io_timeout)
        shared = ondisk.ModeBlock.unpack(buf, ondisk.MBLOCK_OFFSET).shared
        token = paxos.Token(
            r, sizes, args.host_id, args.generation, shared, leader, ondisk.Dblock.unpack(buf)
        )
        acq.release(token)
    print("release done 0")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    direct = sub.add_parser("direct", help="lease operations directly on storage (no agent)")
    dsub = direct.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, need_ls: bool = False, need_res: bool = False) -> None:
        p.add_argument("-s", dest="lockspace", required=need_ls, metavar="LS:HOST_ID:PATH:OFFSET")
        p.add_argument("-r", dest="resource", required=need_res, metavar="LS:RES:PATH:OFFSET")
        p.add_argument(
            "-o",
            dest="io_timeout",
            type=int,
            metavar="SECONDS",
            help=f"io_timeout N (default {timeouts.DEFAULT_IO_TIMEOUT})",
        )

    p = dsub.add_parser("init", help="format a lockspace (-s) or a resource lease (-r)")
    common(p)
    p.add_argument("-Z", dest="sector_size", type=int, choices=ondisk.SECTOR_SIZES)
    p.add_argument("-A", dest="align_size", metavar="1M|2M|4M|8M")
    p.add_argument("-n", dest="num_hosts", type=int, default=0, help="hosts a ballot reads")
    p.add_argument("-z", dest="clear", type=int, default=0, help="1: write a cleared lease")
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite even if the area holds live leases or other data",
    )
    p.set_defaults(func=cmd_init)

    p = dsub.add_parser("dump", help="list the leases in PATH[:OFFSET[:SIZE]]")
    p.add_argument("target", metavar="PATH[:OFFSET[:SIZE]]")
    p.add_argument(
        "-f",
        dest="force_mode",
        type=int,
        default=0,
        help="1: requests and bitmaps, 2: also paxos blocks",
    )
    p.set_defaults(func=cmd_dump)

    p = dsub.add_parser("read_leader", help="print a lease's leader record")
    common(p)
    p.set_defaults(func=cmd_read_leader)

    for name, func, text in (
        ("acquire_id", cmd_acquire_id, "take a host_id in a lockspace"),
        ("renew_id", cmd_renew_id, "renew our host_id"),
        ("release_id", cmd_release_id, "free our host_id"),
    ):
        p = dsub.add_parser(name, help=text)
        common(p, need_ls=True)
        p.add_argument(
            "-e",
            dest="host_name",
            default=socket.gethostname()[:48],
            help="this host's stable name (default: the hostname)",
        )
        p.add_argument(
            "-w",
            dest="watchdog_fire_timeout",
            type=int,
            default=timeouts.SANLOCK_WATCHDOG_FIRE_TIMEOUT,
            help="this node's watchdog fire timeout W, recorded in the lease",
        )
        p.set_defaults(func=func)

    for name, func, text in (
        ("acquire", cmd_acquire, "acquire a resource lease as host -i/-g"),
        ("release", cmd_release, "release a resource lease held by host -i/-g"),
    ):
        p = dsub.add_parser(name, help=text)
        common(p, need_res=True)
        p.add_argument("-i", dest="host_id", type=int, required=True)
        p.add_argument("-g", dest="generation", type=int, required=True)
        p.add_argument("--shared", action="store_true", help="shared (SH) lease")
        p.set_defaults(func=func)
