"""host_id allocation: unique ids under races, stable ids, and no reuse before the safe time."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fake_hostid_store import FakeHostIdStore
from vmlease_api.allocation import (
    HostIdRecord,
    LockspaceFull,
    ReleaseClock,
    keeper,
    lowest_free,
    release_reason,
)
from vmlease_api.models import HostState
from vmlease_operator.hostid_writes import Allocator, hostid_body, release

SAFE = 140.0


@pytest.mark.parametrize(
    ("taken", "expected"),
    [((), 1), ((1, 2, 3), 4), ((1, 3), 2), ((2, 3), 1), ((1, 2, 3, 4), None)],
    ids=["empty", "from-one", "hole", "one-missing", "full"],
)
def test_lowest_free(taken, expected):
    assert lowest_free(taken, max_hosts=4) == expected


def _rec(host_id: int, node: str = "n", state: HostState | None = None, **kw) -> HostIdRecord:
    return HostIdRecord(
        name=f"ls.{host_id}", lockspace="ls", node=node, host_id=host_id, state=state, **kw
    )


def test_keeper_prefers_the_claimed_id_then_the_lowest():
    assert keeper([_rec(3), _rec(2)]).host_id == 2
    assert keeper([_rec(3, state=HostState.JOINING), _rec(2)]).host_id == 3
    assert keeper([_rec(2, terminating=True)]) is None


def _final_ids(store: FakeHostIdStore) -> dict[str, int]:
    """node -> the id it keeps, as its agent would pick it."""
    by_node: dict[str, list[HostIdRecord]] = {}
    for record in store.records("ls"):
        by_node.setdefault(record.node, []).append(record)
    return {node: keeper(records).host_id for node, records in by_node.items()}


def test_allocation_never_duplicates_safety():
    """Two operators (separate allocators, stale watches) serve 150 arriving nodes at once."""
    store = FakeHostIdStore()
    operators = [Allocator(store), Allocator(store)]
    nodes = [f"node-{i}" for i in range(150)]
    jobs = [(op, n) for n in nodes for op in operators]
    random.Random(5).shuffle(jobs)

    def serve(job):
        op, node = job
        # Each operator's watch shows a random, possibly stale subset of the HostIds.
        seen = [r for r in store.records("ls") if random.random() < 0.5]
        return op.ensure("ls", node, 2000, seen).record

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(serve, jobs))
    ids = _final_ids(store)
    assert set(ids) == set(nodes)
    assert len(set(ids.values())) == len(nodes), "two nodes share a host_id"
    names = [r.name for r in store.records()]
    assert len(names) == len(set(names))
    # Whatever either operator answered, it is an object of that node.
    assert all(r.node == n for r, (_, n) in zip(results, jobs, strict=True))


def test_two_operators_racing_for_one_node_leave_one_claimable_id_safety():
    """B creates for the node between A's read and A's write: the node has two HostIds, each
    id still has one holder, the agent claims one and the other is released at once."""
    store = FakeHostIdStore()
    a, b = Allocator(store), Allocator(store)

    def b_slips_in(body):
        if body["spec"]["nodeName"] == "n" and not store.objects:
            store.before_create.clear()
            b.ensure("ls", "n", 10, [_rec(1, node="other")])  # B's watch thinks 1 is taken

    store.before_create.append(b_slips_in)
    a.ensure("ls", "n", 10, [])
    records = store.list_for_node("ls", "n")
    assert sorted(r.host_id for r in records) == [1, 2]
    claimed = store.claim(keeper(records))  # the agent claims the keeper (id 1)
    extra = next(r for r in store.records() if r.name != claimed.name)
    assert release_reason(extra, wanted=False, released_for=0, safe_seconds=SAFE)
    assert release(store, extra)
    assert [r.host_id for r in store.records()] == [1]


def test_release_loses_to_a_concurrent_claim_safety():
    """The operator decided to release an unclaimed extra; the agent claims it first: the
    guarded delete fails and the claimed id stays."""
    store = FakeHostIdStore()
    store.create(hostid_body("ls", "n", 2))
    (decided_on,) = store.records()
    store.claim(decided_on)
    assert release(store, decided_on) is False
    (after,) = store.records()
    assert after.claimed and not after.terminating


def test_claim_loses_to_a_release_safety():
    store = FakeHostIdStore()
    store.create(hostid_body("ls", "n", 2))
    (seen_by_agent,) = store.records()
    assert release(store, seen_by_agent)
    assert store.objects == {}
    with pytest.raises(Exception, match=r"ls\.2"):
        store.claim(seen_by_agent)


def test_id_not_reused_before_safe_timeout_safety():
    clock = ReleaseClock()
    dead = _rec(4, state=HostState.DEAD)
    clock.observe(dead, now=1000.0)
    for now in (1000.0, 1100.0, 1000.0 + SAFE - 1):
        assert release_reason(dead, False, clock.released_for(dead.name, now), SAFE) is None
    assert release_reason(dead, False, clock.released_for(dead.name, 1000.0 + SAFE), SAFE)


def test_release_count_restarts_when_the_host_comes_back_safety():
    clock = ReleaseClock()
    clock.observe(_rec(4, state=HostState.DEAD), now=0.0)
    clock.observe(_rec(4, state=HostState.LIVE), now=50.0)
    clock.observe(_rec(4, state=HostState.DEAD), now=60.0)
    assert clock.released_for("ls.4", now=SAFE + 1) == pytest.approx(SAFE + 1 - 60.0)


def test_release_count_restarts_on_a_new_episode_the_watch_skipped_safety():
    """A relisted watch may skip Live: a new stateSince (or generation) is a new episode."""
    import datetime

    t = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    clock = ReleaseClock()
    clock.observe(_rec(4, state=HostState.DEAD, state_since=t, generation=1), now=0.0)
    later = t + datetime.timedelta(minutes=5)
    clock.observe(_rec(4, state=HostState.DEAD, state_since=later, generation=2), now=100.0)
    assert clock.released_for("ls.4", now=150.0) == pytest.approx(50.0)
    clock.forget("ls.4")
    assert clock.released_for("ls.4", now=150.0) == 0.0


def test_node_keeps_its_id_while_selected_even_if_dead():
    """A rebooting node rejoins with its id: no release while it exists and is selected."""
    dead = _rec(4, state=HostState.DEAD)
    assert release_reason(dead, wanted=True, released_for=10 * SAFE, safe_seconds=SAFE) is None


def test_user_delete_does_not_free_an_id_early_safety():
    live = _rec(4, state=HostState.LIVE, terminating=True)
    assert release_reason(live, wanted=True, released_for=0, safe_seconds=SAFE) is None
    failing = _rec(4, state=HostState.FAILING, terminating=True)
    assert release_reason(failing, wanted=False, released_for=10 * SAFE, safe_seconds=SAFE) is None


def test_terminating_ids_stay_taken_for_allocation_safety():
    store = FakeHostIdStore()
    allocator = Allocator(store)
    blocked = _rec(1, node="gone", state=HostState.DEAD, terminating=True)
    assert allocator.ensure("ls", "new", 10, [blocked]).record.host_id == 2


def test_operator_restart_keeps_ids():
    store = FakeHostIdStore()
    first = Allocator(store)
    ids = {n: first.ensure("ls", n, 100, store.records()).record.host_id for n in "abc"}
    writes = store.writes
    restarted = Allocator(store)
    again = {n: restarted.ensure("ls", n, 100, store.records()).record.host_id for n in "abc"}
    assert again == ids and store.writes == writes


def test_allocation_costs_one_write_per_node_even_with_a_lagging_watch():
    store = FakeHostIdStore()
    allocator = Allocator(store)
    lock = threading.Lock()
    lagging: list[HostIdRecord] = []  # the watch never catches up in this test

    def serve(node):
        with lock:
            seen = list(lagging)
        return allocator.ensure("ls", node, 2000, seen)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(serve, [f"n{i}" for i in range(100)]))
    assert store.writes == 100
    assert sum(r.conflicts for r in results) == 0
    assert sorted(r.record.host_id for r in results) == list(range(1, 101))


def test_full_lockspace_raises_with_a_readable_message():
    store = FakeHostIdStore()
    allocator = Allocator(store)
    allocator.ensure("ls", "a", 1, [])
    with pytest.raises(LockspaceFull, match="no free host_id: all 1 are held"):
        allocator.ensure("ls", "b", 1, store.records())


def test_forgotten_ids_become_allocatable_again():
    store = FakeHostIdStore()
    allocator = Allocator(store)
    first = allocator.ensure("ls", "a", 10, []).record
    assert release(store, first)
    allocator.forget("ls", first.host_id)
    assert allocator.ensure("ls", "b", 10, store.records()).record.host_id == 1
