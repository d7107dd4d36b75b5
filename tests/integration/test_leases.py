"""Leases against a real redis-server: choice, fencing, renew, reclaim, waiting, exclusivity."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from hearth.clock import ManualClock, SystemClock
from hearth.errors import LeaseError, PoolEmpty
from hearth.pool import Lease, Leases, PoolStore, State

POOL = "py"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture
def store(redis_client: redis.Redis, clock: ManualClock) -> PoolStore:
    return PoolStore(redis_client, clock, prefix="t")


@pytest.fixture
def leases(store: PoolStore) -> Leases:
    counter = itertools.count()
    return Leases(store, token_factory=lambda: f"lease{next(counter)}", wake_on_ready=False)


def make_ready(store: PoolStore, name: str, life: float, digest: str = "d") -> None:
    now = store.clock.now()
    store.write_intent(POOL, name, inputs_digest=digest)
    store.transition(name, State.CREATING, State.SEEDING, container_id=f"cntr_{name}", deadline=now + life)
    store.transition(name, State.SEEDING, State.READY)


def test_lease_takes_the_ready_container_with_the_most_life_left(store: PoolStore, leases: Leases) -> None:
    make_ready(store, "short", 100)
    make_ready(store, "long", 1000)
    make_ready(store, "mid", 500)
    first = leases.lease(POOL, ttl=60, holder="app-1")
    assert (first.name, first.container_id, first.lease_id) == ("long", "cntr_long", "lease0")
    assert first.expires_at == store.clock.now() + 60
    rec = store.get("long")
    assert rec is not None and rec.state is State.LEASED and rec.holder == "app-1" and rec.lease_count == 1
    second = leases.lease(POOL, ttl=60, min_remaining=200)
    assert second.name == "mid" and second.token > first.token
    # "short" has 100 s left: not enough for a caller that needs 200.
    with pytest.raises(PoolEmpty):
        leases.lease(POOL, ttl=60, min_remaining=200)
    assert leases.lease(POOL, ttl=60).name == "short"
    assert store.counts(POOL)[State.LEASED] == 3 and store.counts(POOL)[State.READY] == 0


def test_a_container_past_its_deadline_is_never_leased(store: PoolStore, leases: Leases, clock: ManualClock) -> None:
    make_ready(store, "old", 10)
    clock.advance(11)
    with pytest.raises(PoolEmpty):
        leases.lease(POOL, ttl=60)


def test_release_checks_the_fencing_token(store: PoolStore, leases: Leases) -> None:
    make_ready(store, "a", 1000)
    got = leases.lease(POOL, ttl=60)
    with pytest.raises(LeaseError):
        leases.release(got.container_id, "not-the-lease")
    with pytest.raises(LeaseError):
        leases.release(got.container_id, token=got.token + 1)
    with pytest.raises(ValueError):
        leases.release(got.container_id)
    done = leases.release(got.container_id, got.lease_id, token=got.token)
    assert done.state is State.HARVESTING and done.needs_harvest and done.name == "a"
    rec = store.get("a")
    # The harvest keeps knowing whose work it saves; the lease itself is over.
    assert rec is not None and rec.state is State.HARVESTING and rec.token == got.token
    with pytest.raises(LeaseError):
        leases.release(got.name, got.lease_id)
    with pytest.raises(LeaseError):
        leases.renew(got.lease_id, 60)


def test_release_for_reuse_returns_it_to_the_pool(store: PoolStore, leases: Leases) -> None:
    make_ready(store, "a", 1000)
    first = leases.lease(POOL, ttl=60)
    back = leases.release(first.name, first.lease_id, reuse=True)
    assert back.state is State.READY and not back.needs_harvest
    rec = store.get("a")
    assert rec is not None and rec.lease_id is None and rec.token is None and rec.lease_expires_at is None
    again = leases.lease(POOL, ttl=60)
    assert again.name == "a" and again.token > first.token
    with pytest.raises(LeaseError):
        leases.release(first.container_id, first.lease_id)
    still = store.get("a")
    assert still is not None and still.state is State.LEASED and still.token == again.token


def test_renew_lapse_and_reclaim(store: PoolStore, leases: Leases, clock: ManualClock) -> None:
    make_ready(store, "a", 5000)
    make_ready(store, "b", 4000)
    a = leases.lease(POOL, ttl=60)
    b = leases.lease(POOL, ttl=60)
    clock.advance(50)
    renewed = leases.renew(a.lease_id, 120, token=a.token)
    assert renewed.expires_at == clock.now() + 120 and renewed.token == a.token
    with pytest.raises(LeaseError):
        leases.renew(a.lease_id, 120, token=a.token + 100)
    clock.advance(20)
    assert [r.name for r in leases.lapsed()] == [b.name]
    reclaimed = leases.reclaim(b.name, b.lease_id)
    assert reclaimed.state is State.HARVESTING
    assert leases.lapsed() == []
    # The late holder is fenced out.
    with pytest.raises(LeaseError):
        leases.release(b.container_id, b.lease_id)
    with pytest.raises(LeaseError):
        leases.reclaim(b.name, b.lease_id)
    with pytest.raises(LeaseError):
        leases.renew(b.lease_id, 60)


def test_waiting_on_an_empty_pool_gives_up_after_wait_seconds(leases: Leases, clock: ManualClock) -> None:
    start = clock.now()
    with pytest.raises(PoolEmpty) as err:
        leases.lease(POOL, ttl=60, wait_seconds=30)
    assert err.value.temporary
    assert clock.now() >= start + 30


def test_a_waiting_lease_gets_a_container_that_becomes_ready(redis_client: redis.Redis) -> None:
    store = PoolStore(redis_client, SystemClock(), prefix="w")
    leases = Leases(store)  # real clock: wakes on the pool's "became READY" list
    store.write_intent(POOL, "late")
    store.transition("late", State.CREATING, State.SEEDING, container_id="cntr_late", deadline=store.clock.now() + 900)
    started = threading.Event()

    def finish_seeding() -> None:
        started.wait(10)
        store.transition("late", State.SEEDING, State.READY)

    helper = threading.Thread(target=finish_seeding)
    helper.start()
    try:
        started.set()
        got = leases.lease(POOL, ttl=60, wait_seconds=20)
    finally:
        helper.join(20)
    assert got.name == "late"


def test_leased_context_manager_releases(store: PoolStore, leases: Leases) -> None:
    make_ready(store, "a", 1000)
    make_ready(store, "b", 900)
    with leases.leased(POOL, ttl=60, reuse=True) as lease:
        assert store.get(lease.name).state is State.LEASED  # type: ignore[union-attr]
    assert store.get("a").state is State.READY  # type: ignore[union-attr]
    with pytest.raises(RuntimeError), leases.leased(POOL, ttl=60, reuse=True) as lease:
        raise RuntimeError("app failed")
    # A container whose user failed is harvested and retired, never reused.
    assert store.get(lease.name).state is State.HARVESTING  # type: ignore[union-attr]


def test_leased_context_manager_reports_a_lost_lease(store: PoolStore, leases: Leases, clock: ManualClock) -> None:
    make_ready(store, "a", 1000)
    with pytest.raises(LeaseError), leases.leased(POOL, ttl=10) as lease:
        clock.advance(11)
        leases.reclaim(lease.name, lease.lease_id)


# --- exclusivity under concurrency ------------------------------------------------------------


def _fill(store: PoolStore, n: int) -> None:
    for i in range(n):
        make_ready(store, f"c{i:02d}", 600 + i)


def test_fifty_threads_lease_twenty_containers_exactly_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, max_connections=64)
    store = PoolStore(client, SystemClock(), prefix="x")
    _fill(store, 20)
    barrier = threading.Barrier(50)
    got: list[Lease] = []
    empty: list[int] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        leases = Leases(store)
        barrier.wait()
        try:
            lease = leases.lease(POOL, ttl=60, holder=f"t{i}")
        except PoolEmpty:
            with lock:
                empty.append(i)
            return
        with lock:
            got.append(lease)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.close()
    assert len(got) == 20 and len(empty) == 30
    assert len({lease.container_id for lease in got}) == 20
    assert len({lease.token for lease in got}) == 20
    assert store.counts(POOL)[State.LEASED] == 20


def _process_caller(url: str, index: int, start: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    leases = Leases(PoolStore(client, SystemClock(), prefix="x"))
    results: list[tuple[str, str | int]] = []

    def one(j: int) -> None:
        try:
            lease = leases.lease(POOL, ttl=60, holder=f"p{index}-{j}")
            results.append(("ok", lease.container_id))
        except PoolEmpty:
            results.append(("empty", j))

    start.wait(30)
    threads = [threading.Thread(target=one, args=(j,)) for j in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out.put(results)
    client.close()


@pytest.fixture
def fork_context() -> Iterator[multiprocessing.context.BaseContext]:
    yield multiprocessing.get_context("fork")


def test_fifty_callers_in_ten_processes_lease_twenty_containers_exactly_once(
    redis_url: str, fork_context: multiprocessing.context.BaseContext
) -> None:
    client = redis.Redis.from_url(redis_url)
    store = PoolStore(client, SystemClock(), prefix="x")
    _fill(store, 20)
    start = fork_context.Event()
    out = fork_context.Queue()
    procs = [fork_context.Process(target=_process_caller, args=(redis_url, i, start, out)) for i in range(10)]
    for p in procs:
        p.start()
    start.set()
    results = [item for _ in procs for item in out.get(timeout=60)]
    for p in procs:
        p.join(30)
    client.close()
    ok = [value for kind, value in results if kind == "ok"]
    assert len(results) == 50
    assert len(ok) == 20 and len(set(ok)) == 20
    assert store.counts(POOL)[State.LEASED] == 20
