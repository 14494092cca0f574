"""What an API-server error means to a caller: one mapping for the agent and the operator.

Both programs talk to the API server through the official client and catch its ``ApiException``
at their thin client layer; they pass its ``status``, ``body`` and ``reason`` to
:func:`from_response` and raise what comes back. The classes say what the caller should do, not
which HTTP code arrived:

* ``Conflict`` (409): re-read and decide again; ``AlreadyExists`` (its subclass) when the
  name is taken, which for HostIds means the id is taken;
* ``NotFound`` (404): the object, or the whole kind (CRDs not installed), does not exist;
* ``Expired`` (410 Gone): a watch's resourceVersion is too old; list again;
* ``Unavailable`` (no answer, 429, 5xx): back off and retry;
* ``Refused`` (401, 403, 422 and other 4xx): retrying will not help until someone fixes
  something (RBAC, an invalid object).

No Kubernetes client here: this package is pydantic only (import-linter checks it).
"""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """An API-server call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(ApiError):
    """404: the object (or the kind: CRDs not installed) does not exist."""


class Conflict(ApiError):
    """409: a resourceVersion precondition failed, or the name is taken (``already_exists``)."""

    #: True for ``AlreadyExists``: the create lost to an object of the same name.
    already_exists = False


class AlreadyExists(Conflict):
    """409 AlreadyExists on create: the name (for a HostId: the id) is taken."""

    already_exists = True


class Expired(ApiError):
    """410 Gone: a watch's resourceVersion is too old; list again."""


class Unavailable(ApiError):
    """The API server cannot be reached or answered 5xx/429: back off and retry."""


class Refused(ApiError):
    """401/403/422 and other 4xx: retrying will not help until the cause is fixed."""


def status_body(body: object) -> dict[str, Any]:
    """The ``Status`` object the API server sends with an error, or {} if the body is not one."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return {}
    try:
        data = json.loads(body or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def from_response(
    status: int | None, body: object = None, reason: object = None, forbidden_hint: str = ""
) -> ApiError:
    """The error for an API-server answer: HTTP ``status``, the response ``body`` (a Status
    object as JSON text or bytes) and the HTTP ``reason`` phrase (used when the body says
    nothing). ``forbidden_hint`` is added to 401/403 messages: who to fix, and how."""
    code = status or 0
    data = status_body(body)
    detail = str(data.get("message") or "") or str(reason or "")
    if code == 404:
        return NotFound(detail, code)
    if code == 409:
        if data.get("reason") == "AlreadyExists":
            return AlreadyExists(detail, code)
        return Conflict(detail, code)
    if code == 410:
        return Expired(detail, code)
    if code in (401, 403) and forbidden_hint:
        return Refused(
            f"the API server refused the call ({code}: {detail}); {forbidden_hint}", code
        )
    if code == 429 or code >= 500 or code == 0:
        return Unavailable(f"{code}: {detail}", code)
    return Refused(f"{code}: {detail}", code)


def unreachable(error: BaseException) -> Unavailable:
    """A transport failure (connection refused, timeout, TLS): no answer came back."""
    return Unavailable(f"{type(error).__name__}: {error}")
