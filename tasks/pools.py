"""The application's side of Hearth: lease a ready container, give it back.

``HearthPools`` is what an app holds (one per process)::

    pools = HearthPools.from_settings()
    with pools.leased("analysts") as lease:
        client.responses.create(..., tools=[{"type": "code_interpreter", "container": lease.container_id}])

A lease is one Redis script (milliseconds). Releasing moves the record and enqueues the harvest
and retire on the workers, so the app never waits for file transfers. When the pool is empty the
lease asks for an immediate reconcile and waits for the refill, up to the pool's ``wait_seconds``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from hearth.errors import ConfigError, HearthError, LeaseError, PoolEmpty
from hearth.events import log_event
from hearth.pool.leases import Lease, ReleasedLease
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tasks.app import create_app

log = logging.getLogger(__name__)


class HearthPools:
    """Leases for applications: ``lease``/``release`` or the ``leased`` context manager."""

    def __init__(self, runtime: Runtime, celery_app: Celery) -> None:
        self.rt = runtime
        self.celery = celery_app

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

    def lease(self, pool: str, *, ttl: float | None = None, wait: float | None = None,
              holder: str | None = None) -> Lease:
        """Take the ready container of ``pool`` with the most life left (at least the pool's
        ``min_remaining_on_claim_seconds``); PoolEmpty if none is ready within ``wait`` seconds."""
        spec = self.rt.pool(pool)
        rules = spec.lease
        ttl = float(ttl if ttl is not None else rules.ttl_seconds)
        wait = float(wait if wait is not None else rules.wait_seconds)
        started = self.rt.clock.now()
        got = self.rt.leases.try_lease(pool, ttl=ttl, min_remaining=rules.min_remaining_on_claim_seconds,
                                       holder=holder)
        if got is None:
            refused = self.rt.costs.refusal(pool)
            if refused is not None:  # a hard budget: waiting would be for nothing
                self.rt.observer.lease(pool, self.rt.clock.now() - started, "empty")
                raise PoolEmpty(f"pool {pool!r}: {refused}")
            self._ask_for_refill()
            waiter = self.rt.costs.demand.waiting(pool, started + wait)
            try:
                got = self.rt.leases.lease(pool, ttl=ttl, min_remaining=rules.min_remaining_on_claim_seconds,
                                           wait_seconds=wait, holder=holder)
            except PoolEmpty:
                self.rt.observer.lease(pool, self.rt.clock.now() - started, "empty")
                raise
            finally:
                waiter.done()
        self.rt.costs.count_lease(spec, self.rt.clock.now())
        self.rt.observer.lease(pool, self.rt.clock.now() - started, "taken")
        log_event(log, "lease.taken", pool=pool, container_id=got.container_id, lease_id=got.lease_id)
        return got

    def _ask_for_refill(self) -> None:
        key = self.rt.store.key("pending", "reconcile")
        if self.rt.redis.set(key, "1", nx=True, px=2000):
            self.celery.send_task("hearth.reconcile")

    def release(self, container_id: str, lease_id: str, *, reuse: bool | None = None) -> ReleasedLease:
        """Give the container back; its outputs are harvested and it is retired (or reused)."""
        record = self.rt.store.by_container_id(container_id)
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
            released = self.rt.leases.release(container_id, lease_id, reuse=False)
        except LeaseError:
            # A retried release whose first answer was lost: already on its way, say so again.
            again = self.rt.store.by_container_id(container_id)
            if again is None or again.lease_id != lease_id or again.state not in (State.HARVESTING, State.DELETING):
                raise
            return ReleasedLease(pool=again.pool, name=again.name, container_id=container_id, lease_id=lease_id,
                                 token=again.token, state=again.state)
        self.celery.send_task("hearth.recycle" if reuse else "hearth.retire", args=[released.name])
        log_event(log, "lease.released", pool=released.pool, container_id=container_id, lease_id=lease_id)
        return released

    @contextmanager
    def leased(self, pool: str, *, ttl: float | None = None, wait: float | None = None) -> Iterator[Lease]:
        """Lease for the duration of a ``with`` block; released (harvested, retired) on exit."""
        got = self.lease(pool, ttl=ttl, wait=wait)
        try:
            yield got
        except BaseException:
            # A container whose user raised is harvested and retired, never handed to the next caller;
            # a failing release must not hide the app's own exception.
            try:
                self.release(got.container_id, got.lease_id, reuse=False)
            except HearthError as exc:
                log.warning("lease %s: release after an error failed: %s", got.lease_id, exc)
            raise
        self.release(got.container_id, got.lease_id)


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
