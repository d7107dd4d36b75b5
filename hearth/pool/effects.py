"""Sans-IO plumbing: the lease logic is written once and run by a sync or an async driver.

Why: applications are threads (``HearthPools``) or asyncio programs (``AsyncHearthPools``), and the
lease logic (which Lua script with which arguments, what its reply means, when to wait for a
refill, when to give up, when to ask the workers for what) must be the same for both, with no copy.
So that logic is written as generators that *yield* what they need done and receive the result:

    raw = yield Script(scripts.LEASE, (pool, now, ...))     # run a Lua script of scripts.py
    pool = yield Command("hget", (key, name))               # one Redis command
    yield Batch((Command("hincrby", ...), ...))             # several, one round trip
    yield Pause(0.05, wake_key)                             # wait for a refill (BLPOP) or sleep
    yield Enqueue("hearth.retire", [name])                  # hand a task to the workers
    report = yield Offload(harvest, (rec,))                 # blocking work that is not Redis

They never touch a socket. ``SyncIO`` carries the effects out on ``redis.Redis`` (the calling
thread blocks), ``AsyncIO`` on ``redis.asyncio.Redis`` (the event loop never blocks): the split of
h11 and httpx, where the protocol is one object and each face only moves bytes. A driver throws
every error of an effect back into the generator at the ``yield``, so the logic sees (and may
catch) it where it asked, and Redis errors arrive as :class:`~hearth.errors.StateStoreError` from
both faces alike.

``Offload`` is for the few steps that are blocking work of another kind (a harvest or a restore:
file transfers on the sync API client and fsspec storage, which have no async face): the sync
driver calls it in place, the async one awaits it on a worker thread (``asyncio.to_thread``), so
the loop stays free while the decisions around it stay in the one sans-IO text.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import redis.asyncio

from hearth.clock import Clock, ManualClock
from hearth.errors import StateStoreError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Script:
    """Run one of ``scripts.py``'s Lua scripts; ``args`` without the key prefix (the driver adds it)."""

    source: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis command by its redis-py method name, e.g. ``Command("hget", (key, field))``."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Batch:
    """Several commands in one round trip (a non-transactional pipeline); the reply is their replies."""

    commands: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait up to ``seconds``; with ``wake_key``, an entry pushed on that list ends the wait early."""

    seconds: float
    wake_key: str | None = None


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Hand a task (by name, JSON args) to the workers; the face decides how (Celery, a test's list)."""

    name: str
    args: list[Any]


