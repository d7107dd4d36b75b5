"""Sessions for asyncio programs: the async face of :class:`~hearth.sessions.core.SessionsCore`.

Why: an asyncio app (FastAPI, the Agents SDK, ``AsyncOpenAI``) serving a conversation per key
calls a session lease at every turn; the sync ``Sessions`` would block its loop on each Redis round
trip. ``AsyncSessions`` runs the one session core (same records, lock, Lua scripts, lease steps,
decisions and errors) on ``redis.asyncio``. The rare blocking work of a session, a harvest, a
restore or a retrieve of the container on the sync API client and storage, is the core's
``Offload`` steps, awaited on a worker thread; the common turn (same key, container alive) is
Redis only and never leaves the loop.

Cancellation: each call is shielded (``asyncio.shield``). A caller cancelled mid-lease (a client
that hung up) leaves the call to finish, so the session lock is given back and a container taken
for the key stays bound to it (the next turn gets it), instead of a lock held until its TTL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio

from hearth.files.lock import TokenFactory
from hearth.pool.effects import AsyncEnqueue, AsyncIO, Steps
from hearth.runtime import Runtime
from hearth.sessions.core import SessionsCore
from hearth.sessions.records import SessionEnd, SessionLease, SessionRecord, session_hash
from hearth.sessions.responses import SessionSave

T = TypeVar("T")


class AsyncSessions:
    """``await sessions.lease(pool, key)``, ``await sessions.after_response(key, response)``,
    ``await sessions.end_session(key)``: as :class:`~hearth.sessions.core.Sessions`, on ``redis_client``.

    ``enqueue``: ``await enqueue(task_name, args)`` sends Hearth's tasks (the refill request, the
    retire, the session harvest) without blocking the loop. ``runtime`` supplies the key layout,
    clock, settings, the pools file and the sync API client the offloaded transfers use.
    """

    def __init__(
        self,
        runtime: Runtime,
        redis_client: redis.asyncio.Redis,
        enqueue: AsyncEnqueue,
        *,
        verify_after: float = 30.0,
        lock_ttl: float = 300.0,
        lock_wait: float = 300.0,
        harvest_every: float = 2.0,
        tokens: TokenFactory | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.rt = runtime
        self.redis = redis_client
        self.core = SessionsCore(runtime, verify_after=verify_after, lock_ttl=lock_ttl, lock_wait=lock_wait,
                                 harvest_every=harvest_every, tokens=tokens)
        self.io = AsyncIO(redis_client, runtime.store.prefix, runtime.clock, enqueue=enqueue, sleep=sleep)

    def __repr__(self) -> str:
        return f"AsyncSessions(runtime={self.rt!r})"

    async def _run(self, steps: Steps[T]) -> T:
        return await asyncio.shield(self.io.run(steps))

    async def get(self, session: str) -> SessionRecord | None:
        """The record of a session key (None when unknown or expired from Redis)."""
        return await self.io.run(self.core.records.load_steps(session_hash(session)))

    async def lease(self, pool: str, session: str, *, verify: bool | None = None,
                    wait: float | None = None) -> SessionLease:
        """As :meth:`Sessions.lease <hearth.sessions.core.Sessions.lease>`: the same container while it
        lives, else a fresh one with the session's files restored; waits for a refill off the loop."""
        return await self._run(self.core.lease(pool, session, verify=verify, wait=wait))

    async def after_response(self, session: str, response: Any = None) -> SessionSave:
        """As :meth:`Sessions.after_response <hearth.sessions.core.Sessions.after_response>`."""
        return await self.save_after(session_hash(session), response)

    async def save_after(self, sid: str, response: Any = None) -> SessionSave:
        return await self._run(self.core.save_after(sid, response))

    async def end_session(self, session: str, *, harvest: bool = True, forget: bool = False) -> SessionEnd:
        """As :meth:`Sessions.end_session <hearth.sessions.core.Sessions.end_session>`."""
        return await self.end(session_hash(session), harvest=harvest, forget=forget)

    async def end(self, sid: str, *, harvest: bool = True, forget: bool = False) -> SessionEnd:
        return await self._run(self.core.end(sid, harvest=harvest, forget=forget))
