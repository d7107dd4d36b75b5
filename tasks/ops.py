"""Hearth's Celery tasks: thin adapters over ``hearth`` (JSON ids in, JSON out, no logic here).

Apps enqueue them by name (``hearth.lease``, ``hearth.harvest``, ...) without importing Hearth.
Every task is idempotent (``acks_late``, requeued when a worker dies); a temporary
``HearthError`` is retried with capped, jittered exponential backoff, a permanent one fails.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task, shared_task

from hearth.errors import HearthError, RateLimited
from hearth.operations import Operations
from hearth.planner import reconcile_wanted, tick
from hearth.pool.wanted import FillRequests
from tasks.runtime import current_runtime

T = TypeVar("T")
MAX_RETRIES = 12
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


def backoff(retries: int, exc: HearthError) -> float:
    """Full-jitter exponential backoff; a server's Retry-After is a floor."""
    delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**retries))
    if isinstance(exc, RateLimited) and exc.retry_after:
        delay = max(delay, exc.retry_after)
    return delay


def run(task: Task, fn: Callable[[], T]) -> T:
    """Run ``fn``; retry the task on a temporary error, fail it on a permanent one."""
    try:
        return fn()
    except HearthError as exc:
        if exc.temporary and task.request.retries < MAX_RETRIES:
            raise task.retry(exc=exc, countdown=backoff(task.request.retries, exc)) from exc
        raise


def enqueue(name: str, args: list[Any]) -> None:
    """How the domain's applier sends work: by task name, JSON args."""
    from celery import current_app

    current_app.send_task(name, args=args)


COMMON: dict[str, Any] = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "max_retries": MAX_RETRIES}


@shared_task(name="hearth.ping")
def ping() -> dict[str, Any]:
    """Liveness of a worker: which host and process answered."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


# No result stored: nothing reads a provision's result (its outcome is the record in Redis), and
# storing it cost a fill two result writes per container (STARTED and SUCCESS, each a read, a write
# and a publish) on the worker's Redis connection pool. Task events and the log line stay.
@shared_task(name="hearth.provision", ignore_result=True, **COMMON)
def provision(self: Task, name: str) -> dict[str, Any]:
    return run(self, lambda: Operations(current_runtime()).provision(name).to_json())


@shared_task(name="hearth.refresh", **COMMON)
def refresh(self: Task, name: str) -> dict[str, Any]:
    return run(self, lambda: Operations(current_runtime()).refresh(name).to_json())


@shared_task(name="hearth.retire", **COMMON)
def retire(self: Task, name: str) -> dict[str, Any]:
    return run(self, lambda: Operations(current_runtime()).retire(name).to_json())


@shared_task(name="hearth.recycle", **COMMON)
def recycle(self: Task, name: str) -> dict[str, Any]:
    """A container released for reuse: harvest, remove the lessee's files, back to READY."""
    return run(self, lambda: Operations(current_runtime()).recycle(name).to_json())


@shared_task(name="hearth.adopt", **COMMON)
def adopt(self: Task, name: str) -> dict[str, Any]:
    return run(self, lambda: Operations(current_runtime()).adopt(name).to_json())


@shared_task(name="hearth.delete_orphan", **COMMON)
def delete_orphan(self: Task, container_id: str, name: str) -> dict[str, Any]:
    return run(self, lambda: Operations(current_runtime()).delete_orphan(container_id, name).to_json())


@shared_task(name="hearth.gc_staged", **COMMON)
def gc_staged(self: Task) -> dict[str, Any]:
    """Delete staged inputs (Files-API copies of pool inputs) that no pool has used for the grace."""
    return run(self, lambda: Operations(current_runtime()).gc_staged())


@shared_task(name="hearth.harvest", **COMMON)
def harvest(self: Task, container_id: str, to: str | None = None) -> dict[str, Any]:
    """Copy a container's outputs to storage; apps call it by name with a container id."""

    def go() -> dict[str, Any]:
        report = Operations(current_runtime()).harvest(container_id, to=to)
        if not report.complete and not report.expired:
            raise HearthError(f"harvest of {container_id}: {report.failures} files failed", temporary=True)
        return report.summary()

    return run(self, go)


LOCK_RETRY_SECONDS = 0.25  # another planner holds the lock: it serves the request when done; look again soon
LOCK_RETRIES = 480  # two minutes of a busy lock, then the heartbeat's next tick has it anyway


@shared_task(name="hearth.reconcile", **COMMON)
def reconcile(self: Task) -> dict[str, Any]:
    """One reconcile of every pool, on demand (the heartbeat does the same every tick)."""

    def go() -> dict[str, Any]:
        rt = current_runtime()
        applied = tick(rt, enqueue)
        if applied is None:  # a tick is running: ask for every pool, so it is not lost to that tick
            FillRequests(rt.store).ask(rt.pools().pools)
            applied = reconcile_wanted(rt, enqueue)
        return {"ran": applied is not None, "applied": applied or []}

    return run(self, go)


@shared_task(name="hearth.reconcile_pool", **COMMON)
def reconcile_pool(self: Task, pool: str) -> dict[str, Any]:
    """Serve fill requests now (``hearth.pool.wanted``): a lease on an empty pool, ``hearth fill``,
    an edited pools file. Deduplicated per pool by the asker; every wanted pool is planned."""

    def go() -> dict[str, Any]:
        rt = current_runtime()
        FillRequests(rt.store).started(pool)
        applied = reconcile_wanted(rt, enqueue)
        if applied is None:
            raise self.retry(countdown=LOCK_RETRY_SECONDS, max_retries=LOCK_RETRIES)
        return {"pool": pool, "applied": applied}

    return run(self, go)


@shared_task(name="hearth.lease", bind=True)
def lease(self: Task, pool: str, ttl: float | None = None, wait: float | None = None) -> dict[str, Any]:
    """Lease a ready container of ``pool`` for an app that only speaks Celery (returns its ids)."""
    from tasks.pools import HearthPools, lease_json

    pools = HearthPools(current_runtime(), self.app)
    return lease_json(pools.lease(pool, ttl=ttl, wait=wait))


@shared_task(name="hearth.release", bind=True)
def release(self: Task, container_id: str, lease_id: str, reuse: bool | None = None) -> dict[str, Any]:
    """Release a lease taken with ``hearth.lease``; harvest and retire follow on the workers."""
    from tasks.pools import HearthPools

    released = HearthPools(current_runtime(), self.app).release(container_id, lease_id, reuse=reuse)
    return {"container_id": container_id, "name": released.name, "state": released.state.value}