@dataclass(frozen=True, slots=True)
class Offload:
    """Call ``fn(*args)``, blocking work that is not Redis (file transfers); its return value is the reply."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


Effect = Script | Command | Batch | Pause | Enqueue | Offload
#: A piece of sans-IO logic: yields effects, receives their results, returns a ``T``.
Steps = Generator[Effect, Any, T]

SyncEnqueue = Callable[[str, list[Any]], None]
AsyncEnqueue = Callable[[str, list[Any]], Awaitable[None]]


def _no_enqueue(name: str, args: list[Any]) -> None:
    raise RuntimeError(f"this driver cannot enqueue tasks ({name})")


async def _no_enqueue_async(name: str, args: list[Any]) -> None:
    _no_enqueue(name, args)


@dataclass(frozen=True, slots=True)
class _Done:
    value: Any


@dataclass(slots=True)
class _Outcome:
    """What the last effect gave: a reply to send into the steps, or an error to throw in."""

    reply: Any = None
    error: BaseException | None = None

    def fail(self, exc: Exception) -> None:
        if isinstance(exc, redis.RedisError):
            # As PoolStore translates them: both faces raise the project's error, never redis-py's.
            self.error = StateStoreError(f"redis: {type(exc).__name__}: {exc}")
            self.error.__cause__ = exc
        else:
            self.error = exc

    def resume(self, steps: Steps[Any]) -> Effect | _Done:
        try:
            return steps.send(self.reply) if self.error is None else steps.throw(self.error)
        except StopIteration as done:
            return _Done(done.value)


# BLPOP takes whole or fractional seconds; 0 would mean "forever".
_MIN_BLOCK = 0.01


class SyncIO:
    """Runs :data:`Steps` on a ``redis.Redis`` client; the calling thread blocks on each effect."""

    def __init__(
        self, redis_client: redis.Redis, prefix: str, clock: Clock, *, enqueue: SyncEnqueue = _no_enqueue
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.clock = clock
        self._enqueue = enqueue
        self._scripts: dict[str, Any] = {}

    def run(self, steps: Steps[T]) -> T:
        outcome = _Outcome()
        while not isinstance(effect := outcome.resume(steps), _Done):
            outcome = _Outcome()
            try:
                outcome.reply = self._do(effect)
            except Exception as exc:
                outcome.fail(exc)
        return effect.value

    def _do(self, effect: Effect) -> Any:
        if isinstance(effect, Script):
            script = self._scripts.get(effect.source)
            if script is None:
                script = self._scripts[effect.source] = self.redis.register_script(effect.source)
            return script(keys=[], args=[self.prefix, *effect.args])
        if isinstance(effect, Command):
            return getattr(self.redis, effect.name)(*effect.args, **effect.kwargs)
        if isinstance(effect, Batch):
            with self.redis.pipeline(transaction=False) as pipe:
                for command in effect.commands:
                    getattr(pipe, command.name)(*command.args, **command.kwargs)
                return pipe.execute()
        if isinstance(effect, Pause):
            if effect.wake_key is None:
                self.clock.sleep(effect.seconds)
                return None
            return self.redis.blpop([effect.wake_key], timeout=max(effect.seconds, _MIN_BLOCK))
        if isinstance(effect, Offload):
            return effect.fn(*effect.args)
        self._enqueue(effect.name, effect.args)
        return None


class AsyncIO:
    """Runs :data:`Steps` on a ``redis.asyncio.Redis`` client; only the awaiting coroutine waits.

    ``sleep`` is how a plain :class:`Pause` waits: ``asyncio.sleep`` by default, or, with a
    :class:`~hearth.clock.ManualClock`, advancing that clock (as its sync ``sleep`` does) so a test's
    waits take no wall time. ``coalesce`` (default on): the scripts and commands of coroutines that
    are ready at the same time share one pipelined round trip (:class:`_Coalescer`).
    """

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        prefix: str,
        clock: Clock,
        *,
        enqueue: AsyncEnqueue = _no_enqueue_async,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        coalesce: bool = True,
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.clock = clock
        self._enqueue = enqueue
        self._sleep = sleep or _default_sleep(clock)
        self._scripts: dict[str, Any] = {}
        self._coalescer = _Coalescer(redis_client) if coalesce else None
        self._shas: dict[str, str] = {}

    async def run(self, steps: Steps[T]) -> T:
        outcome = _Outcome()
        while not isinstance(effect := outcome.resume(steps), _Done):
            outcome = _Outcome()
            try:
                outcome.reply = await self._do(effect)
            except Exception as exc:
                outcome.fail(exc)
        return effect.value

    async def _do(self, effect: Effect) -> Any:
        if self._coalescer is not None and isinstance(effect, Script | Command | Batch):
            return await self._coalesced(self._coalescer, effect)
        if isinstance(effect, Script):
            script = self._scripts.get(effect.source)
            if script is None:
                script = self._scripts[effect.source] = self.redis.register_script(effect.source)
            return await script(keys=[], args=[self.prefix, *effect.args])
        if isinstance(effect, Command):
            return await getattr(self.redis, effect.name)(*effect.args, **effect.kwargs)
        if isinstance(effect, Batch):
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in effect.commands:
                    getattr(pipe, command.name)(*command.args, **command.kwargs)
                return await pipe.execute()
        if isinstance(effect, Pause):
            if effect.wake_key is None:
                await self._sleep(effect.seconds)
                return None
            return await self.redis.blpop([effect.wake_key], timeout=max(effect.seconds, _MIN_BLOCK))
        if isinstance(effect, Offload):
            return await asyncio.to_thread(effect.fn, *effect.args)
        await self._enqueue(effect.name, effect.args)
        return None


    async def _coalesced(self, coalescer: _Coalescer, effect: Script | Command | Batch) -> Any:
        if isinstance(effect, Batch):
            return await coalescer.call([_adder(c) for c in effect.commands], many=True)
        if isinstance(effect, Command):
            return await coalescer.call([_adder(effect)])
        sha = self._shas.get(effect.source)
        if sha is None:
            sha = self._shas[effect.source] = hashlib.sha1(effect.source.encode()).hexdigest()  # its id in Redis
        args = (self.prefix, *effect.args)
        try:
            return await coalescer.call([lambda pipe: pipe.evalsha(sha, 0, *args)])
        except redis.exceptions.NoScriptError:
            # First use on this server (or it restarted): load it (the loads of concurrent callers
            # share a round trip too), then run it as any call.
            await coalescer.call([lambda pipe: pipe.script_load(effect.source)])
            return await coalescer.call([lambda pipe: pipe.evalsha(sha, 0, *args)])


def _adder(command: Command) -> Callable[[Any], Any]:
    return lambda pipe: getattr(pipe, command.name)(*command.args, **command.kwargs)


class _Coalescer:
    """Auto-pipelining: the Redis calls of every coroutine of the loop that are ready together go in one
    non-transactional pipeline, one round trip, instead of one round trip (and one pooled connection)
    each.

    Why: under concurrency, an asyncio app's lease latency is queueing in its one thread, and the
    per-round-trip cost (a connection taken from the pool, a socket write, a read, a wake-up) is most
    of it; 32 coroutines leasing at once then pay about one round trip, not 32. Each call still gets
    its own reply or error. Calls made while a pipeline is in flight form the next one, sent at once
    on another connection, up to ``in_flight`` pipelines at a time (so a slow reply does not hold up
    the next batch). A blocking command (BLPOP) never goes here. A caller cancelled after its call
    was queued does not unsend it (as with any sent command).
    """

    def __init__(self, client: redis.asyncio.Redis, in_flight: int = 4) -> None:
        self.client = client
        self.waiting: list[tuple[list[Callable[[Any], Any]], asyncio.Future[Any]]] = []
        self.scheduled = False
        self.slots = asyncio.Semaphore(in_flight)
        self.sending: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps weak ones)

    async def call(self, adds: list[Callable[[Any], Any]], *, many: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting.append((adds, future))
        if not self.scheduled:
            self.scheduled = True
            task = loop.create_task(self._send())
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)
        replies = await future
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies if many else replies[0]

    async def _send(self) -> None:
        async with self.slots:
            await asyncio.sleep(0)  # the other coroutines that are ready add their calls first
            batch, self.waiting, self.scheduled = self.waiting, [], False
            if not batch:
                return
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for adds, _ in batch:
                        for add in adds:
                            add(pipe)
                    replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            at = 0
            for adds, future in batch:
                mine, at = replies[at:at + len(adds)], at + len(adds)
                if not future.done():
                    future.set_result(mine)


def _default_sleep(clock: Clock) -> Callable[[float], Awaitable[None]]:
    if isinstance(clock, ManualClock):

        async def advance(seconds: float) -> None:
            clock.sleep(seconds)
            await asyncio.sleep(0)  # still a suspension point, as a real wait would be

        return advance
    return asyncio.sleep
