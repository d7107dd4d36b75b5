"""Properties of the pure reconcile for ANY actual state (hypothesis).

* a tick never provisions past ``max_total`` (every non-GONE record occupies a slot);
* it never refreshes a container Hearth does not want (surplus, expired, lapsed, being retired,
  or in any state but READY/LEASED), and never more READY ones than the target;
* each record gets at most one action; an open breaker means no creates;
* applying the actions to a simulated pool reaches a fixed point (no actions at all) within a few
  ticks, and never goes above ``max_total`` on the way.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearth.pool import (
    Action,
    Adopt,
    ContainerRecord,
    DeleteOrphan,
    DesiredPool,
    Forget,
    Provision,
    Reclaim,
    Refresh,
    RemoteContainer,
    Retire,
    State,
    reconcile,
)
from hearth.pool.reconcile import ready_target

NOW = 1_700_000_000.0
POOL = "p"
DIGEST = "cur"

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def desired_pools(draw: st.DrawFn) -> DesiredPool:
    return DesiredPool(
        name=POOL,
        min_ready=draw(st.integers(0, 8)),
        buffer=draw(st.integers(0, 4)),
        max_total=draw(st.integers(0, 14)),
        keepalive_margin=draw(st.sampled_from([0.0, 60.0, 180.0, 600.0])),
        claim_margin=draw(st.sampled_from([0.0, 300.0])),
        inputs_digest=DIGEST,
        expires_minutes=20,
        orphan_grace=300.0,
        lease_grace=draw(st.sampled_from([0.0, 30.0])),
        create_timeout=600.0,
        stuck_timeout=900.0,
        rotate_batch=draw(st.integers(1, 3)),
        name_prefix="hearth",
    )


@st.composite
def records(draw: st.DrawFn, index: int) -> ContainerRecord:
    state = draw(st.sampled_from(list(State)))
    has_container = state is not State.CREATING or draw(st.booleans())
    updated_at = NOW - draw(st.sampled_from([0.0, 30.0, 599.0, 601.0, 901.0, 2000.0]))
    deadline = draw(st.one_of(st.none(), st.floats(-1500, 2400).map(lambda x: NOW + round(x, 3))))
    fields: dict[str, Any] = {
        "name": f"hearth-{POOL}-r{index}",
        "pool": POOL,
        "state": state,
        "container_id": f"cntr_{index}" if has_container else None,
        "created_at": updated_at - draw(st.sampled_from([0.0, 100.0, 1000.0])),
        "updated_at": updated_at,
        "deadline": deadline,
        "inputs_digest": draw(st.sampled_from([DIGEST, DIGEST, "old"])),
        "lease_count": draw(st.integers(0, 2)),
    }
    if state is State.LEASED:
        fields.update(
            lease_id=f"l{index}",
            token=index + 1,
            lease_expires_at=NOW + draw(st.sampled_from([-600.0, -10.0, 10.0, 600.0])),
        )
    return ContainerRecord(**fields)


@st.composite
def pools_states(draw: st.DrawFn) -> tuple[DesiredPool, list[ContainerRecord]]:
    desired = draw(desired_pools())
    n = draw(st.integers(0, 18))
    return desired, [draw(records(i)) for i in range(n)]


@st.composite
def remotes(draw: st.DrawFn, recs: list[ContainerRecord]) -> list[RemoteContainer]:
    listed = [
        RemoteContainer(
            id=r.container_id,
            name=r.name,
            created_at=r.created_at,
            status=draw(st.sampled_from(["running", "running", "expired"])),
        )
        for r in recs
        if r.container_id is not None and draw(st.booleans())
    ]
    for i in range(draw(st.integers(0, 3))):
        listed.append(RemoteContainer(id=f"cntr_x{i}", name=f"hearth-{POOL}-x{i}", created_at=NOW - 1000))
    return listed


def occupied(recs: list[ContainerRecord]) -> int:
    return sum(1 for r in recs if r.state is not State.GONE)


def provisioned(actions: list[Action]) -> int:
    return sum(a.count for a in actions if isinstance(a, Provision))


def targets_of(action: Action) -> str | None:
    return getattr(action, "name", None) if not isinstance(action, DeleteOrphan) else None


def check_tick(desired: DesiredPool, recs: list[ContainerRecord], actions: list[Action], breaker_open: bool) -> None:
    by_name = {r.name: r for r in recs}
    # Never past max_total.
    assert len([a for a in actions if isinstance(a, Provision)]) <= 1
    if provisioned(actions):
        assert occupied(recs) + provisioned(actions) <= desired.max_total
    if breaker_open:
        assert provisioned(actions) == 0
    # One action per record at most.
    per_record = Counter(n for n in map(targets_of, actions) if n is not None)
    assert all(c == 1 for c in per_record.values()), per_record
    # Refresh only what Hearth wants.
    # Leases that stay: not lapsed, and not retired because the remote listing says they are gone.
    leaving = {a.name for a in actions if isinstance(a, Retire | Reclaim)}
    leased_active = [
        r
        for r in recs
        if r.state is State.LEASED and not r.lease_lapsed(NOW, desired.lease_grace) and r.name not in leaving
    ]
    refreshed_ready = 0
    for action in actions:
        if not isinstance(action, Refresh):
            continue
        r = by_name[action.name]
        assert r.container_id == action.container_id
        assert r.state in (State.READY, State.LEASED)
        # READY ones also when a lease could not take them (less life than the claim margin).
        margin = desired.ready_refresh_margin if r.state is State.READY else desired.keepalive_margin
        assert r.remaining(NOW) <= margin
        if r.state is State.READY:
            assert r.deadline is None or r.deadline >= NOW, "refreshing an expired container"
            refreshed_ready += 1
        else:
            assert not r.lease_lapsed(NOW, desired.lease_grace), "refreshing a lapsed lease"
    assert refreshed_ready <= ready_target(desired, len(leased_active))


def simulate(
    desired: DesiredPool, recs: list[ContainerRecord], actions: list[Action], fresh: itertools.count
) -> list[ContainerRecord]:
    """An ideal applier: every action completes before the next tick (time does not move)."""
    state = {r.name: r for r in recs}
    for action in actions:
        if isinstance(action, Provision):
            for _ in range(action.count):
                i = next(fresh)
                name = f"hearth-{POOL}-n{i}"
                state[name] = ContainerRecord(
                    name=name,
                    pool=POOL,
                    state=State.READY,
                    container_id=f"cntr_n{i}",
                    created_at=NOW,
                    updated_at=NOW,
                    deadline=NOW + desired.expires_minutes * 60,
                    inputs_digest=desired.inputs_digest,
                )
        elif isinstance(action, Refresh):
            state[action.name] = state[action.name].model_copy(update={"deadline": NOW + desired.expires_minutes * 60})
        elif isinstance(action, Retire | Reclaim | Forget | Adopt):
            del state[action.name]
    return list(state.values())


def finish_tasks(desired: DesiredPool, recs: list[ContainerRecord]) -> list[ContainerRecord]:
    """Work in flight completes between ticks: creates become READY, harvests and deletes end."""
    out = []
    for r in recs:
        if r.state in (State.HARVESTING, State.DELETING):
            continue
        if r.state in (State.CREATING, State.SEEDING):
            r = r.model_copy(
                update={
                    "state": State.READY,
                    "container_id": r.container_id or f"cntr_{r.name}",
                    "deadline": NOW + desired.expires_minutes * 60,
                }
            )
        out.append(r)
    return out


@PROPS
@given(pools_states(), st.booleans())
def test_one_tick_respects_max_total_and_refreshes_only_wanted(
    case: tuple[DesiredPool, list[ContainerRecord]], breaker_open: bool
) -> None:
    desired, recs = case
    actions = reconcile(desired, recs, NOW, breaker_open=breaker_open)
    check_tick(desired, recs, actions, breaker_open)


@PROPS
@given(st.data())
def test_one_tick_with_a_remote_listing(data: st.DataObject) -> None:
    desired, recs = data.draw(pools_states())
    remote = data.draw(remotes(recs))
    actions = reconcile(desired, recs, NOW, remote=remote)
    check_tick(desired, recs, actions, False)
    known = {r.name for r in recs} | {r.container_id for r in recs if r.container_id}
    for action in actions:
        if isinstance(action, DeleteOrphan):
            assert action.name not in known and action.container_id not in known


@PROPS
@given(pools_states(), st.booleans(), st.booleans())
def test_applying_the_actions_converges_to_a_fixed_point(
    case: tuple[DesiredPool, list[ContainerRecord]], breaker_open: bool, finish: bool
) -> None:
    desired, recs = case
    start = occupied(recs)
    fresh = itertools.count()
    limit = 3 * (desired.max_total + len(recs)) + 6
    for _ in range(limit):
        actions = reconcile(desired, recs, NOW, breaker_open=breaker_open)
        check_tick(desired, recs, actions, breaker_open)
        busy = finish and any(
            r.state in (State.CREATING, State.SEEDING, State.HARVESTING, State.DELETING) for r in recs
        )
        if not actions and not busy:
            break
        recs = simulate(desired, recs, actions, fresh)
        assert occupied(recs) <= max(desired.max_total, start)
        if finish:
            recs = finish_tasks(desired, recs)
    else:
        raise AssertionError(f"no fixed point after {limit} ticks: {actions}")
    if not finish:
        return
    # With every task done, the fixed point is the pool as full as it may be, all inputs current.
    leased = [r for r in recs if r.state is State.LEASED]
    ready = [r for r in recs if r.state is State.READY]
    target = ready_target(desired, len(leased))
    assert len(ready) <= target
    assert set(r.state for r in recs) <= {State.READY, State.LEASED}
    if not breaker_open:
        assert len(ready) == target or occupied(recs) >= desired.max_total
        assert all(r.inputs_digest == DIGEST for r in ready), "a stale container was never rotated"
