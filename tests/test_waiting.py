"""The shared wait helper: returns what the check found, and fails naming what it waited for."""

import pytest
from waiting import wait_for


def test_wait_for_returns_the_first_truthy_value():
    answers = iter([0, None, "", "yes"])
    assert wait_for(lambda: next(answers), 5, "an answer", every=0) == "yes"


def test_wait_for_fails_naming_what_and_what_was_seen():
    with pytest.raises(AssertionError, match=r"waiting for the moon; last seen: dark"):
        wait_for(lambda: False, 0.05, "the moon", every=0.01, describe=lambda: "dark")
