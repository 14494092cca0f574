"""sanlock's checksum: reflected CRC-32C from seed 0xFFFFFFFE, no final inversion.

Known values come from bytes written by the real sanlock 3.8.5 (reference section 1.8/1.9)."""

from __future__ import annotations

import random

import pytest
from vmlease_agent.engine import ondisk
from vmlease_agent.engine.ondisk import crc


def bitwise_crc32c(data: bytes, crc_value: int) -> int:
    """An independent, table-free CRC-32C (reflected Castagnoli), no pre/post inversion."""
    for b in data:
        crc_value ^= b
        for _ in range(8):
            crc_value = (crc_value >> 1) ^ (0x82F63B78 if crc_value & 1 else 0)
    return crc_value


def test_crc_is_castagnoli_standard_check_value():
    # The textbook CRC-32C is ~raw(~0, data); its check value for "123456789" is 0xE3069283.
    assert crc(b"123456789", 0xFFFFFFFF) ^ 0xFFFFFFFF == 0xE3069283


def test_default_seed_is_not_inverted_one():
    assert crc(b"") == 0xFFFFFFFE
    # sanlock_crc(d) == ~std_crc32c_extend(prev=1, d) where std_extend(p, d) = ~raw(~p, d)
    data = b"sanlock"
    std_extend_1 = ~bitwise_crc32c(data, ~1 & 0xFFFFFFFF) & 0xFFFFFFFF
    assert crc(data) == ~std_extend_1 & 0xFFFFFFFF


def test_crc_matches_a_bitwise_implementation_on_random_data():
    rng = random.Random(7)
    for n in (0, 1, 7, 48, 168, 511):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert crc(data) == bitwise_crc32c(data, 0xFFFFFFFE)


def test_crc_accepts_memoryview():
    data = bytes(range(200))
    assert crc(memoryview(data)[:168]) == crc(data[:168])


def _leader(**kw) -> ondisk.Leader:
    base = dict(
        magic=ondisk.DELTA_DISK_MAGIC,
        version=ondisk.DELTA_DISK_VERSION,
        flags=0x10,
        sector_size=512,
        num_hosts=0,
        max_hosts=1,
        owner_id=0,
        owner_generation=0,
        lver=0,
        space_name="LS",
        resource_name="",
        timestamp=0,
    )
    base.update(kw)
    return ondisk.Leader(**base)


PAXOS = dict(
    magic=ondisk.PAXOS_DISK_MAGIC, version=ondisk.PAXOS_DISK_VERSION, num_hosts=2000, max_hosts=2000
)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # 1.9(a) fresh lockspace sector 0
        (dict(io_timeout=10), 0xB0F174C0),
        # 1.9(b) delta lease of host 3 held by the daemon
        (
            dict(
                owner_id=3,
                owner_generation=1,
                space_name="SLRDOC",
                resource_name="1f00a424-d168-483c-95ca-0021bf61ad98.vm",
                timestamp=2512,
                io_timeout=1,
            ),
            0x789AB0F0,
        ),
        # 1.9(c) fresh resource leader
        (dict(PAXOS, resource_name="RES1"), 0xE0217F4C),
        # 1.9(d) held by host 3 gen 1, lver 1
        (
            dict(
                PAXOS,
                owner_id=3,
                owner_generation=1,
                lver=1,
                space_name="SLRDOC",
                resource_name="RES_EX",
                timestamp=2513,
                write_id=3,
                write_generation=1,
                write_timestamp=2513,
            ),
            0x9E42C503,
        ),
        # 1.9(d) after release: timestamp 0, the rest kept
        (
            dict(
                PAXOS,
                owner_id=3,
                owner_generation=1,
                lver=1,
                space_name="SLRDOC",
                resource_name="RES_EX",
                timestamp=0,
                write_id=3,
                write_generation=1,
                write_timestamp=2513,
            ),
            0xC60C895C,
        ),
    ],
)
def test_leader_checksums_match_sanlock(fields, expected):
    packed = _leader(**fields).pack()
    assert int.from_bytes(packed[0xA8:0xAC], "little") == expected
    assert crc(packed[: ondisk.LEADER_CHECKSUM_LEN]) == expected
    assert _leader(**fields).sealed().checksum == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((3, 3, 3, 1, 2513, 1), 0x615B3469),  # 1.9(d) host 3's dblock
        ((4003, 4003, 3, 2, 2617, 3), 0xDC58716F),  # 1.9(f)
        ((2005, 2005, 5, 1, 2540, 2), 0xBD7C480B),  # 1.9(f)
    ],
)
def test_dblock_checksums_match_sanlock(values, expected):
    for flags in (0, ondisk.DBLOCK_FL_RELEASED):  # flags is outside the checksum
        packed = ondisk.Dblock(*values, flags=flags).pack()
        assert int.from_bytes(packed[48:52], "little") == expected
        assert int.from_bytes(packed[52:56], "little") == flags


def test_checksum_covers_exactly_the_first_168_leader_bytes():
    base = _leader(io_timeout=10).pack()
    for pos in (0, 0x38, 0x97, 0x98, 0xA7):  # inside the range: the checksum changes
        tampered = bytearray(base)
        tampered[pos] ^= 0x01
        assert crc(bytes(tampered[:168])) != crc(base[:168])
    ok, stored, computed = ondisk.leader_checksum_ok(base)
    assert ok and stored == computed == 0xB0F174C0
    for pos in (0xAE, 0xB0, 0xC7):  # io_timeout and write_* are outside it
        tampered = bytearray(base)
        tampered[pos] ^= 0x01
        assert ondisk.leader_checksum_ok(bytes(tampered))[0]
