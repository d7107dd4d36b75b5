"""Leases through Celery tasks by name, and harvests of leased containers: on release, and before a
leased container's deadline (files written just before it would expire are saved first).

Real redis-server, a real Celery worker process, the local API over a socket. The test's runtime
uses an ``OffsetClock`` moved together with the server's clock, so both see the same "later".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from celery import Celery

from hearth.clock import OffsetClock
from hearth.planner import HarvestDue, Planner, harvest_due, tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import until

POOLS = """
version: 1
pools:
  beta:
    min_ready: 1
    max_total: 2
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
    lease: {ttl_seconds: 3600, min_remaining_on_claim_seconds: 60, wait_seconds: 30}
    outputs: {before_expiry_margin_seconds: 120}
"""


@pytest.fixture
def runtime(pools_env: PoolEnv, hearth_runtime: Runtime) -> Runtime:
    """The shared Runtime (tests/fixtures/pools.py), with this module's pools file."""
    pools_env.write_pools(POOLS)
    return hearth_runtime



def harvested(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name) if p.is_file()]


def test_lease_and_release_tasks_by_name_harvest_and_retire(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI,
) -> None:
    start_worker(pools_env.env)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(runtime.store.records("beta", State.READY)) == 1, step=lambda: tick(runtime, send))

    lease = celery_app.send_task("hearth.lease", args=["beta"]).get(timeout=30)
    assert lease["container_id"].startswith("cntr_") and lease["lease_id"]
    assert runtime.store.by_container_id(lease["container_id"]).state is State.LEASED  # type: ignore[union-attr]
    local_api.write_assistant_file(lease["container_id"], "/mnt/data/out/report.txt", b"quarterly numbers\n")

    released = celery_app.send_task("hearth.release", args=[lease["container_id"], lease["lease_id"]]).get(timeout=30)
    assert released["state"] == "HARVESTING"
    until(lambda: bool(harvested(pools_env.harvest_dir, "report.txt")))
    assert harvested(pools_env.harvest_dir, "report.txt")[0].read_bytes() == b"quarterly numbers\n"
    client = openai.OpenAI(base_url=local_api.base_url, api_key="unused", max_retries=0)
    until(lambda: lease["container_id"] not in {c.id for c in client.containers.list(limit=100)})
    # A second release with the same lease is refused: the lease and the container are gone.
    with pytest.raises(Exception, match=r"not one of Hearth.s|release refused"):
        celery_app.send_task("hearth.release", args=[lease["container_id"], lease["lease_id"]]).get(timeout=30)


def test_a_retried_release_is_answered_again_and_a_wrong_lease_is_refused(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
) -> None:
    worker = start_worker(pools_env.env)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(runtime.store.records("beta", State.READY)) == 1, step=lambda: tick(runtime, send))
    worker.stop()  # the retire stays queued: the release's state is stable while we look at it

    from hearth.errors import LeaseError
    from tasks.pools import HearthPools

    pools = HearthPools(runtime, celery_app)
    lease = pools.lease("beta")
    first = pools.release(lease.container_id, lease.lease_id)
    again = pools.release(lease.container_id, lease.lease_id)  # the first answer was "lost"
    assert first.state is State.HARVESTING and again.state is State.HARVESTING and again.name == first.name
    with pytest.raises(LeaseError):
        pools.release(lease.container_id, "not-the-lease")


