"""Records byte for byte as sanlock 3.8.5 writes them (reference 1.3-1.9), sizes, names, the
fire-timeout tag. The expected bytes are transcribed from dumps of real sanlock-written files."""

from __future__ import annotations

import random
import struct
from dataclasses import fields

import pytest
from vmlease_agent.engine import errors, ondisk
from vmlease_agent.engine.ondisk import Dblock, Leader, ModeBlock, RequestRecord, Sizes

MiB = ondisk.MiB


def from_dump(text: str, size: int = 512, base: int = 0) -> bytes:
    """xxd-style lines ``OFFSET: hhhh hhhh ...  comment`` -> bytes (unlisted bytes are zero)."""
    buf = bytearray(size)
    for line in text.strip().splitlines():
        off_text, _, rest = line.partition(":")
        off = int(off_text, 16) - base
        groups = rest.split()[:8]
        data = bytes.fromhex("".join(groups))
        buf[off : off + len(data)] = data
    return bytes(buf)


# 1.9(a): `sanlock direct init -s LS:0:$DIR/LS:0`, sector 0
LS_SECTOR0 = from_dump(
    """
00000000: 1020 2112 0400 0300 1000 0000 0002 0000
00000010: 0000 0000 0000 0000 0100 0000 0000 0000
00000030: 0000 0000 0000 0000 4c53 0000 0000 0000
000000a0: 0000 0000 0000 0000 c074 f1b0 0000 0a00
"""
)

# 1.9(b): delta lease of host 3, held (sector at 0x400)
LS_HOST3 = from_dump(
    """
00000400: 1020 2112 0400 0300 1000 0000 0002 0000
00000410: 0000 0000 0000 0000 0100 0000 0000 0000
00000420: 0300 0000 0000 0000 0100 0000 0000 0000
00000430: 0000 0000 0000 0000 534c 5244 4f43 0000
00000460: 0000 0000 0000 0000 3166 3030 6134 3234
00000470: 2d64 3136 382d 3438 3363 2d39 3563 612d
00000480: 3030 3231 6266 3631 6164 3938 2e76 6d00
00000490: 0000 0000 0000 0000 d009 0000 0000 0000
000004a0: 0000 0000 0000 0000 f0b0 9a78 0000 0100
""",
    base=0x400,
)

# 1.9(c): `sanlock direct init -r LS:RES1:$DIR/RES:0`, sectors 0 and 1
RES_HEAD = from_dump(
    """
00000000: 1020 1506 0400 0600 1000 0000 0002 0000
00000010: d007 0000 0000 0000 d007 0000 0000 0000
00000030: 0000 0000 0000 0000 4c53 0000 0000 0000
00000060: 0000 0000 0000 0000 5245 5331 0000 0000
000000a0: 0000 0000 0000 0000 4c7f 21e0 0000 0000
00000200: 1120 2908 0100 0100 0000 0000 0000 0000
""",
    size=1024,
)

# 1.9(d): held by host 3 gen 1; leader and host 3's dblock sector (0x800)
RES_HELD_LEADER = from_dump(
    """
00000000: 1020 1506 0400 0600 1000 0000 0002 0000
00000010: d007 0000 0000 0000 d007 0000 0000 0000
00000020: 0300 0000 0000 0000 0100 0000 0000 0000
00000030: 0100 0000 0000 0000 534c 5244 4f43 0000
00000060: 0000 0000 0000 0000 5245 535f 4558 0000
00000090: 0000 0000 0000 0000 d109 0000 0000 0000
000000a0: 0000 0000 0000 0000 03c5 429e 0000 0000
000000b0: 0300 0000 0000 0000 0100 0000 0000 0000
000000c0: d109 0000 0000 0000
"""
)
RES_HOST3_DBLOCK = from_dump(
    """
00000800: 0300 0000 0000 0000 0300 0000 0000 0000
00000810: 0300 0000 0000 0000 0100 0000 0000 0000
00000820: d109 0000 0000 0000 0100 0000 0000 0000
00000830: 6934 5b61 0000 0000
""",
    base=0x800,
)
# 1.9(e): shared lease held by host 3 (dblock RELEASED + SHARED mode block)
RES_HOST3_SHARED = from_dump(
    """
00100800: 0300 0000 0000 0000 0300 0000 0000 0000
00100810: 0300 0000 0000 0000 0100 0000 0000 0000
00100820: d109 0000 0000 0000 0100 0000 0000 0000
00100830: 6934 5b61 0100 0000
00100880: 0100 0000 0000 0000 0100 0000 0000 0000
""",
    base=0x100800,
)


