"""The Applier acts on what the plan saw, not on what a record became since; it forgets DELETING
records whose container is gone; applying one plan twice queues no work twice and never writes
more intents than ``max_total`` allows.

Real redis-server, the local API over a socket, the openai SDK to look at the server. The actions'
operations run in this process (``inline_enqueue``) so that when ``apply`` returns, its work is done.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from hearth.clock import OffsetClock
from hearth.planner import Applier, HarvestDue, Planner, tick
from hearth.pool.model import State
from hearth.pool.reconcile import Forget, Provision, Refresh, Retire
from hearth.runtime import Runtime
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import advance_both, inline_enqueue, recording_enqueue, remote_names, sdk, until

POOLS = """
version: 1
pools:
  gamma:
    min_ready: {min_ready}
    max_total: {max_total}
    container: {{expires_after_minutes: 10}}
    keepalive: {{margin_seconds: 60}}
    lease: {{ttl_seconds: 3600, min_remaining_on_claim_seconds: 0}}
    outputs: {{before_expiry_margin_seconds: 120}}
"""


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    # Absence from the remote listing counts at once (no grace), so B2's DELETING record qualifies.
    return {"HEARTH_ORPHAN_GRACE": "0"}


def fill(rt: Runtime, n: int) -> list[str]:
    until(lambda: len(rt.store.records("gamma", State.READY)) == n, step=lambda: tick(rt, inline_enqueue(rt)),
          timeout=30, what=f"{n} READY")
    return [r.name for r in rt.store.records("gamma", State.READY)]


def test_a_container_leased_between_plan_and_apply_is_not_retired(
    pools_env: PoolEnv, hearth_runtime: Runtime, local_api: LocalAPI
) -> None:
    """B1: the plan saw a surplus READY container; by apply time an app holds it."""
    rt = hearth_runtime
    pools_env.write_pools(POOLS.format(min_ready=1, max_total=2))
    (name,) = fill(rt, 1)
    pools_env.write_pools(POOLS.format(min_ready=0, max_total=2) + "\n")  # now it is surplus

    plans = Planner(rt).plan()
    retires = [a for p in plans for a in p.actions if isinstance(a, Retire)]
    assert [(a.name, a.reason) for a in retires] == [(name, "surplus")]

    lease = rt.leases.try_lease("gamma", ttl=600)
    assert lease is not None and lease.name == name
    calls: list[tuple[str, list[Any]]] = []
    Applier(rt, inline_enqueue(rt, calls)).apply(plans)

    record = rt.store.get(name)
    assert record is not None and record.state is State.LEASED and record.lease_id == lease.lease_id
    assert sdk(local_api).containers.retrieve(lease.container_id).status == "running"
    # The app gives it back normally: its lease still holds.
    released = rt.leases.release(lease.container_id, lease.lease_id, token=lease.token)
    assert released.state is State.HARVESTING


def test_a_deleting_record_whose_container_is_gone_is_forgotten(
    pools_env: PoolEnv, hearth_runtime: Runtime, local_api: LocalAPI
) -> None:
    """B2: the delete happened (the listing no longer has it) but the record stayed DELETING."""
    rt = hearth_runtime
    pools_env.write_pools(POOLS.format(min_ready=1, max_total=2))
    (name,) = fill(rt, 1)
    record = rt.store.get(name)
    assert record is not None and record.container_id is not None
    rt.store.transition(name, State.READY, State.DELETING)
    sdk(local_api).containers.delete(record.container_id)  # e.g. a retire that died after its delete call

    planner = Planner(rt)
    plans = planner.plan(remote=planner.remote())
    forgets = [a for p in plans for a in p.actions if isinstance(a, Forget)]
    assert [(a.name, a.reason) for a in forgets] == [(name, "deleted")]
    Applier(rt, recording_enqueue([])).apply(plans)
    assert rt.store.get(name) is None
    assert rt.store.by_container_id(record.container_id) is None


def test_applying_one_plan_twice_queues_each_refresh_and_harvest_once(
    pools_env: PoolEnv, hearth_runtime: Runtime, hearth_clock: OffsetClock, local_api: LocalAPI
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(POOLS.format(min_ready=2, max_total=2))
    fill(rt, 2)
    lease = rt.leases.try_lease("gamma", ttl=3600)
    assert lease is not None
    ready = rt.store.records("gamma", State.READY)
    deadlines = [r.deadline for r in rt.store.records("gamma") if r.deadline is not None]
    assert len(deadlines) == 2
    # Both are within the keepalive margin (60 s) and the leased one within the harvest margin
    # (120 s); the server has not expired them.
    advance_both(local_api, hearth_clock, min(deadlines) - hearth_clock.now() - 45)

    plans = Planner(rt).plan()
    actions = [a for p in plans for a in p.actions]
    assert sorted(a.name for a in actions if isinstance(a, Refresh)) == sorted([ready[0].name, lease.name])
    assert [a.container_id for a in actions if isinstance(a, HarvestDue)] == [lease.container_id]

    calls: list[tuple[str, list[Any]]] = []
    applier = Applier(rt, recording_enqueue(calls))
    applier.apply(plans)
    applier.apply(plans)
    Applier(rt, recording_enqueue(calls)).apply(plans)  # another replica with the same plan
    counted = Counter((name, tuple(args)) for name, args in calls)
    assert counted == Counter({
        ("hearth.refresh", (ready[0].name,)): 1,
        ("hearth.refresh", (lease.name,)): 1,
        ("hearth.harvest", (lease.container_id,)): 1,
    })


def test_applying_one_provision_plan_twice_never_writes_more_intents_than_max_total(
    pools_env: PoolEnv, hearth_runtime: Runtime, local_api: LocalAPI
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(POOLS.format(min_ready=2, max_total=3))
    plans = Planner(rt).plan()
    assert [a.count for p in plans for a in p.actions if isinstance(a, Provision)] == [2]

    calls: list[tuple[str, list[Any]]] = []
    Applier(rt, recording_enqueue(calls)).apply(plans)
    Applier(rt, recording_enqueue(calls)).apply(plans)  # a stale copy of the same plan (a retried tick)
    intents = rt.store.records("gamma", State.CREATING)
    provisions = [args[0] for name, args in calls if name == "hearth.provision"]
    assert len(intents) <= 3
    assert len(intents) == 2  # one intent per gap: the second apply found the gap already covered
    assert sorted(provisions) == sorted(r.name for r in intents)
    assert remote_names(sdk(local_api), "hearth-gamma-") == {}  # nothing ran: intents only
