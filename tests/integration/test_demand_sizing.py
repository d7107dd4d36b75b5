"""``buffer: auto`` on a real Redis: what the heartbeat's plan sizes a pool with, from counted leases.

The lease counters (the commands every lease runs), the create-to-READY samples and the estimates
live in a real redis-server; the plan is the heartbeat's own (``Planner(commit=True)``). Hearth's
clock is an OffsetClock moved by the test. No worker is needed: nothing is applied.
"""

from __future__ import annotations

import pytest

from hearth.planner import Planner
from hearth.pool.sizing import poisson_quantile, spares_for
from hearth.runtime import Runtime
from tests.fixtures.pools import PoolEnv

POOL = """
version: 1
pools:
  auto:
    min_ready: 1
    buffer: auto
    max_total: 200
"""


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    return {"HEARTH_HEARTBEAT_INTERVAL": "10", "HEARTH_DEMAND_FAST_TAU": "20"}


def count_leases(rt: Runtime, n: int) -> None:
    spec = rt.pool("auto")
    for _ in range(n):
        for command, args in rt.costs.lease_counters(spec, rt.clock.now()):
            getattr(rt.redis, command)(*args)


def test_auto_sizes_for_the_next_tick_and_sees_a_step_at_once(
    hearth_runtime: Runtime, pools_env: PoolEnv, hearth_clock: object,
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(POOL)
    for _ in range(10):
        rt.costs.demand.observe_ready("auto", 2.0)
    (quiet,) = Planner(rt, commit=True).plan()  # the first fold: no lease yet, only min_ready
    assert quiet.desired_ready == 1 and quiet.sizing is not None and quiet.sizing.demand.rate == 0.0

    hearth_clock.advance(10.0)  # type: ignore[attr-defined]
    count_leases(rt, 20)  # 20 leases in one 10 s interval: 2/s now
    (step,) = Planner(rt, commit=True).plan()
    assert step.sizing is not None
    # The last interval's rate (2/s), not the 20 s estimate (20/20 = 1/s), and a window of the
    # heartbeat interval + the p90 time to ready - the wait target: 10 + 2 - 0.5 s.
    # (The OffsetClock also runs in real time: the interval is 10 s and the moments the test took.)
    r = step.sizing.demand.rate
    assert r == pytest.approx(2.0, rel=0.02)
    want = poisson_quantile(r * 11.5, 0.99)
    assert step.desired_ready == want == spares_for(r, 2.0, target_wait=0.5, percentile=0.99,
                                                    replenish_seconds=10.0)
    assert want > spares_for(r, 2.0, target_wait=0.5, percentile=0.99)  # what leaving the tick out gave
    assert "+ 10 s to the next tick" in step.sizing.sizing.why

    # Demand stops: the last interval says 0, the estimates decay, the target falls back.
    hearth_clock.advance(600.0)  # type: ignore[attr-defined]
    (later,) = Planner(rt, commit=True).plan()
    assert later.sizing is not None and later.sizing.demand.rate < 0.05
    assert 1 <= later.desired_ready < want