def test_fresh_lockspace_sector_is_byte_identical_to_sanlock():
    from vmlease_agent.engine import delta

    rec = delta.new_lockspace_record("LS", Sizes(512, MiB), 10)
    assert ondisk.sector(512, (0, rec.pack())) == LS_SECTOR0


def test_held_delta_lease_is_byte_identical_to_sanlock():
    rec = Leader(
        magic=ondisk.DELTA_DISK_MAGIC,
        version=ondisk.DELTA_DISK_VERSION,
        flags=ondisk.LFL_ALIGN_1M,
        sector_size=512,
        num_hosts=0,
        max_hosts=1,
        owner_id=3,
        owner_generation=1,
        lver=0,
        space_name="SLRDOC",
        resource_name="1f00a424-d168-483c-95ca-0021bf61ad98.vm",
        timestamp=2512,
        io_timeout=1,
    )
    assert ondisk.sector(512, (0, rec.pack())) == LS_HOST3
    assert Leader.unpack(LS_HOST3) == rec.sealed()


def test_fresh_resource_head_is_byte_identical_to_sanlock():
    from vmlease_agent.engine import paxos

    res = paxos.Resource("LS", "RES1", "/nowhere", 0)
    image = paxos.resource_image(res, Sizes(512, MiB))
    assert len(image) == MiB
    assert image[:1024] == RES_HEAD
    assert not any(image[1024:])


def test_held_resource_leader_and_dblock_are_byte_identical_to_sanlock():
    leader = Leader(
        magic=ondisk.PAXOS_DISK_MAGIC,
        version=ondisk.PAXOS_DISK_VERSION,
        flags=ondisk.LFL_ALIGN_1M,
        sector_size=512,
        num_hosts=2000,
        max_hosts=2000,
        owner_id=3,
        owner_generation=1,
        lver=1,
        space_name="SLRDOC",
        resource_name="RES_EX",
        timestamp=2513,
        write_id=3,
        write_generation=1,
        write_timestamp=2513,
    )
    assert ondisk.sector(512, (0, leader.pack())) == RES_HELD_LEADER
    dblock = Dblock(mbal=3, bal=3, inp=3, inp2=1, inp3=2513, lver=1)
    assert ondisk.sector(512, (0, dblock.pack())) == RES_HOST3_DBLOCK
    assert Dblock.unpack(RES_HOST3_DBLOCK).checksum_ok()


def test_shared_holder_sector_is_byte_identical_to_sanlock():
    dblock = Dblock(mbal=3, bal=3, inp=3, inp2=1, inp3=2513, lver=1, flags=1)
    mb = ModeBlock(ondisk.MBLOCK_SHARED, 1)
    got = ondisk.sector(512, (0, dblock.pack()), (ondisk.MBLOCK_OFFSET, mb.pack()))
    assert got == RES_HOST3_SHARED
    assert ModeBlock.unpack(got, 128) == mb and mb.shared


# ---- struct layouts -------------------------------------------------------------------------


