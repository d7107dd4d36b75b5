"""Cost end to end: metering of real containers, and budgets that stop spares (soft) or creates (hard).

Real parts: a redis-server, a Celery worker process, the local API over a socket; Hearth's clock is
an OffsetClock moved together with the server's, so ten minutes pass in no time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from celery import Celery

from hearth.errors import PoolEmpty
from hearth.planner import Planner, tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from tasks.pools import HearthPools
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import advance_both, celery_enqueue, remote_names, sdk, until

POOL = """
version: 1
pools:
  analysts:
    min_ready: {min_ready}
    max_total: 4
    container: {{memory_limit: 4g}}
    lease: {{wait_seconds: 60}}
{budget}
"""


def ready(rt: Runtime) -> list[str]:
    return [r.name for r in rt.store.records("analysts", State.READY)]


def test_metering_of_ready_containers_equals_count_times_seconds_times_price(
    hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, local_api: LocalAPI, hearth_clock: object,
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(POOL.format(min_ready=2, budget=""))
    start_worker(pools_env.env, concurrency=2)
    send = celery_enqueue(celery_app)
    until(lambda: len(ready(rt)) == 2, step=lambda: tick(rt, send), timeout=90.0)

    def idle_seconds() -> float:
        return sum(r.seconds["idle"] for r in rt.costs.report(["analysts"], 0.0, rt.clock.now()))

    def metered_until() -> float:  # the time of the pool's last metering tick
        return float(rt.redis.get(f"{rt.settings.key_prefix}:cost-last:analysts") or 0)

    tick(rt, send)
    before, usd_before, t0 = idle_seconds(), sum(r.usd for r in rt.costs.report(["analysts"], 0.0, 2e9)), \
        metered_until()
    advance_both(local_api, hearth_clock, 600.0)  # type: ignore[arg-type]
    tick(rt, send)
    window = metered_until() - t0  # 600 s moved by the test, plus the real time the ticks took
    assert 600.0 <= window < 700.0
    rows = rt.costs.report(["analysts"], 0.0, rt.clock.now())
    assert [r.tier for r in rows] == ["4g"]
    assert idle_seconds() - before == pytest.approx(2 * window, abs=0.01)
    assert sum(r.usd for r in rows) - usd_before == pytest.approx(2 * window / 60 * 0.006, abs=1e-6)
    (plan,) = Planner(rt).plan()
    assert plan.sizing is not None and plan.sizing.spend.burn_usd_per_hour == pytest.approx(2 * 0.36)


def test_a_soft_budget_keeps_no_spares_but_serves_a_waiting_lease(
    hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, local_api: LocalAPI,
) -> None:
    rt = hearth_runtime
    # One 4g container for 20 idle minutes costs $0.12: a $0.05 budget allows no spare at all.
    pools_env.write_pools(POOL.format(min_ready=3, budget="    budget: {usd_per_day: 0.05}"))
    start_worker(pools_env.env, concurrency=2)
    send = celery_enqueue(celery_app)
    tick(rt, send)
    (plan,) = Planner(rt).plan()
    assert plan.desired_ready == 0 and plan.sizing is not None and plan.sizing.budget.over
    assert "budget $0.05/day" in plan.sizing.sizing.why
    assert remote_names(sdk(local_api), "hearth-analysts-") == {}

    pools = HearthPools(rt, celery_app)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pools.lease("analysts")), daemon=True)
    waiter.start()
    until(lambda: got, step=lambda: tick(rt, send), timeout=90.0, what="the waiting lease served")
    waiter.join(5)
    # Exactly one container was made, for the waiting lease; no spare beside it.
    tick(rt, send)
    assert len(remote_names(sdk(local_api), "hearth-analysts-")) == 1
    assert ready(rt) == []


def test_a_hard_budget_creates_nothing_and_a_lease_says_why(
    hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, local_api: LocalAPI,
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(POOL.format(min_ready=2, budget="    budget: {usd_per_day: 0.05, hard: true}"))
    start_worker(pools_env.env, concurrency=2)
    send = celery_enqueue(celery_app)
    tick(rt, send)
    with pytest.raises(PoolEmpty, match=r"budget \$0.05/day"):
        HearthPools(rt, celery_app).lease("analysts")
    for _ in range(3):
        tick(rt, send)
    assert remote_names(sdk(local_api), "hearth-analysts-") == {}
    (plan,) = Planner(rt).plan()
    assert plan.to_json()["sizing"]["over_budget"] is True
    assert plan.to_json()["sizing"]["creates_allowed"] is False
