"""PoolStore against a real redis-server: intents, compare-and-set transitions, indexes, breaker."""

from __future__ import annotations

import threading

import pytest
import redis

from hearth.clock import ManualClock
from hearth.errors import Conflict, StateStoreError
from hearth.pool import (
    Adopt,
    BreakerPolicy,
    BreakerState,
    DesiredPool,
    Forget,
    PoolStore,
    RemoteContainer,
    Retire,
    State,
    make_name,
    reconcile,
)

POOL = "py"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture
def store(redis_client: redis.Redis, clock: ManualClock) -> PoolStore:
    return PoolStore(redis_client, clock, prefix="t", breaker=BreakerPolicy(threshold=3, window=60, cooldown=120))


def _ready(store: PoolStore, name: str, cid: str, deadline: float, digest: str = "d1") -> None:
    store.write_intent(POOL, name, inputs_digest=digest)
    store.transition(name, State.CREATING, State.SEEDING, container_id=cid, deadline=deadline)
    store.transition(name, State.SEEDING, State.READY)


def test_intent_is_written_once_and_is_idempotent_by_name(store: PoolStore, clock: ManualClock) -> None:
    first = store.write_intent(POOL, "hearth-py-aaaa", inputs_digest="d1", expires_minutes=20)
    assert first.state is State.CREATING and first.container_id is None
    assert first.created_at == clock.now()
    clock.advance(5)
    again = store.write_intent(POOL, "hearth-py-aaaa", inputs_digest="other")
    # The earlier intent wins: a retried provision adopts it instead of starting a second one.
    assert again == first
    assert store.counts(POOL)[State.CREATING] == 1
    assert store.pools() == [POOL]


def test_transition_is_compare_and_set(store: PoolStore, clock: ManualClock) -> None:
    store.write_intent(POOL, "n1")
    clock.advance(2.5)
    rec = store.transition("n1", State.CREATING, State.SEEDING, container_id="cntr_1", deadline=clock.now() + 1200)
    assert rec.state is State.SEEDING and rec.container_id == "cntr_1"
    assert rec.updated_at == clock.now()
    assert store.get("n1") == rec
    assert store.by_container_id("cntr_1") == rec
    with pytest.raises(Conflict, match="expected CREATING, found SEEDING"):
        store.transition("n1", State.CREATING, State.SEEDING)
    with pytest.raises(Conflict, match="no such record"):
        store.transition("missing", State.CREATING, State.SEEDING)
    with pytest.raises(ValueError, match="not a transition"):
        store.transition("n1", State.SEEDING, State.LEASED)
    with pytest.raises(ValueError, match="cannot change"):
        store.transition("n1", State.SEEDING, State.READY, pool="elsewhere")
    with pytest.raises(ValueError):
        store.transition("n1", State.SEEDING, State.READY, attempts=-1)
    # Nothing above changed the record.
    assert store.get("n1") == rec


def test_only_one_of_many_racing_transitions_wins(store: PoolStore) -> None:
    store.write_intent(POOL, "race")
    barrier = threading.Barrier(20)
    wins: list[int] = []
    conflicts: list[int] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.transition("race", State.CREATING, State.SEEDING, container_id=f"cntr_{i}")
            wins.append(i)
        except Conflict:
            conflicts.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1 and len(conflicts) == 19
    rec = store.get("race")
    assert rec is not None and rec.container_id == f"cntr_{wins[0]}"


def test_indexes_and_counts_follow_every_change(store: PoolStore, clock: ManualClock) -> None:
    for i in range(3):
        _ready(store, f"r{i}", f"cntr_{i}", clock.now() + 600 + i)
    store.write_intent(POOL, "c0")
    store.write_intent("other", "o0")
    counts = store.counts(POOL)
    assert counts[State.READY] == 3 and counts[State.CREATING] == 1 and counts[State.LEASED] == 0
    assert store.all_counts()["other"][State.CREATING] == 1
    assert [r.name for r in store.records(POOL, State.READY)] == ["r0", "r1", "r2"]
    store.transition("r1", State.READY, State.DELETING)
    store.transition("r1", State.DELETING, State.GONE)
    assert store.counts(POOL)[State.READY] == 2 and store.counts(POOL)[State.GONE] == 1
    with pytest.raises(Conflict):
        store.forget("r0", states=State.GONE)
    assert store.forget("r1", states=State.GONE) is True
    assert store.forget("r1") is False
    assert store.get("r1") is None and store.by_container_id("cntr_1") is None
    assert store.counts(POOL)[State.GONE] == 0
    assert {r.name for r in store.records(POOL)} == {"r0", "r2", "c0"}


