"""What the sanlock API refuses by itself, before the agent is asked, with sanlock's codes (a
negative errno in the reply's ``data``); and :class:`Disconnected`, a client gone mid-request."""

from __future__ import annotations

import errno

from vmlease_agent.engine import errors


class SanlockApiError(errors.LeaseError):
    """A request refused by the sanlock API itself (before the agent is asked)."""


class InvalidRequest(SanlockApiError):
    code = -errno.EINVAL
    template = "sanlock {cmd}: {detail}"


class NotRegistered(SanlockApiError):
    code = -errno.ESRCH
    template = (
        "sanlock {cmd}: pid {pid} is not registered: the process must call sanlock_register "
        "(python: sanlock.register()) before leases can be taken for it"
    )


class ConnectionNotRegistered(SanlockApiError):
    code = -errno.EBUSY
    template = (
        "sanlock {cmd} for the caller itself needs a registered connection: call "
        "sanlock_register first, or name the target pid"
    )


class ClientBusy(SanlockApiError):
    code = -errno.EBUSY
    template = "sanlock {cmd}: pid {pid} has another command in progress; retry when it ends"


class TooManyResources(SanlockApiError):
    code = -errno.E2BIG
    template = "sanlock {cmd}: {count} resources, at most {limit} per call"


class BadDiskCount(SanlockApiError):
    code = -errno.ERANGE
    template = "sanlock {cmd}: resource {lease} has {count} disks, sanlock allows 1..{limit}"


class LvbSize(SanlockApiError):
    code = -errno.E2BIG
    template = "sanlock set_lvb: {size} bytes of lock value block; sanlock takes 0..{limit}"


class Unsupported(SanlockApiError):
    code = -errno.EOPNOTSUPP
    template = (
        "sanlock {cmd}: {detail} is not supported by vmlease-agent's sanlock API yet; use "
        "the sanlock daemon, or `vmlease client` for what it offers"
    )


class InProgress(SanlockApiError):
    code = -errno.EINPROGRESS
    template = "lockspace {lockspace} is being {doing}; retry when that ends"


class LockspaceExists(SanlockApiError):
    code = -errno.EEXIST
    template = "lockspace {lockspace} is already joined as host_id {host_id}"


class LockspaceUnknown(SanlockApiError):
    code = -errno.ENOENT
    template = "lockspace {lockspace} is not joined on this node"


class LockspaceInUse(SanlockApiError):
    code = -errno.EBUSY
    template = "lockspace {lockspace}: {detail}"


class LockspaceGoing(SanlockApiError):
    code = -errno.ENOSPC
    template = "lockspace {lockspace} is {going}: no new leases or users in it"


class NoLockspacePath(SanlockApiError):
    code = -errno.ENODEV
    template = "sanlock {cmd}: no path given for lockspace {lockspace!r}"


class TooManyListeners(SanlockApiError):
    code = -errno.ENOCSI
    template = "lockspace {lockspace}: already {limit} event listeners; end one (end_event) first"


class HostsNotReady(SanlockApiError):
    code = -errno.EAGAIN
    template = "lockspace {lockspace}: the other hosts were not read yet; retry in a moment"


class Disconnected(Exception):
    """The peer closed the connection (or it failed) in the middle of a request."""
