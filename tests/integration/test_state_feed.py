"""The transition feed against a real redis-server: every state change is in the stream, in order,
even when several happen between two reads (the live view of ``hearth up`` reads it once a second)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import redis

from hearth.clock import ManualClock
from hearth.errors import Conflict
from hearth.pool import Leases, PoolStore, State
from hearth.pool.feed import START, StateFeed
from hearth.runtime import Runtime
from settings import Settings
from tests.fixtures.pools import PoolEnv
from worker.up import Supervisor

POOL = "py"


@pytest.fixture
def store(redis_client: redis.Redis) -> PoolStore:
    return PoolStore(redis_client, ManualClock(1_700_000_000.0), prefix="t")


@pytest.fixture
def leases(store: PoolStore) -> Leases:
    counter = itertools.count()
    return Leases(store, token_factory=lambda: f"lease{next(counter)}", wake_on_ready=False)


def make_ready(store: PoolStore, pool: str, name: str) -> None:
    store.write_intent(pool, name)
    store.transition(name, State.CREATING, State.SEEDING, container_id=f"cntr_{name}",
                     deadline=store.clock.now() + 600)
    store.transition(name, State.SEEDING, State.READY)


def moves(feed: StateFeed) -> list[tuple[str, str | None, str]]:
    return [(e.name, e.from_state, e.to_state) for e in feed.read()]


def test_a_lease_and_release_between_two_reads_shows_every_transition(store: PoolStore, leases: Leases) -> None:
    feed = StateFeed(store)
    assert feed.last_id == START  # nothing written yet
    make_ready(store, POOL, "c1")
    assert moves(feed) == [("c1", None, "CREATING"), ("c1", "CREATING", "SEEDING"), ("c1", "SEEDING", "READY")]
    assert moves(feed) == []  # read from where it stopped

    # Between two reads: lease, renew (no state change: no entry), release, retire, forget.
    got = leases.lease(POOL, ttl=60)
    leases.renew(got.lease_id, 120, token=got.token)
    leases.release(got.container_id, got.lease_id, token=got.token)
    store.transition("c1", State.HARVESTING, State.DELETING)
    store.transition("c1", State.DELETING, State.GONE)
    assert store.forget("c1")
    events = feed.read()
    assert [(e.from_state, e.to_state) for e in events] == [
        ("READY", "LEASED"), ("LEASED", "HARVESTING"), ("HARVESTING", "DELETING"), ("DELETING", "GONE"),
        ("GONE", "forgotten"),
    ]
    assert [e.describe() for e in events][:2] == ["py: c1 READY -> LEASED", "py: c1 LEASED -> HARVESTING"]
    assert events[-1].describe() == "py: c1 gone"
    assert all(e.pool == POOL for e in events) and not feed.missed


def test_a_refused_change_writes_nothing_and_a_new_reader_starts_at_the_end(
    store: PoolStore, leases: Leases
) -> None:
    make_ready(store, POOL, "c1")
    feed = StateFeed(store)  # after the three entries above: sees only what comes next
    assert moves(feed) == []
    with pytest.raises(Conflict):  # c1 is READY, not LEASED
        store.transition("c1", State.LEASED, State.HARVESTING)
    assert leases.try_lease("other", ttl=60) is None  # an empty pool: nothing moved
    assert moves(feed) == []
    got = leases.lease(POOL, ttl=60)
    leases.release(got.container_id, got.lease_id, token=got.token, reuse=True)
    assert moves(feed) == [("c1", "READY", "LEASED"), ("c1", "LEASED", "READY")]


def test_a_reader_that_fell_behind_the_cap_is_told(store: PoolStore, redis_client: redis.Redis) -> None:
    make_ready(store, POOL, "c1")
    feed = StateFeed(store, last_id=START)
    feed.read()
    # Trim the stream past where the reader stopped, as MAXLEN does to a reader far behind.
    make_ready(store, POOL, "c2")
    redis_client.xtrim(feed.key, maxlen=1, approximate=False)
    assert moves(feed) == [("c2", "SEEDING", "READY")]
    assert feed.missed


POOLS = """
version: 1
pools:
  py:
    min_ready: 1
    max_total: 2
    container: {expires_after_minutes: 10}
"""


def test_the_up_view_shows_a_lease_released_between_two_refreshes(
    pools_env: PoolEnv, hearth_runtime: Runtime, tmp_path: Path
) -> None:
    pools_env.write_pools(POOLS)
    rt = hearth_runtime
    sup = Supervisor(Settings(data_dir=tmp_path, pools=pools_env.pools_file))
    make_ready(rt.store, "py", "hearth-py-a")
    snap, first = sup.observe(rt)  # the first look starts at the end of the stream
    assert first == [] and snap.rows[0].ready == 1

    got = rt.leases.lease("py", ttl=60)
    rt.leases.release(got.container_id, got.lease_id, token=got.token)
    snap, seen = sup.observe(rt)
    assert [line.split(" ", 1)[1] for line in seen] == [
        "py: hearth-py-a READY -> LEASED", "py: hearth-py-a LEASED -> HARVESTING",
    ]
    assert snap.rows[0].ready == 0 and list(sup.events)[-2:] == seen
