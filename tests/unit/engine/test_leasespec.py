"""sanlock's lease argument syntax: LS:HOSTID:PATH:OFFSET and LS:RES:PATH:OFFSET[:LVER|:SH]."""

from __future__ import annotations

import pytest
from vmlease_agent.engine import errors, leasespec
from vmlease_agent.engine.paxos import Resource


def test_parse_lockspace():
    ls = leasespec.parse_lockspace("LS:3:/var/tmp/ls:1M")
    assert (ls.name, ls.host_id, ls.path, ls.offset) == ("LS", 3, "/var/tmp/ls", 1048576)
    assert ls.location.name == "LS" and ls.location.offset == 1048576


def test_path_with_escaped_colon():
    ls = leasespec.parse_lockspace(r"LS:0:/var/tmp/a\:b:0")
    assert ls.path == "/var/tmp/a:b"
    r = leasespec.parse_resource(r"LS:R:/x\\y\:z:2097152")
    assert r.resource.path == "/x\\y:z"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("LS:1:/p", "expected LOCKSPACE:HOST_ID:PATH:OFFSET"),
        ("LS:1:/p:0:9", "expected LOCKSPACE:HOST_ID:PATH:OFFSET"),
        ("LS:x:/p:0", "must be a number"),
        ("LS:-1:/p:0", "must not be negative"),
        ("LS:1::0", "the path is empty"),
        ("LS:1:/p:12k", "must be a number of bytes"),
        ("LS:1:/p:-512", "must not be negative"),
        (":1:/p:0", "must be 1..48 bytes"),
    ],
)
def test_bad_lockspace_arguments_are_refused_clearly(text, match):
    with pytest.raises(errors.InvalidArgument, match=match):
        leasespec.parse_lockspace(text)


def test_names_over_48_bytes_are_refused():
    with pytest.raises(errors.NameTooLong, match="49 bytes"):
        leasespec.parse_lockspace("L" * 49 + ":1:/p:0")
    with pytest.raises(errors.NameTooLong, match="49 bytes"):
        leasespec.parse_resource("LS:" + "R" * 49 + ":/p:0")
    assert leasespec.parse_resource("LS:" + "R" * 48 + ":/p:0").resource.name == "R" * 48


def test_parse_resource_variants():
    r = leasespec.parse_resource("LS:RES:/p:0")
    assert r.resource == Resource("LS", "RES", "/p", 0) and r.lver is None and not r.shared
    assert leasespec.parse_resource("LS:RES:/p:0:7").lver == 7
    assert leasespec.parse_resource("LS:RES:/p:0:SH").shared
    with pytest.raises(errors.InvalidArgument, match="LOCKSPACE:RESOURCE:PATH:OFFSET"):
        leasespec.parse_resource("LS:RES:/p")
    with pytest.raises(errors.InvalidArgument, match="the path is empty"):
        leasespec.parse_resource("LS:RES::0")


@pytest.mark.parametrize("path", ["/plain", "/a:b", "/a\\b", "/a\\:b:"])
def test_format_resource_is_the_inverse_of_parse(path):
    res = Resource("LS", "RES", path, 3 * 1048576)
    for lver, shared in ((None, False), (4, False), (None, True)):
        text = leasespec.format_resource(res, lver, shared)
        back = leasespec.parse_resource(text)
        assert (back.resource, back.lver, back.shared) == (res, lver, shared)


def test_split_escaped():
    assert leasespec.split_escaped("a:b:c") == ["a", "b", "c"]
    assert leasespec.split_escaped(r"a\:b:c") == ["a:b", "c"]
    assert leasespec.split_escaped("a::") == ["a", "", ""]
    assert leasespec.split_escaped("trailing\\") == ["trailing\\"]


def test_parse_size():
    assert leasespec.parse_size("0", "offset") == 0
    assert leasespec.parse_size("8M", "offset") == 8 * 1048576
    assert leasespec.parse_size("8m", "offset") == 8 * 1048576
    with pytest.raises(errors.InvalidArgument, match="offset 'abc'"):
        leasespec.parse_size("abc", "offset")
