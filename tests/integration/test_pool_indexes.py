"""The indexes a steady tick reads instead of every record: counters equal a full recount after any
sequence of transitions (leases, lapsed leases reclaimed, releases, expiries, forgets), the tick
view holds only what is due, and metering from the counters equals count x elapsed. Real Redis."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearth.api.client import ContainersClient
from hearth.clock import ManualClock
from hearth.errors import Conflict, LeaseError
from hearth.planner import Applier, Planner, PoolPlan
from hearth.pool.leases import Leases
from hearth.pool.model import State
from hearth.pool.store import MeterCounts, PoolStore
from hearth.runtime import Runtime
from settings import Settings

T0 = 1_800_000_000.0


def _store(client: redis.Redis, prefix: str) -> tuple[PoolStore, ManualClock]:
    clock = ManualClock(T0)
    store = PoolStore(client, clock, prefix=prefix)
    store.recount("p")  # counters start (on an empty pool)
    return store, clock


def _ready(store: PoolStore, name: str, deadline: float, digest: str = "d1") -> None:
    store.write_intent("p", name, inputs_digest=digest)
    store.transition(name, State.CREATING, State.SEEDING, container_id=f"c-{name}", bound_at=store.clock.now())
    store.transition(name, State.SEEDING, State.READY, deadline=deadline)


def _assert_consistent(store: PoolStore) -> None:
    assert store.counters_match("p")
    records = store.records("p")
    view = store.view("p", store.clock.now(), ready_horizon=float("-inf"), leased_horizon=float("-inf"),
                      surplus=0, lapsed_before=float("-inf"))
    assert view.meter == MeterCounts.of(records)
    alive = [r for r in records if r.container_id and r.state not in (State.GONE, State.EXPIRED) and r.deadline]
    assert view.deadline_count == len(alive)
    assert view.deadline_sum == pytest.approx(sum(r.deadline or 0.0 for r in alive))


def test_counters_equal_a_recount_after_a_scripted_sequence(redis_client: redis.Redis) -> None:
    store, clock = _store(redis_client, "ix1")
    leases = Leases(store, wake_on_ready=False)
    for i in range(6):
        _ready(store, f"hearth-p-r{i}", T0 + 1200 + i)
    _assert_consistent(store)
    a = leases.lease("p", ttl=30)
    b = leases.lease("p", ttl=600)
    leases.release(b.container_id, b.lease_id, reuse=True)  # back to READY
    clock.advance(60)  # a's lease lapses
    (lapsed,) = leases.lapsed()
    assert lapsed.name == a.name
    leases.reclaim(a.name, a.lease_id)  # LEASED -> HARVESTING
    store.transition(a.name, State.HARVESTING, State.DELETING)
    store.transition(a.name, State.DELETING, State.GONE)
    store.update("hearth-p-r3", State.READY, deadline=T0 + 5000)  # a refresh moves the deadline
    assert a.name == "hearth-p-r5" and b.name == "hearth-p-r4"  # the most life left first
    store.transition("hearth-p-r1", State.READY, State.EXPIRED)
    store.fail("hearth-p-r2", State.READY, "broken")
    store.forget(a.name)
    store.write_intent("p", "hearth-p-new")  # an intent: no container, not billed
    _assert_consistent(store)
    view = store.view("p", clock.now(), ready_horizon=float("-inf"), leased_horizon=float("-inf"),
                      surplus=0, lapsed_before=float("-inf"))
    assert view.digests == {"d1": 3}  # r0, r3 and r4 (reused)
    assert store.intents_written("p") == 7


def test_a_recount_repairs_counters_that_were_edited(redis_client: redis.Redis) -> None:
    store, _ = _store(redis_client, "ix2")
    for i in range(3):
        _ready(store, f"hearth-p-r{i}", T0 + 1200)
    redis_client.hset(store.pool_key("p", "meter"), "n:idle", 99)  # a crash or a hand edit
    redis_client.hset(store.pool_key("p", "digests"), "stale", 5)
    assert not store.counters_match("p")
    store.recount("p")
    _assert_consistent(store)


def test_the_view_reads_only_what_is_due(redis_client: redis.Redis) -> None:
    store, clock = _store(redis_client, "ix3")
    leases = Leases(store, wake_on_ready=False)
    for i in range(20):
        _ready(store, f"hearth-p-r{i:02d}", T0 + 600 + 30 * i)  # deadlines 10..19.5 minutes out
    lease = leases.lease("p", ttl=30)  # takes the most life left: r19
    store.write_intent("p", "hearth-p-creating")
    clock.advance(60)  # the lease lapsed
    now = clock.now()
    view = store.view("p", now, ready_horizon=now + 600, leased_horizon=now + 180, surplus=0, lapsed_before=now)
    names = {r.name for r in view.records}
    due_ready = {f"hearth-p-r{i:02d}" for i in range(19) if T0 + 600 + 30 * i <= now + 600}
    assert names == due_ready | {lease.name, "hearth-p-creating"}
    assert view.counts[State.READY] == 19 and view.counts[State.LEASED] == 1
    surplus = store.view("p", now, ready_horizon=float("-inf"), leased_horizon=float("-inf"), surplus=5,
                         lapsed_before=float("-inf"))
    assert {r.name for r in surplus.records} == {f"hearth-p-r{i:02d}" for i in range(5)} | {"hearth-p-creating"}


def test_metering_from_the_counters_is_count_times_elapsed(redis_client: redis.Redis) -> None:
    store, clock = _store(redis_client, "ix4")
    leases = Leases(store, wake_on_ready=False)
    for i in range(3):
        _ready(store, f"hearth-p-r{i}", T0 + 1200)
    first = store.meter_advance("p", clock.now())
    assert first is not None and first.first  # starts the clock
    clock.advance(100)
    got = leases.lease("p", ttl=600)  # one READY -> LEASED 100 s in
    clock.advance(50)
    store.transition("hearth-p-r0" if got.name != "hearth-p-r0" else "hearth-p-r1", State.READY, State.DELETING)
    clock.advance(50)
    adv = store.meter_advance("p", clock.now())
    assert adv is not None and not adv.first
    assert adv.seconds["idle"] == pytest.approx(3 * 100 + 2 * 50 + 1 * 50)
    assert adv.seconds["leased"] == pytest.approx(100)
    assert adv.seconds["other"] == pytest.approx(50)
    assert store.meter_advance("p", clock.now() - 10) is not None  # an old tick bills nothing more
    again = store.meter_advance("p", clock.now() + 10)
    assert again is not None and again.seconds["idle"] == pytest.approx(10)


def test_an_expiry_is_billed_until_the_deadline_and_a_short_life_is_reported(redis_client: redis.Redis) -> None:
    store, clock = _store(redis_client, "ix5")
    _ready(store, "hearth-p-a", T0 + 60)
    store.meter_advance("p", clock.now())
    clock.advance(200)  # the deadline passed 140 s ago, unseen
    store.transition("hearth-p-a", State.READY, State.EXPIRED)
    adv = store.meter_advance("p", clock.now())
    assert adv is not None and adv.seconds["idle"] == pytest.approx(60)
    assert adv.ended == [(T0 + 60, 60.0)]


OPS = st.lists(st.tuples(st.sampled_from(["new", "lease", "release", "reuse", "lapse", "expire", "fail",
                                          "delete", "gone", "forget", "refresh"]),
                         st.integers(0, 7)), max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_counters_equal_a_recount_after_any_sequence(redis_client: redis.Redis, ops: list[tuple[str, int]]) -> None:
    prefix = f"ixp{random.getrandbits(32):x}"
    store, clock = _store(redis_client, prefix)
    leases = Leases(store, wake_on_ready=False)
    made = 0
    for op, k in ops:
        clock.advance(7)
        names = [r.name for r in store.records("p")]
        name = names[k % len(names)] if names else None
        try:
            if op == "new" or name is None:
                _ready(store, f"hearth-p-n{made}", clock.now() + 600 + k)
                made += 1
            elif op == "lease":
                leases.try_lease("p", ttl=5 + k)
            elif op in ("release", "reuse"):
                rec = store.get(name)
                if rec is not None and rec.state is State.LEASED and rec.container_id and rec.lease_id:
                    leases.release(rec.container_id, rec.lease_id, reuse=op == "reuse")
            elif op == "lapse":
                for rec in leases.lapsed():
                    if rec.lease_id:
                        leases.reclaim(rec.name, rec.lease_id)
            elif op == "expire":
                store.transition(name, (State.READY, State.LEASED, State.HARVESTING), State.EXPIRED)
            elif op == "fail":
                store.fail(name, (State.READY, State.LEASED), "x")
            elif op == "delete":
                store.transition(name, (State.READY, State.HARVESTING, State.FAILED, State.EXPIRED), State.DELETING)
            elif op == "gone":
                store.transition(name, (State.DELETING, State.FAILED, State.EXPIRED), State.GONE)
            elif op == "forget":
                store.forget(name, states=(State.GONE, State.FAILED))
            elif op == "refresh":
                store.update(name, (State.READY, State.LEASED), deadline=clock.now() + 1200)
        except (Conflict, LeaseError):
            pass  # not a move of the state machine from where the record is: nothing changed
    _assert_consistent(store)


POOLS = ("version: 1\npools:\n  p: {min_ready: 30, buffer: 2, max_total: 60, "
         "keepalive: {margin_seconds: 180}, lease: {ttl_seconds: 600}}\n")


@pytest.fixture
def runtime(tmp_path: Path, redis_url: str) -> Iterator[Runtime]:
    (tmp_path / "pools.yaml").write_text(POOLS)
    settings = Settings(pools=tmp_path / "pools.yaml", redis_url=redis_url, key_prefix="ixplan",  # type: ignore[call-arg]
                        _env_file=None)
    rt = Runtime(settings, redis_client=redis.Redis.from_url(redis_url),
                 client=ContainersClient("http://127.0.0.1:1/v1"), clock=ManualClock(T0))
    yield rt
    for key in rt.redis.scan_iter("ixplan:*"):
        rt.redis.delete(key)
    rt.close()


def _actions(plans: list[PoolPlan]) -> list[str]:
    return sorted(json.dumps(a.to_json(), sort_keys=True) for p in plans for a in p.actions)


def test_the_indexed_tick_plans_what_the_full_read_plans(runtime: Runtime) -> None:
    store, clock = runtime.store, runtime.clock
    assert isinstance(clock, ManualClock)
    rng = random.Random(3)
    digest = runtime.inputs(runtime.pool("p"))[1]
    store.recount("p")
    for i in range(40):  # 40 READY (8 over the target: surplus), deadlines spread over 20 minutes
        _ready(store, f"hearth-p-r{i:02d}", T0 + rng.uniform(-30, 1200), digest=digest)
    for _ in range(4):
        runtime.leases.try_lease("p", ttl=rng.choice([30, 3600]))
    store.write_intent("p", "hearth-p-intent", inputs_digest=digest)
    store.transition("hearth-p-r00", (State.READY, State.LEASED), State.FAILED, error="x")
    clock.advance(60)  # some deadlines passed, the 30 s leases lapsed
    full = Planner(runtime, full_read=True).plan()
    indexed = Planner(runtime).plan()
    assert _actions(indexed) == _actions(full)
    assert {a.kind for p in full for a in p.actions} >= {"refresh", "retire"}
    assert indexed[0].counts == full[0].counts and indexed[0].desired_ready == full[0].desired_ready
    assert indexed[0].read < full[0].read  # and it read less to get there


def _round_trips(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> int:
    """What one committing plan + apply sends to Redis (a command, or a whole pipeline, each one)."""
    sent = [0]
    original = redis.connection.Connection.send_packed_command

    def counting(conn: redis.connection.Connection, *args: Any, **kw: Any) -> None:
        sent[0] += 1
        original(conn, *args, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(redis.connection.Connection, "send_packed_command", counting)
        Applier(runtime, lambda name, args: None).apply(Planner(runtime, commit=True).plan())
    return sent[0]


@pytest.mark.parametrize("pools", [1, 6])
def test_a_steady_tick_sends_as_many_round_trips_for_one_pool_as_for_six(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, pools: int) -> None:
    # Every pool's reads go in one pipeline and its writes in another: the round trips of a tick
    # do not grow with the pools (they used to be about 8 per pool).
    lines = ["version: 1", "pools:"] + [f"  p{i}: {{min_ready: 4, buffer: 0, max_total: 8}}" for i in range(pools)]
    (tmp_path / "pools.yaml").write_text("\n".join(lines) + "\n")
    settings = Settings(pools=tmp_path / "pools.yaml", redis_url=redis_url, key_prefix="ixtrips",  # type: ignore[call-arg]
                        _env_file=None)
    rt = Runtime(settings, redis_client=redis.Redis.from_url(redis_url),
                 client=ContainersClient("http://127.0.0.1:1/v1"), clock=ManualClock(T0))
    try:
        for i in range(pools):
            pool = f"p{i}"
            rt.store.recount(pool)
            digest = rt.inputs(rt.pool(pool))[1]
            for n in range(4):  # at the target; two near their deadline: refreshes are due
                name = f"hearth-{pool}-{n}"
                rt.store.write_intent(pool, name, inputs_digest=digest)
                rt.store.transition(name, State.CREATING, State.READY, container_id=f"c-{pool}-{n}",
                                    bound_at=T0, deadline=T0 + (100 if n < 2 else 1100))
        assert isinstance(rt.clock, ManualClock)
        marks = [rt.store.key("pending", "refresh", f"hearth-p{i}-{n}") for i in range(pools) for n in range(2)]
        for _ in range(2):  # the first tick starts the meters' clocks, the second checks the counters
            Applier(rt, lambda name, args: None).apply(Planner(rt, commit=True).plan())  # scripts loaded
            rt.redis.delete(*marks)
            rt.clock.advance(10)
        trips = _round_trips(rt, monkeypatch)
        # Read pipeline, write pipeline, the refresh marks, and redis-py's SCRIPT EXISTS before
        # each pipeline that runs scripts.
        assert trips == 5
        assert rt.redis.exists(*marks) == len(marks)  # and every due refresh was marked
    finally:
        for key in rt.redis.scan_iter("ixtrips:*"):
            rt.redis.delete(key)
        rt.close()