def test_leader_field_offsets_match_sanlock_struct():
    lr = Leader(
        magic=0x11111111,
        version=0x22222222,
        flags=0x33333333,
        sector_size=0x44444444,
        num_hosts=0x5555555555555555,
        max_hosts=0x6666666666666666,
        owner_id=0x7777777777777777,
        owner_generation=0x0808080808080808,
        lver=0x0909090909090909,
        space_name="S" * 48,
        resource_name="R" * 48,
        timestamp=0x0A0A0A0A0A0A0A0A,
        unused1=0x0B0B0B0B0B0B0B0B,
        unused2=0x0C0C,
        io_timeout=0x0D0D,
        write_id=0x0E0E0E0E0E0E0E0E,
        write_generation=0x0F0F0F0F0F0F0F0F,
        write_timestamp=0x1010101010101010,
    )
    b = lr.pack()
    assert len(b) == ondisk.LEADER_SIZE == 200
    u32 = lambda off: struct.unpack_from("<I", b, off)[0]  # noqa: E731
    u64 = lambda off: struct.unpack_from("<Q", b, off)[0]  # noqa: E731
    assert (u32(0x00), u32(0x04), u32(0x08), u32(0x0C)) == (
        0x11111111,
        0x22222222,
        0x33333333,
        0x44444444,
    )
    assert u64(0x10) == lr.num_hosts and u64(0x18) == lr.max_hosts
    assert u64(0x20) == lr.owner_id and u64(0x28) == lr.owner_generation
    assert u64(0x30) == lr.lver
    assert b[0x38:0x68] == b"S" * 48 and b[0x68:0x98] == b"R" * 48  # no NUL needed
    assert u64(0x98) == lr.timestamp and u64(0xA0) == lr.unused1
    assert u32(0xA8) == ondisk.crc(b[:168])
    assert struct.unpack_from("<HH", b, 0xAC) == (0x0C0C, 0x0D0D)
    assert (u64(0xB0), u64(0xB8), u64(0xC0)) == (
        lr.write_id,
        lr.write_generation,
        lr.write_timestamp,
    )


def test_leader_round_trips_with_random_fields():
    rng = random.Random(1)
    for _ in range(50):
        values = {}
        for f in fields(Leader):
            if f.name in ("space_name", "resource_name"):
                n = rng.randrange(0, 49)
                values[f.name] = "".join(rng.choice("abcXYZ09-._") for _ in range(n))
            elif f.name in ("magic", "version", "flags", "sector_size", "checksum"):
                values[f.name] = rng.randrange(1 << 32)
            elif f.name in ("unused2", "io_timeout"):
                values[f.name] = rng.randrange(1 << 16)
            else:
                values[f.name] = rng.randrange(1 << 64)
        lr = Leader(**values)
        back = Leader.unpack(lr.pack())
        assert back == lr.sealed()
        assert back.pack() == lr.pack()
        assert ondisk.leader_checksum_ok(lr.pack())[0]


def test_dblock_layout_and_round_trip():
    d = Dblock(mbal=1, bal=2, inp=3, inp2=4, inp3=5, lver=6, flags=1)
    b = d.pack()
    assert len(b) == ondisk.DBLOCK_SIZE == 56
    assert struct.unpack_from("<QQQQQQ", b) == (1, 2, 3, 4, 5, 6)
    assert struct.unpack_from("<I", b, 52)[0] == 1
    back = Dblock.unpack(b)
    assert back.checksum_ok() and back.flags == 1 and back.mbal == 1


def test_dblock_never_written_is_valid_and_corrupt_one_is_not():
    assert Dblock.unpack(bytes(56)).checksum_ok()
    b = bytearray(Dblock(mbal=3, bal=3, inp=3, inp2=1, inp3=9, lver=1).pack())
    b[0x10] ^= 0xFF
    assert not Dblock.unpack(bytes(b)).checksum_ok()
    # sanlock's rule: "never written" = checksum, mbal, bal, inp and lver all 0 (inp2/inp3
    # are not looked at), so such a block is valid whatever inp2/inp3 hold
    only_inp3 = struct.pack("<QQQQQQII", 0, 0, 0, 0, 7, 0, 0, 0)
    assert Dblock.unpack(only_inp3).checksum_ok()
    only_lver = struct.pack("<QQQQQQII", 0, 0, 0, 0, 0, 1, 0, 0)
    assert not Dblock.unpack(only_lver).checksum_ok()


def test_mode_block_and_request_record_layouts():
    assert ModeBlock(1, 0x0102030405060708).pack() == bytes.fromhex(
        "01000000000000000807060504030201"
    )
    assert not ModeBlock.unpack(bytes(16)).shared
    rr = RequestRecord(lver=5, force_mode=ondisk.REQ_GRACEFUL)
    b = rr.pack()
    assert len(b) == 24
    assert struct.unpack("<IIQI4x", b) == (0x08292011, 0x00010001, 5, 2)
    assert RequestRecord.unpack(b"\0" * 8 + b, 8) == rr


