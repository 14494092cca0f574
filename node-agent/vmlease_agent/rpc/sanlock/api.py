"""The sanlock API's commands, composed: :class:`SanlockApi` is every command group's mixin over
:class:`~vmlease_agent.rpc.sanlock.base.ApiBase`. A request's command finds its method by name
(``cmd_<command>``, ``ApiBase.handle``), in whichever group defines it."""

from __future__ import annotations

from collections.abc import Callable

from vmlease_agent.core.agent import Agent
from vmlease_agent.rpc.sanlock.base import ApiBase
from vmlease_agent.rpc.sanlock.convert import ConvertMixin
from vmlease_agent.rpc.sanlock.daemon import DaemonMixin
from vmlease_agent.rpc.sanlock.events import EventsMixin
from vmlease_agent.rpc.sanlock.formatting import FormattingMixin
from vmlease_agent.rpc.sanlock.inspection import InspectionMixin, LogRing
from vmlease_agent.rpc.sanlock.leases import LeasesMixin
from vmlease_agent.rpc.sanlock.lockspaces import LockspacesMixin
from vmlease_agent.rpc.sanlock.rindex import RindexMixin


class SanlockApi(
    LockspacesMixin,
    LeasesMixin,
    ConvertMixin,
    FormattingMixin,
    RindexMixin,
    DaemonMixin,
    InspectionMixin,
    EventsMixin,
    ApiBase,
):
    """The commands, over the agent; per-connection state is the caller's ``Registration``."""

    def __init__(
        self, agent: Agent, on_shutdown: Callable[[bool], None], log_ring: LogRing
    ) -> None:
        super().__init__(agent, on_shutdown)
        self.log_ring = log_ring
        agent.watch_host_events(self._deliver)
