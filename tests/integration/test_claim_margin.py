"""A READY container with less life than a lease takes (``lease.min_remaining_on_claim_seconds``)
but more than the keepalive margin: the tick refreshes it, so the pool's spare can be leased again
at once instead of answering PoolEmpty until the keepalive margin comes. Real Redis, a manual clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hearth.api.client import ContainersClient
from hearth.clock import ManualClock
from hearth.planner import Planner
from hearth.pool.model import State
from hearth.pool.reconcile import Refresh
from hearth.runtime import Runtime
from settings import Settings

T0 = 1_800_000_000.0
# The defaults that disagree: a lease wants 300 s of life, the keepalive refreshes at 180 s.
POOLS = """version: 1
pools:
  p: {min_ready: 1, buffer: 0, max_total: 2, keepalive: {margin_seconds: 180},
      lease: {min_remaining_on_claim_seconds: 300}}
"""


@pytest.fixture
def runtime(tmp_path: Path, redis_url: str) -> Iterator[Runtime]:
    (tmp_path / "pools.yaml").write_text(POOLS)
    settings = Settings(pools=tmp_path / "pools.yaml", redis_url=redis_url, key_prefix="claimm",  # type: ignore[call-arg]
                        _env_file=None)
    rt = Runtime(settings, redis_client=redis.Redis.from_url(redis_url),
                 client=ContainersClient("http://127.0.0.1:1/v1"), clock=ManualClock(T0))
    yield rt
    for key in rt.redis.scan_iter("claimm:*"):
        rt.redis.delete(key)
    rt.close()


@pytest.mark.parametrize("full_read", [False, True])
def test_a_spare_too_short_to_lease_is_refreshed_by_the_tick(runtime: Runtime, full_read: bool) -> None:
    store, clock = runtime.store, runtime.clock
    assert isinstance(clock, ManualClock)
    spec = runtime.pool("p")
    minimum = spec.lease.min_remaining_on_claim_seconds
    store.recount("p")
    store.write_intent("p", "hearth-p-only", inputs_digest=runtime.inputs(spec)[1])
    store.transition("hearth-p-only", State.CREATING, State.READY, container_id="cntr_only",
                     bound_at=clock.now(), deadline=clock.now() + 250)
    # The pool's one spare cannot be leased: 250 s left, a lease wants 300.
    assert runtime.leases.try_lease("p", ttl=60, min_remaining=minimum) is None

    plans = Planner(runtime, commit=True, full_read=full_read).plan()
    (plan,) = plans
    assert plan.counts == {"ready": 1}
    assert plan.actions == [Refresh(pool="p", name="hearth-p-only", container_id="cntr_only")]

    # What the worker's refresh does: the deadline moves; now the spare is leased.
    store.update("hearth-p-only", State.READY, deadline=clock.now() + 1200)
    lease = runtime.leases.try_lease("p", ttl=60, min_remaining=minimum)
    assert lease is not None and lease.name == "hearth-p-only"
