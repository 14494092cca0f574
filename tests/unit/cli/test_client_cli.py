"""``vmlease client`` arguments that are parsed before the agent is asked."""

import argparse

import pytest
from vmlease_agent.cli import client


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("LS:RES", ("LS:RES", False)),
        ("LS:RES:SH", ("LS:RES", True)),
        ("LS:RES:/l\\:x:0", ("LS:RES", False)),
        ("LS:RES:/l:0:SH", ("LS:RES", True)),
    ],
)
def test_convert_takes_sanlocks_resource_with_sh_for_shared(text, target):
    assert client._convert_target(text) == target


@pytest.mark.parametrize("text", ["LS", ":RES", "LS:"])
def test_convert_without_a_lease_name_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="LS:RES"):
        client._convert_target(text)
