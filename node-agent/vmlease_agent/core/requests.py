"""Requests: another host (or process) asks the holder of a lease to give it up.

sanlock's protocol, which vmlease follows on disk so that either side may be a sanlock host
(``sanlock client request``, python-sanlock ``request``):

Timeline (N = io_timeout; R = the request written):
  R        the requester writes the lease's request record (sector 1: the lver it wants, which
           must be above the current one, and a force mode) and sets the owner's bit in the
           bitmap its own delta-lease renewals carry, for ``set_bitmap_seconds`` (6N);
  R + 2N   at the latest (one renewal interval), the owner's renewal reads the requester's
           record with its bit (``HostStatusTable.senders_to``) and examines every lease it holds
           in that lockspace: one read of each request record, bounded by N;
           a request is *pending* when its force mode is set and its lver is above the lver held;
           FORCE (1): the holder gets SIGKILL; GRACEFUL (2): its kill command (sanlock's
           killpath, e.g. a libvirt destroy) or else SIGTERM, so it may stop cleanly;
  then     the holder exits and the agent releases the lease on disk as for any holder's exit;
           the requester must still acquire it itself (its own ballot).
Nothing is ever taken by the request: it only asks the holder, so it cannot break exclusion.

vmlease does better than sanlock in one case: a request for a lease held on this very node is
examined at once (sanlock never notifies its own host, so such a request reaches nobody).
"""

from __future__ import annotations

from vmlease_agent.core import fencing
from vmlease_agent.engine import errors
from vmlease_agent.engine.ondisk import RequestRecord

#: force modes (sanlock ``SANLK_REQ_FORCE``, ``SANLK_REQ_GRACEFUL``); 0 with lver 0 clears
FORCE, GRACEFUL = 1, 2
MODES = {0: "clear", FORCE: "force", GRACEFUL: "graceful"}


def check_mode(force_mode: int) -> None:
    if force_mode not in MODES:
        raise errors.InvalidArgument(
            what=f"force mode {force_mode}",
            detail="must be 1 (force: SIGKILL the holder) or 2 (graceful: its kill command or "
            "SIGTERM), or 0 with no lver to clear a request",
        )


def pending(record: RequestRecord, held_lver: int) -> bool:
    """Does ``record`` ask the holder of version ``held_lver`` to give it up?"""
    return record.force_mode != 0 and record.lver > held_lver


def action(force_mode: int, has_kill_command: bool) -> fencing.Action:
    """What a pending request does to the holder (sanlock ``do_request``)."""
    if force_mode == FORCE:
        return fencing.Action(fencing.KILL, "another host requested the lease (force)", True)
    if has_kill_command:
        return fencing.Action(fencing.COMMAND, "another host requested the lease (graceful)")
    return fencing.Action(fencing.TERM, "another host requested the lease (graceful)", True)
