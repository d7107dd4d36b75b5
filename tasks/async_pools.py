"""The application's side of Hearth for asyncio programs: ``AsyncHearthPools``.

Why: ``HearthPools`` blocks its caller on every Redis round trip, so an asyncio app (FastAPI, the
Agents SDK, ``AsyncOpenAI``) had to hop to a thread for each lease, and a thread pool queues (the
issue measured p99 31.9 ms with 32 threads). This face runs the same :class:`~tasks.pools.PoolsCore`
(same Lua scripts, rules, errors, log lines and metrics) on ``redis.asyncio``::

    pools = AsyncHearthPools.from_settings()        # at app start-up (e.g. a FastAPI lifespan)
    async with pools.leased("analysts") as lease:
        await client.responses.create(..., tools=[{"type": "code_interpreter", "container": lease.container_id}])
    await pools.aclose()                            # at shutdown

    sessions = pools.sessions()                     # a container per conversation key
    turn = await sessions.lease("analysts", conversation_id)

Enqueuing Hearth's tasks (the refill request, the retire or recycle after a release): Celery's
``send_task`` is blocking (a Redis round trip, plus the result backend's subscribe, under the
GIL). It runs on a small dedicated thread pool (``enqueue_threads``, default 2), awaited with
``run_in_executor``, so the loop never blocks on it. That keeps Celery's own message building,
routing (the keepalive queue), sent-events and result subscription exactly as for every other
sender, where publishing kombu-format messages on ``redis.asyncio`` would copy kombu's transport
internals (bindings lookup, priority queues, envelope) and drift with every kombu release. Enqueues
are rare next to leases (one per release; a refill request at most once per 2 s per Redis), so a
thread hop there costs nothing the lease path pays; ``bench/leases.py --async`` measures it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio
from celery import Celery

from hearth.pool.async_leases import AsyncLeases
from hearth.pool.effects import AsyncIO
from hearth.pool.leases import Lease, ReleasedLease
from hearth.runtime import Runtime
from hearth.sessions import AsyncSessions
from settings import Settings
from tasks.app import create_app
from tasks.pools import PoolsCore


class AsyncHearthPools:
    """Leases for asyncio apps: ``await lease``/``await release`` or ``async with leased(...)``.

    ``runtime`` supplies settings, the pools file, the clock, the observer and the key layout; all
    Redis IO goes through ``redis_client`` (``redis.asyncio``). The runtime's sync Redis client is
    only read if the pools file on disk is unreadable and no good copy is cached (a rare fallback).
    Build it at start-up, ``await aclose()`` at shutdown; one per process and event loop.
    """

    def __init__(
        self,
        runtime: Runtime,
        redis_client: redis.asyncio.Redis,
        celery_app: Celery,
        *,
        enqueue_threads: int = 2,
        coalesce: bool = True,
    ) -> None:
        self.rt = runtime
        self.redis = redis_client
        self.celery = celery_app
        self.leases = AsyncLeases(runtime.store, redis_client, coalesce=coalesce)
        self.core = PoolsCore(runtime, self.leases.core)
        self.io = AsyncIO(redis_client, runtime.store.prefix, runtime.clock, enqueue=self._send, coalesce=coalesce)
        self._executor = ThreadPoolExecutor(max_workers=enqueue_threads, thread_name_prefix="hearth-enqueue")

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> AsyncHearthPools:
        settings = settings or Settings()
        runtime = Runtime.from_settings(settings)  # a ConfigError here if no Redis is configured
        url = settings.resolved_redis_url
        assert url is not None
        # The sync client's timeouts: a partitioned Redis must raise, not hang a request.
        client = redis.asyncio.Redis.from_url(url, health_check_interval=30, socket_connect_timeout=5,
                                              socket_timeout=30)
        return cls(runtime, client, create_app(settings), **kwargs)

    def __repr__(self) -> str:
        return f"AsyncHearthPools({self.rt!r})"

    async def aclose(self) -> None:
        await self.redis.aclose()
        # Waits for enqueues in flight (a release's retire must not be dropped), off the loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.rt.close()

    async def __aenter__(self) -> AsyncHearthPools:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, name: str, args: list[Any]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, functools.partial(self.celery.send_task, name, args=args))

    def sessions(self, **options: Any) -> AsyncSessions:
        """Sticky leases per conversation key on the same Redis client and enqueue executor;
        ``options`` as :class:`~hearth.sessions.AsyncSessions` (``verify_after``...)."""
        return AsyncSessions(self.rt, self.redis, self._send, **options)

    async def lease(self, pool: str, *, ttl: float | None = None, wait: float | None = None,
                    holder: str | None = None) -> Lease:
        """As :meth:`HearthPools.lease <tasks.pools.HearthPools.lease>`; waits for a refill without
        blocking the event loop."""
        return await self.io.run(self.core.lease(pool, ttl=ttl, wait=wait, holder=holder))

    async def release(self, container_id: str, lease_id: str, *, reuse: bool | None = None) -> ReleasedLease:
        """As :meth:`HearthPools.release <tasks.pools.HearthPools.release>`."""
        return await self.io.run(self.core.release(container_id, lease_id, reuse=reuse))

    @asynccontextmanager
    async def leased(self, pool: str, *, ttl: float | None = None, wait: float | None = None) -> AsyncIterator[Lease]:
        """``async with pools.leased("analysts") as lease:``; released (harvested, retired) on exit."""
        got = await self.lease(pool, ttl=ttl, wait=wait)
        try:
            yield got
        except BaseException:
            await self.io.run(self.core.end_leased(got, failed=True))
            raise
        await self.io.run(self.core.end_leased(got, failed=False))
