"""Who formats a new lockspace: exactly one agent, and a formatted lockspace never again.

Formatting writes every delta-lease sector of the area; two agents doing it while a third has
already joined would wipe that host's lease. So the operator names one node in
``status.formatRequest`` and only that node's agent may format:

* the request goes to the lowest host_id among nodes whose agent has *claimed* its HostId (an
  agent claims before joining and waits for ``status.formatted``), so it names a node with a
  running agent;
* it stays with that node while the node exists, is selected and keeps that HostId — it is not
  moved because the agent is slow (a slow formatter and a second one would both write). To move
  it by hand, remove ``status.formatRequest``;
* once an agent sets ``status.formatted`` (the CRD forbids unsetting it), no request is made
  again. The agent also reads the area before writing and adopts an area that already holds
  this lockspace instead of formatting it, which covers a status lost with its object.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from vmlease_api.allocation import HostIdRecord
from vmlease_api.models import FormatRequest, LockspaceStatus


def format_request(
    status: LockspaceStatus, keepers: Iterable[HostIdRecord], now: datetime.datetime
) -> FormatRequest | None:
    """The request the lockspace should carry; ``keepers``: the HostIds of selected, existing
    nodes (one per node)."""
    if status.formatted:
        return None
    keepers = list(keepers)
    current = status.format_request
    if current is not None and any(
        r.node == current.node and r.host_id == current.host_id for r in keepers
    ):
        return current
    claimed = [r for r in keepers if r.claimed]
    if not claimed:
        return None
    chosen = min(claimed, key=lambda r: r.host_id)
    return FormatRequest(node=chosen.node, host_id=chosen.host_id, requested_at=now)
