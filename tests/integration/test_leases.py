"""Leases against a real redis-server: choice, fencing, renew, reclaim, waiting, exclusivity.

Every test that takes ``leases`` (or ``make_leases``) runs twice: on the sync ``Leases`` and on
``AsyncLeases`` (redis.asyncio), the same assertions for both faces (tests/fixtures/faces.py).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from hearth.clock import ManualClock, SystemClock
from hearth.errors import LeaseError, PoolEmpty, StateStoreError
from hearth.pool import Lease, Leases, PoolStore, State
from hearth.pool.async_leases import AsyncLeases
from tests.fixtures.faces import Blocking

POOL = "py"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture
def store(redis_client: redis.Redis, clock: ManualClock) -> PoolStore:
    return PoolStore(redis_client, clock, prefix="t")


@pytest.fixture
def make_leases(
    face: str, aio: asyncio.Runner, async_redis: Callable[..., redis.asyncio.Redis]
) -> Callable[..., Leases]:
    """``make_leases(store, **options)``: the sync face, or the async face seen through ``Blocking``."""

    def make(store: PoolStore, **options: Any) -> Any:
        if face == "sync":
            return Leases(store, **options)
        return Blocking(AsyncLeases(store, async_redis(), **options), aio)

    return make


@pytest.fixture
def leases(store: PoolStore, make_leases: Callable[..., Leases]) -> Leases:
    counter = itertools.count()
    return make_leases(store, token_factory=lambda: f"lease{next(counter)}", wake_on_ready=False)


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


def test_a_waiting_lease_gets_a_container_that_becomes_ready(
    redis_client: redis.Redis, make_leases: Callable[..., Leases]
) -> None:
    store = PoolStore(redis_client, SystemClock(), prefix="w")
    leases = make_leases(store)  # real clock: wakes on the pool's "became READY" list
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


def test_redis_errors_are_state_store_errors_on_both_faces(face: str, aio: asyncio.Runner) -> None:
    # A port nothing listens on: each face must raise the project's error, not redis-py's.
    dead: dict[str, Any] = {"host": "127.0.0.1", "port": 1, "socket_connect_timeout": 1}
    store = PoolStore(redis.Redis(**dead), SystemClock(), prefix="d")
    leases: Any = Leases(store) if face == "sync" else Blocking(AsyncLeases(store, redis.asyncio.Redis(**dead)), aio)
    with pytest.raises(StateStoreError, match="redis: ConnectionError"):
        leases.try_lease(POOL, ttl=60)


# --- the async face under many coroutines of one event loop -----------------------------------


def test_fifty_coroutines_lease_twenty_containers_exactly_once(redis_url: str, aio: asyncio.Runner) -> None:
    client = redis.Redis.from_url(redis_url)
    store = PoolStore(client, SystemClock(), prefix="x")
    _fill(store, 20)

    async def main() -> list[Lease | None]:
        aclient = redis.asyncio.Redis.from_url(redis_url)
        leases = AsyncLeases(store, aclient)
        go = asyncio.Event()

        async def caller(i: int) -> Lease | None:
            await go.wait()
            try:
                return await leases.lease(POOL, ttl=60, holder=f"c{i}")
            except PoolEmpty:
                return None

        tasks = [asyncio.create_task(caller(i)) for i in range(50)]
        go.set()  # all 50 are parked on the event: they start together
        try:
            return await asyncio.gather(*tasks)
        finally:
            await aclient.aclose()

    results = aio.run(main())
    got = [lease for lease in results if lease is not None]
    assert len(got) == 20 and results.count(None) == 30
    assert len({lease.container_id for lease in got}) == 20
    assert len({lease.token for lease in got}) == 20
    assert store.counts(POOL)[State.LEASED] == 20
    client.close()


def test_fifty_coroutines_taking_turns_never_hold_one_container_twice(redis_url: str, aio: asyncio.Runner) -> None:
    """50 coroutines, 10 containers, 5 rounds each of lease (waiting) -> hold -> release for reuse: at
    no moment do two coroutines hold one container, and every lease is eventually served."""
    client = redis.Redis.from_url(redis_url)
    store = PoolStore(client, SystemClock(), prefix="x")
    _fill(store, 10)
    held: dict[str, int] = {}
    overlaps: list[tuple[str, int, int]] = []
    served: list[int] = []

    async def main() -> None:
        aclient = redis.asyncio.Redis.from_url(redis_url)
        leases = AsyncLeases(store, aclient, poll_max=0.2)

        async def caller(i: int) -> None:
            for _ in range(5):
                async with leases.leased(POOL, ttl=60, wait_seconds=120, holder=f"c{i}", reuse=True) as lease:
                    if lease.container_id in held:
                        overlaps.append((lease.container_id, held[lease.container_id], i))
                    held[lease.container_id] = i
                    await asyncio.sleep(0)  # let the others run while this one holds it
                    del held[lease.container_id]
                    served.append(i)

        try:
            await asyncio.gather(*(caller(i) for i in range(50)))
        finally:
            await aclient.aclose()

    aio.run(main())
    assert overlaps == []
    assert len(served) == 250
    counts = store.counts(POOL)
    assert counts[State.READY] == 10 and counts[State.LEASED] == 0
    client.close()


def test_a_waiting_coroutine_leaves_the_loop_free_and_takes_the_refill(redis_url: str, aio: asyncio.Runner) -> None:
    """The lease waits on an empty pool; the coroutine that makes a container READY runs on the same
    loop meanwhile (it could not if the wait blocked the loop), and the waiter takes that container."""
    client = redis.Redis.from_url(redis_url)
    store = PoolStore(client, SystemClock(), prefix="w")
    store.write_intent(POOL, "late")
    store.transition("late", State.CREATING, State.SEEDING, container_id="cntr_late", deadline=store.clock.now() + 900)

    async def main() -> tuple[Lease, bool]:
        aclient = redis.asyncio.Redis.from_url(redis_url)
        leases = AsyncLeases(store, aclient)  # real clock: wakes on the pool's "became READY" list
        try:
            waiter = asyncio.create_task(leases.lease(POOL, ttl=60, wait_seconds=60))
            await asyncio.sleep(0.2)
            still_waiting = not waiter.done()
            # The refill, done from this loop on the async client, by the same TRANSITION script.
            await leases.io.run(leases.core._transition("name", "late", (State.SEEDING,), State.READY, "{}"))
            return await waiter, still_waiting
        finally:
            await aclient.aclose()

    got, was_waiting = aio.run(main())
    assert was_waiting and got.name == "late"
    client.close()
