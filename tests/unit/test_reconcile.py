"""Example-based tests of the pure reconcile: one test per rule."""

from __future__ import annotations

from typing import Any

import pytest

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
    action_from_json,
    find_orphans,
    reconcile,
)

NOW = 1_700_000_000.0
POOL = "py"


def rec(name: str, state: State = State.READY, *, life: float | None = 1000.0, **kw: Any) -> ContainerRecord:
    fields: dict[str, Any] = {
        "name": name,
        "pool": POOL,
        "state": state,
        "container_id": f"cntr_{name}",
        "created_at": NOW - 60,
        "updated_at": NOW - 10,
        "deadline": None if life is None else NOW + life,
        "inputs_digest": "cur",
    }
    fields.update(kw)
    return ContainerRecord(**fields)


def desired(**kw: Any) -> DesiredPool:
    base: dict[str, Any] = {"name": POOL, "min_ready": 2, "max_total": 10, "inputs_digest": "cur"}
    base.update(kw)
    return DesiredPool(**base)


def of(actions: list[Action], kind: type[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_an_empty_pool_is_filled_to_min_ready() -> None:
    assert reconcile(desired(min_ready=3), [], NOW) == [Provision(pool=POOL, count=3)]


def test_never_more_than_max_total() -> None:
    assert reconcile(desired(min_ready=10, max_total=4), [], NOW) == [Provision(pool=POOL, count=4)]
    # Failed records still hold a slot until their container is deleted.
    failed = [rec(f"f{i}", State.FAILED) for i in range(3)]
    actions = reconcile(desired(min_ready=10, max_total=4), failed, NOW)
    assert of(actions, Provision) == [Provision(pool=POOL, count=1)]
    assert len(of(actions, Retire)) == 3


def test_buffer_keeps_ready_containers_above_the_leases() -> None:
    leased = [rec(f"l{i}", State.LEASED, lease_id=f"x{i}", lease_expires_at=NOW + 600) for i in range(3)]
    ready = [rec("r0"), rec("r1")]
    # target READY = max(min_ready=1, 3 leased + buffer 2) = 5; 2 ready -> 3 more, but 7 - 5 = 2 slots.
    actions = reconcile(desired(min_ready=1, buffer=2, max_total=7), leased + ready, NOW)
    assert actions == [Provision(pool=POOL, count=2)]


def test_creates_in_progress_count_toward_ready() -> None:
    records = [rec("c0", State.CREATING, container_id=None, life=None), rec("s0", State.SEEDING), rec("r0")]
    assert reconcile(desired(min_ready=3), records, NOW) == []


def test_refresh_only_wanted_containers_near_their_deadline() -> None:
    records = [rec("near", life=100), rec("far", life=1000)]
    actions = reconcile(desired(min_ready=2, keepalive_margin=180), records, NOW)
    assert actions == [Refresh(pool=POOL, name="near", container_id="cntr_near")]


def test_surplus_is_retired_least_life_first_and_never_refreshed() -> None:
    records = [rec("dying", life=60), rec("mid", life=600), rec("long", life=1100)]
    actions = reconcile(desired(min_ready=1, keepalive_margin=180), records, NOW)
    assert set(actions) == {
        Retire(pool=POOL, name="dying", container_id="cntr_dying", reason="surplus"),
        Retire(pool=POOL, name="mid", container_id="cntr_mid", reason="surplus"),
    }


def test_a_used_surplus_container_is_harvested_before_retire() -> None:
    actions = reconcile(desired(min_ready=0), [rec("used", lease_count=2)], NOW)
    assert actions == [Retire(pool=POOL, name="used", container_id="cntr_used", reason="surplus", harvest=True)]


def test_a_ready_record_past_its_deadline_is_expired_and_replaced() -> None:
    actions = reconcile(desired(min_ready=1), [rec("old", life=-1)], NOW)
    assert set(actions) == {
        Retire(pool=POOL, name="old", container_id="cntr_old", reason="expired"),
        Provision(pool=POOL, count=1),
    }


def test_expired_failed_and_gone_records_are_cleaned_up() -> None:
    records = [
        rec("e1", State.EXPIRED),
        rec("e2", State.EXPIRED, container_id=None),
        rec("f1", State.FAILED),
        rec("f2", State.FAILED, container_id=None),
        rec("g", State.GONE),
    ]
    actions = reconcile(desired(min_ready=0), records, NOW)
    assert set(actions) == {
        Retire(pool=POOL, name="e1", container_id="cntr_e1", reason="expired"),
        Forget(pool=POOL, name="e2", reason="expired"),
        Retire(pool=POOL, name="f1", container_id="cntr_f1", reason="failed"),
        Forget(pool=POOL, name="f2", reason="failed"),
        Forget(pool=POOL, name="g", reason="gone"),
    }


def test_stuck_seeding_is_retired_and_replaced_within_max_total() -> None:
    stuck = rec("s", State.SEEDING, updated_at=NOW - 700)
    actions = reconcile(desired(min_ready=1, max_total=2, create_timeout=600), [stuck], NOW)
    assert set(actions) == {
        Retire(pool=POOL, name="s", container_id="cntr_s", reason="stuck-seeding"),
        Provision(pool=POOL, count=1),
    }
    # With no free slot the replacement waits for the delete.
    actions = reconcile(desired(min_ready=1, max_total=1, create_timeout=600), [stuck], NOW)
    assert actions == [Retire(pool=POOL, name="s", container_id="cntr_s", reason="stuck-seeding")]


def test_a_young_intent_is_work_in_progress_and_an_old_one_is_adopted() -> None:
    young = rec("i1", State.CREATING, container_id=None, life=None, updated_at=NOW - 30)
    old = rec("i2", State.CREATING, container_id=None, life=None, updated_at=NOW - 601)
    actions = reconcile(desired(min_ready=2, create_timeout=600), [young, old], NOW)
    # The old intent still holds its slot (a container may exist), so only one more is created.
    assert set(actions) == {Adopt(pool=POOL, name="i2"), Provision(pool=POOL, count=1)}


def test_leases_are_refreshed_when_near_or_past_the_deadline_and_reclaimed_when_lapsed() -> None:
    near = rec("near", State.LEASED, life=30, lease_id="a", lease_expires_at=NOW + 300)
    past = rec("past", State.LEASED, life=-30, lease_id="b", lease_expires_at=NOW + 300)
    lapsed = rec("lapsed", State.LEASED, life=30, lease_id="c", lease_expires_at=NOW - 1)
    graced = rec("graced", State.LEASED, life=3000 - 1800, lease_id="d", lease_expires_at=NOW - 1)
    # max_total=3: no free slot, so the READY target (leases + buffer) adds no Provision here.
    actions = reconcile(desired(min_ready=0, max_total=3, lease_grace=0), [near, past, lapsed], NOW)
    assert set(actions) == {
        Refresh(pool=POOL, name="near", container_id="cntr_near"),
        # The holder's own calls keep a leased container alive unseen: check by refreshing.
        Refresh(pool=POOL, name="past", container_id="cntr_past"),
        Reclaim(pool=POOL, name="lapsed", container_id="cntr_lapsed", lease_id="c"),
    }
    assert reconcile(desired(min_ready=0, max_total=1, lease_grace=60), [graced], NOW) == []


def test_stale_inputs_rotate_gradually_with_headroom() -> None:
    d = desired(min_ready=2, max_total=4)
    stale = [rec("s1", inputs_digest="old", life=500), rec("s2", inputs_digest="old", life=900)]
    # 1. A replacement first; nothing is retired yet.
    assert reconcile(d, stale, NOW) == [Provision(pool=POOL, count=1)]
    # 2. While it is being made, nothing more.
    making = rec("n1", State.SEEDING)
    assert reconcile(d, [*stale, making], NOW) == []
    # 3. Once READY, the stale one with the least life goes, and the next replacement starts.
    done = rec("n1")
    assert set(reconcile(d, [*stale, done], NOW)) == {
        Retire(pool=POOL, name="s1", container_id="cntr_s1", reason="stale-inputs"),
        Provision(pool=POOL, count=1),
    }


def test_stale_inputs_rotate_one_at_a_time_at_max_total() -> None:
    d = desired(min_ready=2, max_total=2)
    stale = [rec("s1", inputs_digest="old", life=500), rec("s2", inputs_digest="old", life=900)]
    assert reconcile(d, stale, NOW) == [Retire(pool=POOL, name="s1", container_id="cntr_s1", reason="stale-inputs")]
    # While that delete runs, nothing else moves.
    deleting = rec("s1", State.DELETING, inputs_digest="old")
    assert reconcile(d, [deleting, stale[1]], NOW) == []


def test_an_open_breaker_stops_creates_but_not_refreshes() -> None:
    records = [rec("near", life=60)]
    actions = reconcile(desired(min_ready=3), records, NOW, breaker_open=True)
    assert actions == [Refresh(pool=POOL, name="near", container_id="cntr_near")]
    half_open = reconcile(desired(min_ready=3), records, NOW, max_provision=1)
    assert Provision(pool=POOL, count=1) in half_open


def test_stuck_harvest_is_reissued_and_a_vanished_delete_forgotten() -> None:
    harvesting = rec("h", State.HARVESTING, updated_at=NOW - 1000)
    busy = rec("b", State.HARVESTING, updated_at=NOW - 10)
    deleting = rec("d", State.DELETING, created_at=NOW - 1000)
    remote = [RemoteContainer(id="cntr_h", name="h", created_at=NOW - 2000)]
    remote.append(RemoteContainer(id="cntr_b", name="b", created_at=NOW - 2000))
    actions = reconcile(desired(min_ready=0, stuck_timeout=900), [harvesting, busy, deleting], NOW, remote=remote)
    assert set(actions) == {
        Retire(pool=POOL, name="h", container_id="cntr_h", reason="stuck-harvesting", harvest=True),
        Forget(pool=POOL, name="d", reason="deleted"),
    }


def test_the_remote_listing_reveals_lost_and_expired_containers() -> None:
    records = [
        rec("gone", created_at=NOW - 1000),
        rec("young", created_at=NOW - 5),
        rec("exp"),
        rec("ok"),
    ]
    remote = [
        RemoteContainer(id="cntr_exp", name="exp", created_at=NOW - 100, status="expired"),
        RemoteContainer(id="cntr_ok", name="ok", created_at=NOW - 100),
    ]
    actions = reconcile(desired(min_ready=4, orphan_grace=300), records, NOW, remote=remote)
    assert set(actions) == {
        Retire(pool=POOL, name="gone", container_id="cntr_gone", reason="missing"),
        Retire(pool=POOL, name="exp", container_id="cntr_exp", reason="remote-expired"),
        Provision(pool=POOL, count=2),
    }


def test_an_old_intent_bound_just_now_is_not_missing_from_an_older_listing() -> None:
    # The provision waited in the queue longer than the grace; its container exists but the
    # listing was taken before it was created: not "missing", no churn.
    late = rec("late", created_at=NOW - 1000, bound_at=NOW - 5)
    actions = reconcile(desired(min_ready=1, orphan_grace=300), [late], NOW, remote=[])
    assert not of(actions, Retire)
    lost = rec("lost", created_at=NOW - 1000, bound_at=NOW - 400)
    assert of(reconcile(desired(min_ready=1, orphan_grace=300), [lost], NOW, remote=[]), Retire)


def test_orphans_are_ours_unowned_and_older_than_the_grace() -> None:
    owned = rec("hearth-py-own1")
    remote = [
        RemoteContainer(id="cntr_own", name="hearth-py-own1", created_at=NOW - 999),
        RemoteContainer(id="cntr_old", name="hearth-py-lost1", created_at=NOW - 301),
        RemoteContainer(id="cntr_new", name="hearth-py-lost2", created_at=NOW - 10),
        RemoteContainer(id="cntr_theirs", name="someone-py-x1", created_at=NOW - 999),
        RemoteContainer(id="cntr_other", name="hearth-other-x1", created_at=NOW - 999),
        RemoteContainer(id="cntr_dash", name="hearth-my-pool-x1", created_at=NOW - 999),
    ]
    actions = reconcile(desired(min_ready=1, orphan_grace=300), [owned], NOW, remote=remote)
    assert of(actions, DeleteOrphan) == [DeleteOrphan(container_id="cntr_old", name="hearth-py-lost1", pool=POOL)]
    # Pools that are no longer configured are found when no pool filter is given.
    everywhere = find_orphans(remote, [owned.name], ["cntr_own"], NOW, name_prefix="hearth", grace=300)
    assert {o.container_id: o.pool for o in everywhere} == {
        "cntr_old": "py",
        "cntr_other": "other",
        "cntr_dash": "my-pool",
    }


def test_other_pools_records_are_ignored() -> None:
    stranger = rec("x").model_copy(update={"pool": "other"})
    assert reconcile(desired(min_ready=1), [stranger], NOW) == [Provision(pool=POOL, count=1)]


def test_actions_round_trip_as_json() -> None:
    actions: list[Action] = [
        Provision(pool=POOL, count=2),
        Refresh(pool=POOL, name="n", container_id="c"),
        Retire(pool=POOL, name="n", container_id=None, reason="surplus", harvest=True),
        Reclaim(pool=POOL, name="n", container_id="c", lease_id="l"),
        Forget(pool=POOL, name="n", reason="gone"),
        Adopt(pool=POOL, name="n"),
        DeleteOrphan(container_id="c", name="n", pool=None),
    ]
    for action in actions:
        data = action.to_json()
        assert data["kind"] == action.kind
        assert action_from_json(data) == action


def test_desired_pool_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        DesiredPool(name=POOL, min_ready=-1, max_total=1)
    with pytest.raises(ValueError, match="keepalive_margin"):
        DesiredPool(name=POOL, min_ready=1, max_total=1, keepalive_margin=1200, expires_minutes=20)


def test_a_ready_container_too_short_to_lease_is_refreshed() -> None:
    # A lease takes only READY containers with min_remaining_on_claim (claim_margin) left: one with
    # less, yet more than the keepalive margin, could not be leased and was neither refreshed nor
    # replaced, so a pool with one spare answered PoolEmpty until the keepalive margin came.
    short = rec("short", life=250)
    assert reconcile(desired(min_ready=1, keepalive_margin=180), [short], NOW) == []  # the old rule
    actions = reconcile(desired(min_ready=1, keepalive_margin=180, claim_margin=300), [short], NOW)
    assert actions == [Refresh(pool=POOL, name="short", container_id="cntr_short")]
    # A leased container is not claimed again: its refresh stays at the keepalive margin.
    leased = rec("held", State.LEASED, life=250, lease_id="a", lease_expires_at=NOW + 600)
    assert reconcile(desired(min_ready=0, max_total=1, keepalive_margin=180, claim_margin=300), [leased], NOW) == []
    # Surplus is still retired, not refreshed.
    far = rec("far", life=1000)
    actions = reconcile(desired(min_ready=1, keepalive_margin=180, claim_margin=300), [short, far], NOW)
    assert actions == [Retire(pool=POOL, name="short", container_id="cntr_short", reason="surplus")]


def test_the_claim_margin_must_be_shorter_than_the_expiry() -> None:
    with pytest.raises(ValueError, match="claim_margin"):
        DesiredPool(name=POOL, min_ready=1, max_total=1, claim_margin=1200, expires_minutes=20)
