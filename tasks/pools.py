"""The application's side of Hearth: lease a ready container, give it back.

``HearthPools`` is what a threaded app holds (one per process), ``AsyncHearthPools``
(``tasks/async_pools.py``) what an asyncio app holds::

    pools = HearthPools.from_settings()
    with pools.leased("analysts") as lease:
        client.responses.create(..., tools=[{"type": "code_interpreter", "container": lease.container_id}])

A lease is one Redis script (milliseconds). Releasing moves the record and enqueues the harvest
and retire on the workers, so the app never waits for file transfers. When the pool is empty the
lease asks for an immediate reconcile and waits for the refill, up to the pool's ``wait_seconds``.

Both faces run one core, :class:`PoolsCore` (sans IO, on top of ``hearth.pool.leases.LeaseCore``):
the faces only say how Redis is called and how a task is enqueued.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from hearth.errors import ConfigError, HearthError, LeaseError, PoolEmpty
from hearth.events import log_event
from hearth.pool.effects import Batch, Command, Enqueue, Steps, SyncIO
from hearth.pool.leases import Lease, LeaseCore, ReleasedLease
from hearth.pool.model import State
from hearth.pool.wanted import FillRequests
from hearth.runtime import Runtime
from hearth.sessions import Sessions
from settings import Settings
from tasks.app import create_app

log = logging.getLogger(__name__)


class PoolsCore:
    """What ``HearthPools`` and ``AsyncHearthPools`` do, as steps (``hearth.pool.effects``): the pool's
    lease rules, asking for a refill, release and its enqueue, metrics and log lines."""

    def __init__(self, runtime: Runtime, leases: LeaseCore) -> None:
        self.rt = runtime
        self.leases = leases

    def lease(self, pool: str, *, ttl: float | None, wait: float | None, holder: str | None) -> Steps[Lease]:
        spec = self.rt.pool(pool)
        rules = spec.lease
        ttl = float(ttl if ttl is not None else rules.ttl_seconds)
        wait = float(wait if wait is not None else rules.wait_seconds)
        minimum = rules.min_remaining_on_claim_seconds
        started = self.rt.clock.now()
        costs = self.rt.costs
        got = yield from self.leases.try_lease(pool, ttl=ttl, min_remaining=minimum, holder=holder)
        if got is None:
            refused = yield Command("get", (costs.refusal_key(pool),))
            if refused is not None:  # a hard budget: waiting would be for nothing
                self.rt.observer.lease(pool, self.rt.clock.now() - started, "empty")
                raise PoolEmpty(f"pool {pool!r}: {refused.decode() if isinstance(refused, bytes) else refused}")
            # Registered while waiting, so a budget keeps a container for this caller; then the
            # fill request, so the reconcile it starts already counts this caller.
            waiting_key, ident = costs.demand.key(pool, "waiting"), secrets.token_hex(8)
            yield Command("zadd", (waiting_key, {ident: started + wait}))
            try:
                yield from FillRequests(self.rt.store).ask_steps(pool)
                got = yield from self.leases.lease(pool, ttl=ttl, min_remaining=minimum, wait_seconds=wait,
                                                   holder=holder)
            except PoolEmpty:
                self.rt.observer.lease(pool, self.rt.clock.now() - started, "empty")
                raise
            finally:
                yield Command("zrem", (waiting_key, ident))
        # The counters are independent writes: one round trip for all (a lease is two round trips).
        yield Batch(tuple(Command(command, args) for command, args in costs.lease_counters(spec, self.rt.clock.now())))
        self.rt.observer.lease(pool, self.rt.clock.now() - started, "taken")
        log_event(log, "lease.taken", pool=pool, container_id=got.container_id, lease_id=got.lease_id)
        return got

    def release(self, container_id: str, lease_id: str, *, reuse: bool | None) -> Steps[ReleasedLease]:
        record = yield from self.leases.by_container_id(container_id)
        if record is None:
            raise HearthError(f"container {container_id} is not one of Hearth's")
        # A pool that left the pools file still releases: harvest and retire, the safe defaults.
        rules = None
        with contextlib.suppress(ConfigError):
            rules = self.rt.pool(record.pool)
        if reuse is None:
            reuse = rules is not None and rules.lease.on_release == "reuse"
        # Both ways go through HARVESTING: a reused container is harvested and cleaned (recycle)
        # before the next lessee can take it, never handed over with the last lessee's files.
        try:
            released = yield from self.leases.release(container_id, lease_id, reuse=False)
        except LeaseError:
            # A retried release whose first answer was lost: already on its way, say so again.
            again = yield from self.leases.by_container_id(container_id)
            if again is None or again.lease_id != lease_id or again.state not in (State.HARVESTING, State.DELETING):
                raise
            return ReleasedLease(pool=again.pool, name=again.name, container_id=container_id, lease_id=lease_id,
                                 token=again.token, state=again.state)
        yield Enqueue("hearth.recycle" if reuse else "hearth.retire", [released.name])
        log_event(log, "lease.released", pool=released.pool, container_id=container_id, lease_id=lease_id)
        return released

    def end_leased(self, got: Lease, *, failed: bool) -> Steps[None]:
        """Leaving a ``leased`` block: released with the pool's rule; after an error, harvested and
        retired (never reused), and a failing release must not hide the app's own exception."""
        if not failed:
            yield from self.release(got.container_id, got.lease_id, reuse=None)
            return
        try:
            yield from self.release(got.container_id, got.lease_id, reuse=False)
        except HearthError as exc:
            log.warning("lease %s: release after an error failed: %s", got.lease_id, exc)


