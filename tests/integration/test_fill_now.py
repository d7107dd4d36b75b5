"""No tick gating: a fill that is asked for starts now, not at the next heartbeat interval.

A lease on an empty pool, ``hearth fill`` and an edited pools file each reach a real Celery worker
as a fill request (``hearth.pool.wanted``, task ``hearth.reconcile_pool``). The heartbeat interval
is an hour here, and where a heartbeat runs it has already had its one tick, so no tick explains
the provisions; where the planner's lock is held by "another tick", the request must still be
served once that tick lets go (the old global ``hearth.reconcile`` gave up and waited a whole
interval). Assertions are on state (records, leases), never on timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
from celery import Celery

from hearth.pool.model import State
from hearth.pool.wanted import FillRequests
from hearth.runtime import Runtime
from settings import Settings
from tasks.pools import HearthPools
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.pools import PoolEnv
from tests.helpers import until
from worker.heartbeat import run_heartbeat

POOLS = """
version: 1
pools:
  alpha:
    min_ready: {min_ready}
    buffer: 0
    max_total: 4
    container: {{expires_after_minutes: 20}}
    lease: {{wait_seconds: 60}}
"""


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    return {"HEARTH_HEARTBEAT_INTERVAL": "3600"}


def _hold_tick_lock(rt: Runtime, seconds: float) -> None:
    """Another planner is mid-tick: its lock lapses after ``seconds`` (as a crashed tick's would)."""
    assert rt.redis.set(rt.store.key("lock", "tick"), "someone-else", px=int(seconds * 1000), nx=True)


def _live(rt: Runtime) -> int:
    return sum(1 for r in rt.store.records("alpha") if r.state is not State.GONE)


def test_a_lease_on_an_empty_pool_fills_it_even_while_a_tick_holds_the_planner(
    pools_env: PoolEnv, hearth_runtime: Runtime, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
) -> None:
    pools_env.write_pools(POOLS.format(min_ready=2))
    start_worker(pools_env.env, concurrency=4)
    assert hearth_runtime.store.records("alpha") == []  # no tick ever ran: the pool is empty
    _hold_tick_lock(hearth_runtime, 2.0)
    pools = HearthPools(hearth_runtime, celery_app)
    lease = pools.lease("alpha", wait=60)
    assert lease.pool == "alpha" and lease.container_id
    # The whole gap (min_ready 2) was provisioned at once, not one container per request: the
    # other one becomes READY with no further request and no tick.
    until(lambda: len(hearth_runtime.store.records("alpha", State.READY)) == 1, timeout=60.0)
    assert _live(hearth_runtime) == 2
    assert not FillRequests(hearth_runtime.store).waiting()  # served, nothing left behind


def test_hearth_fill_starts_the_fill_now(
    pools_env: PoolEnv, hearth_runtime: Runtime, start_worker: Callable[..., WorkerProcess],
) -> None:
    pools_env.write_pools(POOLS.format(min_ready=3))
    start_worker(pools_env.env, concurrency=4)
    _hold_tick_lock(hearth_runtime, 2.0)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "fill", "alpha", "--timeout", "90", "--json"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith('HEARTH_')}, **pools_env.env},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ready"] == 3
    assert len(hearth_runtime.store.records("alpha", State.READY)) == 3


@pytest.fixture
def heartbeat(pools_env: PoolEnv, hearth_runtime: Runtime) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=run_heartbeat, args=(Settings(),), kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


def test_an_edited_pools_file_fills_at_once_not_at_the_next_interval(
    pools_env: PoolEnv, hearth_runtime: Runtime, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    request: pytest.FixtureRequest,
) -> None:
    pools_env.write_pools(POOLS.format(min_ready=0))
    start_worker(pools_env.env, concurrency=4)
    request.getfixturevalue("heartbeat")
    # Its first (and, with an hour's interval, only) tick ran and found nothing to do.
    until(lambda: hearth_runtime.store.health("heartbeat") is not None, timeout=60.0)
    assert hearth_runtime.store.records("alpha") == []
    pools_env.write_pools(POOLS.format(min_ready=2))
    until(lambda: len(hearth_runtime.store.records("alpha", State.READY)) == 2, timeout=60.0)
    assert _live(hearth_runtime) == 2
