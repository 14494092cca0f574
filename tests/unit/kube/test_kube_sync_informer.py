"""The list+watch cache: it follows changes, recovers from 410 Gone, and keeps its last known
state (never an empty one) while the API server is away."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from fake_kube_api import FakeKubeApi
from kube_builders import lockspace
from vmlease_agent.kube.informer import Backoff, Informer


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def names(informer: Informer) -> set[str]:
    return {o["metadata"]["name"] for o in informer.objects()}


def test_backoff_doubles_to_its_cap_with_jitter_and_resets():
    backoff = Backoff(first=1, cap=8, rng=random.Random(1))
    delays = [backoff.next() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert nominal / 2 <= delay <= nominal
    backoff.reset()
    assert backoff.next() <= 1


def test_the_cache_follows_adds_changes_and_deletes():
    api = FakeKubeApi()
    api.put("lockspaces", lockspace("a"))
    changes = []
    informer = Informer(api, "lockspaces", on_change=lambda: changes.append(1))
    informer.start()
    try:
        informer.synced.wait(5)
        assert names(informer) == {"a"}
        api.put("lockspaces", lockspace("b"))
        wait_for(lambda: names(informer) == {"a", "b"})
        api.delete("lockspaces", "a")
        wait_for(lambda: names(informer) == {"b"})
        assert len(changes) >= 3
    finally:
        informer.stop()


def test_a_compacted_history_makes_it_list_again():
    api = FakeKubeApi()
    informer = Informer(api, "lockspaces")
    informer.start()
    try:
        informer.synced.wait(5)
        reads = api.reads
        api.put("lockspaces", lockspace("a"))
        api.compact()  # the watch's resourceVersion is now too old: 410
        api.put("lockspaces", lockspace("b"))
        wait_for(lambda: names(informer) == {"a", "b"})
        assert api.reads > reads  # it listed again
    finally:
        informer.stop()


def test_a_lost_api_server_leaves_the_last_known_state_and_is_retried():
    api = FakeKubeApi()
    api.put("lockspaces", lockspace("a"))
    informer = Informer(api, "lockspaces", backoff=Backoff(first=0.05, cap=0.1))
    informer.start()
    try:
        informer.synced.wait(5)
        api.down = True
        wait_for(lambda: informer.error != "")
        assert names(informer) == {"a"}  # stale, not empty
        api.down = False
        api.put("lockspaces", lockspace("b"))
        wait_for(lambda: names(informer) == {"a", "b"})
        wait_for(lambda: informer.error == "")
    finally:
        informer.stop()