def test_files_written_just_before_a_leased_containers_deadline_are_saved_before_it_expires(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI, hearth_clock: OffsetClock,
) -> None:
    start_worker(pools_env.env)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(runtime.store.records("beta", State.READY)) == 1, step=lambda: tick(runtime, send))
    lease = runtime.leases.lease("beta", ttl=3600)
    local_api.write_assistant_file(lease.container_id, "/mnt/data/chart.png", b"\x89PNG not really")
    record = runtime.store.by_container_id(lease.container_id)
    assert record is not None and record.deadline is not None

    # 8.5 of its 10 idle minutes pass with no calls: inside the 120 s margin, outside keepalive's 60 s.
    jump = record.deadline - hearth_clock.now() - 90
    local_api.advance_clock(jump)
    hearth_clock.advance(jump)
    plan = Planner(runtime).plan()
    due = [a for p in plan for a in p.actions if isinstance(a, HarvestDue)]
    assert [(a.container_id, a.reason) for a in due] == [(lease.container_id, "before-expiry")]

    tick(runtime, send)
    until(lambda: bool(harvested(pools_env.harvest_dir, "chart.png")))
    assert harvested(pools_env.harvest_dir, "chart.png")[0].read_bytes() == b"\x89PNG not really"

    # Then the container expires on the server: the file is already safe.
    local_api.advance_clock(600)
    client = openai.OpenAI(base_url=local_api.base_url, api_key="unused", max_retries=0)
    assert client.containers.retrieve(lease.container_id).status == "expired"
    assert harvested(pools_env.harvest_dir, "chart.png")


def test_harvest_due_rules() -> None:
    """Pure: every ``every_seconds`` while leased, and once inside the before-expiry margin."""
    from hearth.pool.model import ContainerRecord
    from settings.pools import PoolSpec

    outputs = {"every_seconds": 300, "before_expiry_margin_seconds": 120}
    pool = PoolSpec.model_validate({"name": "p", "outputs": outputs})
    now = 10_000.0

    def rec(**kw: object) -> ContainerRecord:
        base = {"name": "hearth-p-x", "pool": "p", "container_id": "cntr_1", "state": State.LEASED,
                "created_at": now - 1000, "updated_at": now - 1000, "leased_at": now - 100, "deadline": now + 500}
        return ContainerRecord.model_validate({**base, **kw})

    assert harvest_due(pool, [rec()], now) == []
    assert [a.reason for a in harvest_due(pool, [rec(leased_at=now - 400)], now)] == ["every"]
    assert [a.reason for a in harvest_due(pool, [rec(deadline=now + 100)], now)] == ["before-expiry"]
    # Already harvested inside the margin: not again.
    assert harvest_due(pool, [rec(deadline=now + 100, last_harvest_at=now - 10)], now) == []
    # Only leased containers.
    assert harvest_due(pool, [rec(state=State.READY, deadline=now + 100)], now) == []


REUSE_POOLS = """
version: 1
pools:
  beta:
    min_ready: 1
    max_total: 1
    container: {expires_after_minutes: 10}
    inputs: [{path: inputs/data.csv}]
    lease: {ttl_seconds: 600, on_release: reuse}
"""


def test_a_reused_container_is_harvested_and_cleaned_before_the_next_lease(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI,
) -> None:
    (pools_env.root / "inputs").mkdir()
    (pools_env.root / "inputs" / "data.csv").write_text("a,b\n1,2\n")
    pools_env.write_pools(REUSE_POOLS)
    start_worker(pools_env.env)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(runtime.store.records("beta", State.READY)) == 1, step=lambda: tick(runtime, send))

    from tasks.pools import HearthPools

    pools = HearthPools(runtime, celery_app)
    first = pools.lease("beta")
    local_api.write_assistant_file(first.container_id, "/mnt/data/secret-of-app-a.txt", b"app A's output")
    pools.release(first.container_id, first.lease_id)

    # Back to READY, same container: the next lessee gets it with the inputs only.
    until(lambda: [r.container_id for r in runtime.store.records("beta", State.READY)] == [first.container_id])
    assert harvested(pools_env.harvest_dir, "secret-of-app-a.txt")[0].read_bytes() == b"app A's output"
    client = openai.OpenAI(base_url=local_api.base_url, api_key="unused", max_retries=0)
    files = client.containers.files.list(first.container_id)
    names = sorted(f.path.rsplit("/", 1)[-1].split("-", 1)[-1] for f in files)
    assert names == ["data.csv"]
    recycled = runtime.store.by_container_id(first.container_id)
    assert recycled is not None and recycled.harvest_target is None  # the next lessee gets its own root
    second = pools.lease("beta")
    assert second.container_id == first.container_id and second.lease_id != first.lease_id
    assert second.token > first.token
