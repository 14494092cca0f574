"""One mapping of API-server errors for the agent and the operator: what each answer means to
the caller (re-read, back off, give up until fixed), whichever program made the call."""

from __future__ import annotations

import json

import pytest
from vmlease_api import errors


def status(reason: str, message: str = "m") -> str:
    return json.dumps({"kind": "Status", "reason": reason, "message": message})


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (404, errors.NotFound),
        (409, errors.Conflict),
        (410, errors.Expired),
        (401, errors.Refused),
        (403, errors.Refused),
        (422, errors.Refused),
        (400, errors.Refused),
        (429, errors.Unavailable),
        (500, errors.Unavailable),
        (503, errors.Unavailable),
        (0, errors.Unavailable),
        (None, errors.Unavailable),
    ],
)
def test_each_status_maps_to_what_the_caller_should_do(code, expected):
    error = errors.from_response(code, status("Whatever", "the detail"))
    assert type(error) is expected
    assert error.status == (code or 0)
    assert "the detail" in str(error)


def test_already_exists_is_a_conflict_that_says_so():
    taken = errors.from_response(409, status("AlreadyExists"))
    stale = errors.from_response(409, status("Conflict"))
    assert isinstance(taken, errors.AlreadyExists) and taken.already_exists
    assert isinstance(taken, errors.Conflict)  # `except Conflict` callers still see it
    assert not isinstance(stale, errors.AlreadyExists) and not stale.already_exists


@pytest.mark.parametrize("body", [status("AlreadyExists").encode(), bytearray(b"{}"), None, 3])
def test_bodies_as_bytes_or_not_json_are_read_or_ignored(body):
    error = errors.from_response(409, body, reason="Conflict")
    assert isinstance(error, errors.Conflict)
    assert str(error) == ("m" if isinstance(body, bytes) else "Conflict")


def test_a_body_that_is_not_a_status_falls_back_to_the_reason_phrase():
    error = errors.from_response(404, "<html>not json</html>", reason="Not Found")
    assert isinstance(error, errors.NotFound) and str(error) == "Not Found"
    assert errors.status_body("[1, 2]") == {}


def test_forbidden_hint_names_what_to_fix_only_for_401_and_403():
    hint = "check the agent's ServiceAccount"
    assert str(errors.from_response(403, status("Forbidden", "no"), forbidden_hint=hint)) == (
        "the API server refused the call (403: no); check the agent's ServiceAccount"
    )
    assert hint not in str(errors.from_response(422, status("Invalid"), forbidden_hint=hint))


def test_a_transport_failure_is_unavailable():
    error = errors.unreachable(ConnectionRefusedError("refused"))
    assert isinstance(error, errors.Unavailable) and error.status == 0
    assert str(error) == "ConnectionRefusedError: refused"


@pytest.mark.parametrize(
    ("code", "reason"), [(404, "NotFound"), (409, "AlreadyExists"), (409, "Conflict"), (503, "")]
)
def test_both_programs_translate_the_clients_exception_alike(code, reason):
    from kubernetes.client.exceptions import ApiException
    from vmlease_agent.kube import api as agent_api
    from vmlease_operator import kube as operator_kube

    error = ApiException(status=code, reason="phrase")
    error.body = status(reason, "the detail")
    agent, operator = agent_api.translate(error), operator_kube.translate(error)
    assert type(agent) is type(operator) is type(errors.from_response(code, error.body))
    assert str(agent) == str(operator)
