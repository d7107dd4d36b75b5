"""Lapsed leases are reclaimed (harvested, deleted, forgotten) and their late holder is refused; a
refresh that finds its container expired on the server marks it EXPIRED and the next ticks replace
it; a lease on an empty pool waits for the refill it asked for, bounded by ``max_total``.

Real redis-server, real Celery worker processes, the local API over a socket, the openai SDK. The
test's Runtime runs on an ``OffsetClock`` moved with the server's clock where Hearth must see time pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from celery import Celery

from hearth.clock import OffsetClock
from hearth.errors import LeaseError, PoolEmpty
from hearth.planner import Planner, tick
from hearth.pool.model import State
from hearth.pool.reconcile import Reclaim, Refresh
from hearth.runtime import Runtime
from tasks.pools import HearthPools
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import advance_both, celery_enqueue, remote_names, sdk, until

POOLS = """
version: 1
pools:
  eps:
    min_ready: 1
    max_total: {max_total}
    container: {{expires_after_minutes: 10}}
    keepalive: {{margin_seconds: 60}}
    lease: {{ttl_seconds: 120, min_remaining_on_claim_seconds: 0, wait_seconds: 30}}
    outputs: {{before_expiry_margin_seconds: 30}}
"""


def harvested(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name) if p.is_file()]


def ready(rt: Runtime) -> list[str]:
    return [r.container_id or "" for r in rt.store.records("eps", State.READY)]


def exists(client: openai.OpenAI, container_id: str) -> bool:
    return container_id in remote_names(client, "hearth-eps-")


def test_a_lapsed_lease_is_reclaimed_harvested_deleted_and_its_holder_refused(
    pools_env: PoolEnv, hearth_runtime: Runtime, hearth_clock: OffsetClock, local_api: LocalAPI,
    start_worker: Callable[..., WorkerProcess], celery_app: Celery,
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(POOLS.format(max_total=2))
    start_worker(pools_env.env)
    send = celery_enqueue(celery_app)
    until(lambda: len(ready(rt)) == 1, step=lambda: tick(rt, send), timeout=40, what="pool full")

    lease = rt.leases.lease("eps", ttl=120)
    local_api.write_assistant_file(lease.container_id, "/mnt/data/result.json", b'{"answer": 42}\n')
    advance_both(local_api, hearth_clock, 150)  # past the lease's ttl, far from the container's expiry

    (plan,) = Planner(rt).plan()
    assert [(a.name, a.lease_id) for a in plan.actions if isinstance(a, Reclaim)] == [(lease.name, lease.lease_id)]
    tick(rt, send)
    record = rt.store.get(lease.name)
    assert record is None or record.state in (State.HARVESTING, State.DELETING)
    with pytest.raises(LeaseError):  # the late holder: its lease is no longer held
        rt.leases.release(lease.container_id, lease.lease_id, token=lease.token)

    client = sdk(local_api)
    until(lambda: rt.store.get(lease.name) is None, timeout=40, what="record forgotten")
    files = harvested(pools_env.harvest_dir, "result.json")
    assert [p.read_bytes() for p in files] == [b'{"answer": 42}\n']
    assert not exists(client, lease.container_id)
    with pytest.raises(LeaseError):
        rt.leases.release(lease.container_id, lease.lease_id, token=lease.token)


def test_a_refresh_that_finds_its_container_expired_marks_it_and_the_next_ticks_replace_it(
    pools_env: PoolEnv, hearth_runtime: Runtime, hearth_clock: OffsetClock, local_api: LocalAPI,
    start_worker: Callable[..., WorkerProcess], celery_app: Celery,
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(POOLS.format(max_total=2))
    start_worker(pools_env.env)
    send = celery_enqueue(celery_app)
    until(lambda: len(ready(rt)) == 1, step=lambda: tick(rt, send), timeout=40, what="pool full")
    (record,) = rt.store.records("eps", State.READY)
    assert record.deadline is not None and record.container_id is not None

    # Hearth thinks 30 s are left (inside the 60 s keepalive margin); the server is 30 s past expiry.
    to_margin = record.deadline - hearth_clock.now() - 30
    advance_both(local_api, hearth_clock, to_margin)
    local_api.advance_clock(60)
    client = sdk(local_api)
    assert client.containers.retrieve(record.container_id).status == "expired"

    (plan,) = Planner(rt).plan()
    assert [a.name for a in plan.actions if isinstance(a, Refresh)] == [record.name]
    tick(rt, send)  # no remote listing: only the refresh can find out
    until(lambda: (r := rt.store.get(record.name)) is not None and r.state is State.EXPIRED,
          timeout=30, what="EXPIRED")

    def replaced() -> bool:
        return rt.store.get(record.name) is None and len(ready(rt)) == 1 and ready(rt) != [record.container_id]

    until(replaced, step=lambda: tick(rt, send), timeout=40, what="replacement")
    assert client.containers.retrieve(ready(rt)[0]).status == "running"
    assert not exists(client, record.container_id)


def test_a_lease_on_an_empty_pool_waits_for_the_refill_bounded_by_max_total(
    pools_env: PoolEnv, hearth_runtime: Runtime, local_api: LocalAPI,
    start_worker: Callable[..., WorkerProcess], celery_app: Celery,
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(POOLS.format(max_total=2))
    worker = start_worker(pools_env.env)
    until(lambda: len(ready(rt)) == 1, step=lambda: tick(rt, celery_enqueue(celery_app)), timeout=40,
          what="pool full")
    pools = HearthPools(rt, celery_app)

    first = pools.lease("eps")
    assert ready(rt) == []
    # Nothing ticks here: the lease itself asks the workers for a reconcile and waits for it.
    try:
        second = pools.lease("eps", wait=30)
    except PoolEmpty as exc:  # say why: this was seen once under heavy machine load
        records = [(r.name, r.state.value, r.error) for r in rt.store.records("eps")]
        raise AssertionError(f"no refill: {records}\n{worker.log.read_text()[-3000:]}") from exc
    assert second.container_id != first.container_id
    assert rt.store.by_container_id(second.container_id).state is State.LEASED  # type: ignore[union-attr]

    # Two leased = max_total: no refill may happen, the wait ends empty.
    with pytest.raises(PoolEmpty):
        pools.lease("eps", wait=3)
    assert set(remote_names(sdk(local_api), "hearth-eps-")) == {first.container_id, second.container_id}
    assert len(rt.store.records("eps")) == 2
