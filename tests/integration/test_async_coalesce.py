"""The async face's auto-pipelining (``hearth.pool.effects.AsyncIO``, coalesce on), against a real redis-server.

Coroutines that call Redis at the same time share pipelined round trips: 32 concurrent leases then
use at most ``in_flight`` (4) connections, where without coalescing each takes its own; each call still gets its own
reply, and one call's error stays that call's.
"""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

from hearth.clock import SystemClock
from hearth.errors import StateStoreError
from hearth.pool import PoolStore, State
from hearth.pool.async_leases import AsyncLeases
from hearth.pool.effects import AsyncIO, Command, Steps

POOL = "py"


def fill(store: PoolStore, n: int) -> None:
    now = store.clock.now()
    for i in range(n):
        name = f"c{i:02d}"
        store.write_intent(POOL, name, inputs_digest="d")
        store.transition(name, State.CREATING, State.SEEDING, container_id=f"cntr_{name}", deadline=now + 600 + i)
        store.transition(name, State.SEEDING, State.READY)


def connections(client: redis.Redis, name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name") == name)


@pytest.mark.parametrize("coalesce", [True, False])
def test_thirty_two_concurrent_leases_share_round_trips(redis_url: str, aio: asyncio.Runner, coalesce: bool) -> None:
    client = redis.Redis.from_url(redis_url)
    store = PoolStore(client, SystemClock(), prefix="x")
    fill(store, 32)
    name = f"coalesce-{coalesce}"

    async def main() -> list[str]:
        aclient = redis.asyncio.Redis.from_url(redis_url, client_name=name, max_connections=64)
        leases = AsyncLeases(store, aclient, coalesce=coalesce)
        try:
            await leases.get("c00")  # one connection open (and the script path warm) before the burst
            got = await asyncio.gather(*(leases.lease(POOL, ttl=60) for _ in range(32)))
            return [lease.container_id for lease in got]
        finally:
            # Counted before closing: the connections the burst opened are still in the pool.
            opened.append(connections(client, name))
            await aclient.aclose()

    opened: list[int] = []
    ids = aio.run(main())
    assert len(set(ids)) == 32 and store.counts(POOL)[State.LEASED] == 32  # every caller its own container
    if coalesce:
        assert 1 <= opened[0] <= 4  # the 32 leases went in pipelines, at most 4 in flight
    else:
        assert opened[0] > 4  # each concurrent call took its own connection
    client.close()


def test_one_calls_error_stays_that_calls(redis_url: str, aio: asyncio.Runner) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("x:text", "not a list")

    def one(key: str) -> Steps[int]:
        return (yield Command("llen", (key,)))

    async def main() -> list[int | BaseException]:
        aclient = redis.asyncio.Redis.from_url(redis_url)
        io = AsyncIO(aclient, "x", SystemClock())
        client.rpush("x:list", "a", "b")
        try:
            return await asyncio.gather(io.run(one("x:list")), io.run(one("x:text")), io.run(one("x:none")),
                                        return_exceptions=True)
        finally:
            await aclient.aclose()

    first, second, third = aio.run(main())
    assert first == 2 and third == 0
    assert isinstance(second, StateStoreError) and "WRONGTYPE" in str(second)
    client.close()
