"""Leases for asyncio programs: the async face of :class:`~hearth.pool.leases.LeaseCore`.

Why a second face: an asyncio app (FastAPI, the Agents SDK, ``AsyncOpenAI``) that used the sync
``Leases`` would block its event loop for every Redis round trip, or hop to a thread for each one
and queue behind the thread pool. ``AsyncLeases`` runs the same core (same Lua scripts, arguments,
reply parsing, waiting rules and errors) on ``redis.asyncio``; waiting for a refill is an awaited
BLPOP on the pool's "became READY" list (or ``asyncio.sleep``), so other coroutines run meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio

from hearth.pool.effects import AsyncIO
from hearth.pool.leases import Lease, LeaseCore, ReleasedLease, default_token_factory
from hearth.pool.model import ContainerRecord
from hearth.pool.store import PoolStore


class AsyncLeases:
    """``await leases.lease("py", ttl=600)``, ``async with leases.leased("py", ttl=600) as lease:``.

    ``store`` supplies the key layout, clock and encoding only (no IO goes through its sync client);
    ``redis_client`` is the ``redis.asyncio.Redis`` every call awaits. ``sleep`` replaces how a
    plain wait (``wake_on_ready=False``) waits; by default ``asyncio.sleep``, or advancing a
    ManualClock. ``coalesce``: concurrent calls share pipelined round trips (``AsyncIO``). Other
    arguments as :class:`~hearth.pool.leases.LeaseCore`.
    """

    def __init__(
        self,
        store: PoolStore,
        redis_client: redis.asyncio.Redis,
        *,
        token_factory: Callable[[], str] = default_token_factory,
        wake_on_ready: bool = True,
        poll_initial: float = 0.05,
        poll_max: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        coalesce: bool = True,
    ) -> None:
        self.store = store
        self.clock = store.clock
        self.redis = redis_client
        self.core = LeaseCore(store, token_factory=token_factory, wake_on_ready=wake_on_ready,
                              poll_initial=poll_initial, poll_max=poll_max)
        self.io = AsyncIO(redis_client, store.prefix, store.clock, sleep=sleep, coalesce=coalesce)

    def __repr__(self) -> str:
        return f"AsyncLeases(store={self.store!r})"

    async def try_lease(
        self,
        pool: str,
        *,
        ttl: float,
        min_remaining: float = 0.0,
        holder: str | None = None,
        session_key_hash: str | None = None,
    ) -> Lease | None:
        """One atomic attempt; ``None`` when no READY container has ``min_remaining`` s of life."""
        return await self.io.run(self.core.try_lease(pool, ttl=ttl, min_remaining=min_remaining, holder=holder,
                                                     session_key_hash=session_key_hash))

    async def lease(
        self,
        pool: str,
        *,
        ttl: float,
        min_remaining: float = 0.0,
        wait_seconds: float = 0.0,
        holder: str | None = None,
        session_key_hash: str | None = None,
    ) -> Lease:
        """As :meth:`Leases.lease <hearth.pool.leases.Leases.lease>`; waits without blocking the loop."""
        return await self.io.run(self.core.lease(pool, ttl=ttl, min_remaining=min_remaining,
                                                 wait_seconds=wait_seconds, holder=holder,
                                                 session_key_hash=session_key_hash))

    async def release(
        self, ref: str, lease_id: str | None = None, *, token: int | None = None, reuse: bool = False
    ) -> ReleasedLease:
        """As :meth:`Leases.release <hearth.pool.leases.Leases.release>`."""
        return await self.io.run(self.core.release(ref, lease_id, token=token, reuse=reuse))

    async def renew(self, lease_id: str, ttl: float, *, token: int | None = None) -> Lease:
        """Extend a held lease to ``now + ttl``; LeaseError if it is no longer held."""
        return await self.io.run(self.core.renew(lease_id, ttl, token=token))

    async def lapsed(self, now: float | None = None) -> list[ContainerRecord]:
        """LEASED records whose lease expired before ``now`` (default: the clock), any pool."""
        return await self.io.run(self.core.lapsed(now))

    async def reclaim(self, name: str, lease_id: str) -> ContainerRecord:
        """Take a lapsed lease back (LEASED -> HARVESTING) if ``lease_id`` still holds it."""
        return await self.io.run(self.core.reclaim(name, lease_id))

    async def get(self, name: str) -> ContainerRecord | None:
        """The record of ``name`` (as ``PoolStore.get``), read on the async client."""
        return await self.io.run(self.core.get(name))

    async def by_container_id(self, container_id: str) -> ContainerRecord | None:
        return await self.io.run(self.core.by_container_id(container_id))

    @asynccontextmanager
    async def leased(
        self,
        pool: str,
        *,
        ttl: float,
        min_remaining: float = 0.0,
        wait_seconds: float = 0.0,
        holder: str | None = None,
        reuse: bool = False,
    ) -> AsyncIterator[Lease]:
        """Released on exit, as :meth:`Leases.leased <hearth.pool.leases.Leases.leased>`."""
        got = await self.lease(pool, ttl=ttl, min_remaining=min_remaining, wait_seconds=wait_seconds, holder=holder)
        try:
            yield got
        except BaseException:
            await self.io.run(self.core.end_leased(got, failed=True))
            raise
        await self.io.run(self.core.end_leased(got, failed=False, reuse=reuse))