class HearthPools:
    """Leases for applications: ``lease``/``release`` or the ``leased`` context manager (sync face)."""

    def __init__(self, runtime: Runtime, celery_app: Celery) -> None:
        self.rt = runtime
        self.celery = celery_app
        self.core = PoolsCore(runtime, runtime.leases.core)
        self.io = SyncIO(runtime.redis, runtime.store.prefix, runtime.clock, enqueue=self._send)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> HearthPools:
        settings = settings or Settings()
        return cls(Runtime.from_settings(settings), create_app(settings))

    def close(self) -> None:
        self.rt.close()

    def __enter__(self) -> HearthPools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, name: str, args: list[Any]) -> None:
        self.celery.send_task(name, args=args)

    def sessions(self, **options: Any) -> Sessions:
        """Sticky leases per conversation key on this process's runtime, enqueuing through its Celery
        app; ``options`` as :class:`~hearth.sessions.Sessions` (``verify_after``...)."""
        return Sessions(self.rt, self._send, **options)

    def lease(self, pool: str, *, ttl: float | None = None, wait: float | None = None,
              holder: str | None = None) -> Lease:
        """Take the ready container of ``pool`` with the most life left (at least the pool's
        ``min_remaining_on_claim_seconds``); PoolEmpty if none is ready within ``wait`` seconds."""
        return self.io.run(self.core.lease(pool, ttl=ttl, wait=wait, holder=holder))

    def release(self, container_id: str, lease_id: str, *, reuse: bool | None = None) -> ReleasedLease:
        """Give the container back; its outputs are harvested and it is retired (or reused)."""
        return self.io.run(self.core.release(container_id, lease_id, reuse=reuse))

    @contextmanager
    def leased(self, pool: str, *, ttl: float | None = None, wait: float | None = None) -> Iterator[Lease]:
        """Lease for the duration of a ``with`` block; released (harvested, retired) on exit."""
        got = self.lease(pool, ttl=ttl, wait=wait)
        try:
            yield got
        except BaseException:
            self.io.run(self.core.end_leased(got, failed=True))
            raise
        self.io.run(self.core.end_leased(got, failed=False))


def lease_json(lease: Lease) -> dict[str, Any]:
    """The JSON an app (or ``hearth lease --json``) sees."""
    return {
        "container_id": lease.container_id,
        "name": lease.name,
        "lease_id": lease.lease_id,
        "token": lease.token,
        "expires_at": lease.expires_at,
        "pool": lease.pool,
    }