def test_update_changes_fields_but_not_state(store: PoolStore, clock: ManualClock) -> None:
    _ready(store, "u", "cntr_u", clock.now() + 10)
    clock.advance(1)
    rec = store.update("u", State.READY, deadline=clock.now() + 1200.0004)
    assert rec.state is State.READY and rec.deadline == round(clock.now() + 1200, 3)
    with pytest.raises(Conflict):
        store.update("u", State.LEASED, deadline=1.0)


def test_records_survive_the_lua_json_round_trip_exactly(store: PoolStore, clock: ManualClock) -> None:
    clock.advance(0.123456)
    store.write_intent(POOL, "j", inputs_digest="sha256:abc/def")
    rec = store.fail("j", State.CREATING, "create refused: «quota» / " + "x" * 1000)
    assert rec.created_at == 1_700_000_000.123
    assert rec.error is not None and rec.error.startswith("create refused: «quota» / ") and len(rec.error) <= 300
    assert rec.inputs_digest == "sha256:abc/def"
    assert store.get("j") == rec


def test_works_with_a_decoding_client(redis_url: str, clock: ManualClock) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = PoolStore(client, clock, prefix="dec")
        _ready(store, "d", "cntr_d", clock.now() + 100)
        assert store.by_container_id("cntr_d") is not None
        assert store.counts(POOL)[State.READY] == 1
    finally:
        client.close()


def test_a_crash_after_the_intent_leaves_a_dead_intent_the_reconcile_resolves(
    store: PoolStore, clock: ManualClock
) -> None:
    desired = DesiredPool(name=POOL, min_ready=0, max_total=5, create_timeout=300, orphan_grace=300)
    never = make_name("hearth", POOL, "crash1")
    created = make_name("hearth", POOL, "crash2")
    store.write_intent(POOL, never)
    store.write_intent(POOL, created)
    # The worker dies right after the create call returned but before it recorded the id.
    # While the intent is young it is work in progress, not a problem.
    assert reconcile(desired, store.records(POOL), clock.now()) == []
    clock.advance(301)
    actions = reconcile(desired, store.records(POOL), clock.now())
    assert set(actions) == {Adopt(pool=POOL, name=created), Adopt(pool=POOL, name=never)}
    # With the remote listing, the reconcile resolves it itself: the container that exists is
    # retired by its id, the one never created is forgotten.
    remote = [RemoteContainer(id="cntr_zz", name=created, created_at=clock.now() - 300)]
    actions = reconcile(desired, store.records(POOL), clock.now(), remote=remote)
    assert Retire(pool=POOL, name=created, container_id="cntr_zz", reason="dead-intent") in actions
    assert Forget(pool=POOL, name=never, reason="dead-intent") in actions
    # Not an orphan: the intent owns it, so it is never deleted behind the record's back.
    assert not [a for a in actions if a.kind == "delete_orphan"]


def test_breaker_opens_after_consecutive_failures_and_probes_once(store: PoolStore, clock: ManualClock) -> None:
    assert store.breaker_state(POOL).state is BreakerState.CLOSED
    store.record_create_failure(POOL, "429 rate limited")
    store.record_create_failure(POOL, "429 rate limited")
    assert store.breaker_allows(POOL)
    status = store.record_create_failure(POOL, "500 server error")
    assert status.is_open and status.failures == 3 and status.reason == "500 server error"
    assert "open after 3 create failures" in status.describe()
    assert not store.breaker_allows(POOL)
    clock.advance(121)
    assert store.breaker_state(POOL).state is BreakerState.HALF_OPEN
    assert store.breaker_allows(POOL)  # the one probe
    assert not store.breaker_allows(POOL)  # nobody else while it runs
    reopened = store.record_create_failure(POOL, "still failing")
    assert reopened.state is BreakerState.OPEN and reopened.reason == "still failing"
    assert not store.breaker_allows(POOL)
    clock.advance(121)
    assert store.breaker_allows(POOL)
    assert store.record_create_success(POOL).state is BreakerState.CLOSED
    assert store.breaker_state(POOL).state is BreakerState.CLOSED and store.breaker_allows(POOL)