def test_constants_match_sanlock():
    assert ondisk.DELTA_DISK_MAGIC == 0x12212010
    assert ondisk.PAXOS_DISK_MAGIC == 0x06152010
    assert ondisk.PAXOS_DISK_CLEAR == 0x11282016
    assert ondisk.REQ_DISK_MAGIC == 0x08292011
    assert ondisk.DELTA_DISK_VERSION == 0x00030004
    assert ondisk.PAXOS_DISK_VERSION == 0x00060004
    assert ondisk.LVB_SECTOR == 2002
    assert ondisk.MBLOCK_OFFSET == 128
    assert ondisk.HOSTID_BITMAP_OFFSET == 256
    assert ondisk.LEADER_CHECKSUM_LEN == 168 and ondisk.DBLOCK_CHECKSUM_LEN == 48


# ---- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sector", "align", "max_hosts", "flag"),
    [
        (512, 1, 2000, 0x10),
        (4096, 1, 250, 0x10),
        (4096, 2, 500, 0x20),
        (4096, 4, 1000, 0x40),
        (4096, 8, 2000, 0x80),
    ],
)
def test_size_classes_match_sanlock(sector, align, max_hosts, flag):
    s = Sizes(sector, align * MiB)
    assert (s.max_hosts, s.align_flag) == (max_hosts, flag)
    assert s.max_hosts * sector <= s.align_size
    assert Sizes.from_leader(sector, flag | ondisk.LFL_SHORT_HOLD) == s


@pytest.mark.parametrize(
    ("sector", "align"), [(512, 2 * MiB), (512, 4 * MiB), (512, 8 * MiB), (1024, MiB), (4096, 3)]
)
def test_invalid_size_combinations_are_refused(sector, align):
    with pytest.raises(errors.BadSizes, match="invalid sector/align size combination"):
        Sizes(sector, align)


def test_default_align_without_flags_is_sanlocks_old_rule():
    assert Sizes.default_for(512) == Sizes(512, MiB)
    assert Sizes.default_for(4096) == Sizes(4096, 8 * MiB)
    assert Sizes.from_leader(512, 0) == Sizes(512, MiB)
    assert Sizes.from_leader(4096, 0) == Sizes(4096, 8 * MiB)


@pytest.mark.parametrize(
    ("text", "value"), [("1M", MiB), ("2m", 2 * MiB), (" 4M", 4 * MiB), ("8388608", 8 * MiB)]
)
def test_parse_align_accepts_sanlock_spellings(text, value):
    assert ondisk.parse_align(text) == value
    assert ondisk.align_name(value) == f"{value // MiB}M"


@pytest.mark.parametrize("text", ["3M", "512", "abc", "", "16M", "-1M"])
def test_parse_align_refuses_other_sizes(text):
    with pytest.raises(errors.InvalidArgument, match="use one of 1M, 2M, 4M, 8M"):
        ondisk.parse_align(text)


# ---- names ----------------------------------------------------------------------------------


def test_48_byte_name_fills_the_field_without_nul():
    name = "n" * 48
    assert ondisk.encode_name(name, "resource") == b"n" * 48
    assert ondisk.decode_name(b"n" * 48) == name


def test_name_of_49_bytes_is_refused_with_its_length():
    with pytest.raises(errors.NameTooLong, match=r"is 49 bytes.*at most 48 bytes"):
        ondisk.encode_name("x" * 49, "lockspace")
    # bytes, not characters: 25 two-byte characters are 50 bytes
    with pytest.raises(errors.NameTooLong, match="is 50 bytes"):
        ondisk.encode_name("é" * 25, "resource")


@pytest.mark.parametrize("name", ["", "a:b", "a\0b"])
def test_empty_or_separator_names_are_refused(name):
    with pytest.raises(errors.InvalidArgument):
        ondisk.encode_name(name, "resource")


