"""The renewal history a lockspace keeps for ``sanlock client renewal`` (sanlock's format)."""

from __future__ import annotations

from vmlease_agent.core.lockspace import (
    RENEWAL_HISTORY_SIZE,
    JoinedLockspace,
    LockspaceConfig,
    Renewal,
)
from vmlease_agent.engine import errors
from vmlease_agent.engine.clock import FakeClock


def test_history_keeps_the_last_renewals_and_counts_failures_on_the_last_success(tmp_path):
    path = tmp_path / "ls"
    path.write_bytes(bytes(1 << 20))
    ls = JoinedLockspace(LockspaceConfig("ls", 1, str(path), 0, io_timeout=2), "n1", 60,
                         clock=FakeClock(start=100))  # fmt: skip
    try:
        for t in range(RENEWAL_HISTORY_SIZE + 5):
            ls._renewed(Renewal(t, 1, 2))
        timeout = errors.IoTimeout(op="read", length=512, path="p", offset=0, timeout=2)
        ls._renew_failed(timeout)
        ls._renew_failed(errors.IoFailed(op="write", length=512, path="p", offset=0, detail="EIO"))
        ls._renew_failed(timeout)
        history = ls.renewal_history()
        assert len(history) == RENEWAL_HISTORY_SIZE and history[0].timestamp == 5
        assert history[-1] == Renewal(RENEWAL_HISTORY_SIZE + 4, 1, 2, 2, 1)
        history[-1].next_errors = 99  # a copy: the lockspace's own record is untouched
        assert ls.renewal_history()[-1].next_errors == 1
    finally:
        ls.st.close()