def test_breaker_counts_only_failures_within_the_window(store: PoolStore, clock: ManualClock) -> None:
    for _ in range(5):
        store.record_create_failure(POOL, "flaky")
        clock.advance(61)
    assert store.breaker_state(POOL).state is BreakerState.CLOSED
    store.record_create_failure(POOL, "a")
    store.record_create_success(POOL)
    store.record_create_failure(POOL, "b")
    store.record_create_failure(POOL, "c")
    # A success in between resets the run: only 2 consecutive failures.
    assert store.breaker_state(POOL).state is BreakerState.CLOSED
    assert store.breaker_state("unrelated").state is BreakerState.CLOSED


def test_a_permanent_breaker_stays_open_keeps_its_reason_and_lifts_only_for_its_own_opening(
    store: PoolStore, clock: ManualClock, redis_client: redis.Redis
) -> None:
    status = store.open_breaker(POOL, "environment variable TOKEN is not set; Bearer sk-abcdefghijklmnopqrstuv",
                                permanent=True, spec_hash="h1", env=["TOKEN"])
    assert status.is_open and status.permanent and status.failures == 1
    assert status.spec_hash == "h1" and status.env == ("TOKEN",) and status.env_retry
    assert status.reason is not None and "sk-abcdefghijklmnopqrstuv" not in status.reason  # redacted
    assert "until the pools file or the environment changes" in status.describe()
    stored = b" ".join(v for v in redis_client.hvals(store.pool_key(POOL, "breaker")))
    assert b"sk-abcdefghijklmnopqrstuv" not in stored
    clock.advance(10_000)  # no cool-down ends it
    assert store.breaker_state(POOL).state is BreakerState.OPEN
    assert not store.breaker_allows(POOL)
    # A late temporary failure counts, but does not replace the reason or make it half-open later.
    later = store.record_create_failure(POOL, "500 server error")
    assert later.permanent and later.reason == status.reason and later.failures == 2
    assert status.opened_at is not None
    assert not store.lift_breaker(POOL, status.opened_at - 1)  # not that opening: left alone
    assert store.lift_breaker(POOL, status.opened_at, env_change=True)
    assert store.breaker_state(POOL).state is BreakerState.CLOSED and store.breaker_allows(POOL)
    # The same spec failing for the same variables after an environment lift: no second env lift.
    again = store.open_breaker(POOL, "TOKEN is not set", permanent=True, spec_hash="h1", env=["TOKEN"])
    assert again.permanent and not again.env_retry
    assert again.opened_at is not None and store.lift_breaker(POOL, again.opened_at)  # a spec change lifts it
    other = store.open_breaker(POOL, "TOKEN is not set", permanent=True, spec_hash="h2", env=["TOKEN"])
    assert other.env_retry  # another spec: the environment may lift it again
    assert store.record_create_success(POOL).state is BreakerState.CLOSED


def test_an_opened_breaker_with_a_cool_down_pauses_then_probes(store: PoolStore, clock: ManualClock) -> None:
    status = store.open_breaker(POOL, "backend dropped memory_limit", permanent=False)
    assert status.is_open and not status.permanent and status.failures == 1  # at once, no threshold
    assert not store.breaker_allows(POOL)
    clock.advance(121)
    assert store.breaker_state(POOL).state is BreakerState.HALF_OPEN
    assert store.breaker_allows(POOL) and not store.breaker_allows(POOL)  # one probe


def test_health_beat_expires(store: PoolStore, redis_client: redis.Redis) -> None:
    store.beat("heartbeat", 30, leader="a", pools=2)
    seen = store.health("heartbeat")
    assert seen is not None and seen["leader"] == "a" and seen["at"] == 1_700_000_000.0
    assert 0 < redis_client.pttl(store.health_key("heartbeat")) <= 30_000
    assert store.health("worker") is None


def test_redis_failures_become_temporary_state_store_errors(clock: ManualClock) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from worker.redis_server import free_port

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    store = PoolStore(dead, clock)
    with pytest.raises(StateStoreError) as err:
        store.write_intent(POOL, "x")
    assert err.value.temporary
    with pytest.raises(StateStoreError):
        store.counts(POOL)