def test_names_pad_with_nul_and_decode_stops_at_nul():
    assert ondisk.encode_name("LS", "lockspace") == b"LS" + bytes(46)
    assert ondisk.decode_name(b"LS\0garbage" + bytes(38)) == "LS"


# ---- sectors, bitmaps, layout ----------------------------------------------------------------


def test_sector_is_zero_filled_around_parts():
    s = ondisk.sector(512, (0, b"\x01\x02"), (128, b"\x03"))
    assert len(s) == 512
    assert s[:2] == b"\x01\x02" and s[128] == 3
    assert not any(s[2:128]) and not any(s[129:])


def test_bitmap_bit_positions_match_sanlock():
    bm = bytearray(256)
    ondisk.bitmap_set(bm, 5)  # reference 1.9(b): host 5 -> byte 0x10 at +0x100
    assert bm[0] == 0x10
    ondisk.bitmap_set(bm, 2000)
    assert bm[249] == 0x80
    assert ondisk.bitmap_test(bm, 5) and ondisk.bitmap_test(bm, 2000)
    assert not ondisk.bitmap_test(bm, 4) and not ondisk.bitmap_test(bm, 1999)
    assert sum(bin(b).count("1") for b in bm) == 2


def test_sector_indexes():
    assert ondisk.delta_sector_index(1) == 0
    assert ondisk.delta_sector_index(3) == 2  # 1.9(b): host 3 at 0x400
    assert ondisk.dblock_sector_index(1) == 2
    assert ondisk.dblock_sector_index(3) == 4  # 1.9(d): host 3's dblock at 0x800


@pytest.mark.parametrize(
    ("num_hosts", "sizes", "expected"),
    [
        (2000, Sizes(512, MiB), MiB),  # roundup_pow2(2002) = 2048 sectors
        (10, Sizes(512, MiB), 16 * 512),
        (1, Sizes(512, MiB), 4 * 512),
        (250, Sizes(4096, MiB), MiB),
        (2000, Sizes(4096, 8 * MiB), 8 * MiB),
    ],
)
def test_ballot_read_size_is_roundup_pow2_sectors(num_hosts, sizes, expected):
    assert ondisk.ballot_read_size(num_hosts, sizes) == expected


# ---- fire-timeout tag -----------------------------------------------------------------------


def _delta(name="node-a", owner=4, gen=7, unused1=0) -> Leader:
    return Leader(
        ondisk.DELTA_DISK_MAGIC, ondisk.DELTA_DISK_VERSION, 0x10, 512, 0, 1, owner, gen, 0,
        "LS", name, 100, unused1=unused1,
    )  # fmt: skip


def test_fire_timeout_tag_round_trips():
    field = ondisk.fire_timeout_field(20, "node-a", 4, 7)
    assert field >> 32 == 20
    assert ondisk.watchdog_fire_timeout_of(_delta(unused1=field), 60) == 20


@pytest.mark.parametrize("change", [{"name": "node-b"}, {"owner": 5}, {"gen": 8}])
def test_stale_fire_timeout_tag_falls_back_to_sanlocks_60_safety(change):
    """A record rewritten by another owner (sanlock bumps the generation, renames the host)
    keeps our old unused1; it must not make that owner look like it fires after 20 s."""
    field = ondisk.fire_timeout_field(20, "node-a", 4, 7)
    assert ondisk.watchdog_fire_timeout_of(_delta(unused1=field, **change), 60) == 60


def test_no_tag_means_sanlocks_default():
    assert ondisk.watchdog_fire_timeout_of(_delta(unused1=0), 60) == 60
    # a tag with W = 0 is not a valid declaration
    field = ondisk.fire_timeout_field(0, "node-a", 4, 7)
    assert ondisk.watchdog_fire_timeout_of(_delta(unused1=field), 60) == 60


def test_fire_timeout_tag_is_inside_the_checksum():
    lr = _delta(unused1=ondisk.fire_timeout_field(20, "node-a", 4, 7))
    b = bytearray(lr.pack())
    b[0xA4] ^= 1  # flip a bit of W
    assert not ondisk.leader_checksum_ok(bytes(b))[0]
