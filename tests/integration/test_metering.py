"""Metering (hearth.pool.metering): a known scenario costs N containers x seconds x price, in real Redis."""

from __future__ import annotations

import redis

from hearth.costs import Costs
from hearth.pool.metering import Accrual, CostLedger, Span, accrue, burn_rate, projected_usd
from hearth.pool.model import ContainerRecord, State
from settings.pools import PoolSpec
from settings.prices import PriceTable, TierPrice

T0 = 1_800_000_000.0  # an hour boundary (divisible by 3600)
PRICES = PriceTable()


def _rec(name: str, state: State, *, bound: float, updated: float | None = None, deadline: float | None = None,
         cid: str | None = "cntr_x") -> ContainerRecord:
    return ContainerRecord(name=name, pool="p", container_id=cid, state=state, created_at=bound - 1,
                           updated_at=updated if updated is not None else bound, bound_at=bound, deadline=deadline)


def test_n_ready_containers_for_s_seconds_cost_n_times_s_times_the_price(redis_client: redis.Redis) -> None:
    ledger = CostLedger(redis_client, PRICES, prefix="t")
    records = [_rec(f"c{i}", State.READY, bound=T0) for i in range(4)]
    ledger.tick("p", "4g", records, T0)  # starts the clock
    for step in range(1, 11):  # ten ticks of 60 s
        ledger.tick("p", "4g", records, T0 + 60 * step)
    (row,) = ledger.read(["p"], T0, T0 + 600)
    assert row.tier == "4g"
    assert row.seconds == {"idle": 4 * 600.0, "leased": 0.0, "other": 0.0}
    assert abs(row.usd - 4 * 600 / 60 * 0.006) < 1e-9


def test_states_are_split_and_hours_are_split(redis_client: redis.Redis) -> None:
    ledger = CostLedger(redis_client, PRICES, prefix="t")
    start = T0 + 3600 - 30  # 30 s before the next hour
    ledger.tick("p", "1g", [], start)
    ledger.tick("p", "1g", [_rec("a", State.LEASED, bound=start - 100), _rec("b", State.READY, bound=start)],
                start + 60)
    rows = ledger.read(["p"], T0, start + 60)
    assert rows[0].seconds == {"idle": 60.0, "leased": 60.0, "other": 0.0}
    # 30 s of each fell in the first hour: the buckets are per hour.
    first_hour = redis_client.hgetall(f"t:cost:p:{ledger_hour(T0)}")
    assert float(first_hour[b"s:1g:idle"]) == 30.0 and float(first_hour[b"s:1g:leased"]) == 30.0


def ledger_hour(at: float) -> str:
    from hearth.pool.metering import _hour

    return _hour(at)


def test_a_short_lived_container_pays_its_minimum_once() -> None:
    price = TierPrice(usd_per_minute=0.006, minimum_minutes=5)
    gone = _rec("a", State.GONE, bound=T0, updated=T0 + 90)
    first = accrue([gone], T0 - 10, T0 + 100, price)
    assert first.seconds() == 90.0
    assert first.minimum_usd == [(T0 + 90, price.usd(300 - 90))]
    # Seen GONE again by the next tick: nothing more.
    again = accrue([gone], T0 + 100, T0 + 110, price)
    assert again.seconds() == 0.0 and again.minimum_usd == []


def test_an_expired_container_costs_until_its_deadline_and_an_intent_costs_nothing() -> None:
    price = PRICES.tier("1g")
    expired = _rec("a", State.EXPIRED, bound=T0, updated=T0 + 2000, deadline=T0 + 1200)
    intent = _rec("b", State.CREATING, bound=T0, cid=None)
    acc = accrue([expired, intent], T0, T0 + 3000, price)
    assert acc.seconds("other") == 1200.0 and acc.minimum_usd == []


def test_block_billing_rounds_up_to_started_blocks() -> None:
    block = TierPrice(usd_per_minute=0.0015, minimum_minutes=0, block_minutes=20)
    assert block.billed_seconds(61) == 1200 and block.billed_seconds(1200) == 1200
    assert block.billed_seconds(1201) == 2400


def test_a_deposed_leader_cannot_count_a_window_twice(redis_client: redis.Redis) -> None:
    ledger = CostLedger(redis_client, PRICES, prefix="t")
    records = [_rec("a", State.READY, bound=T0)]
    ledger.tick("p", "1g", records, T0)
    ledger.tick("p", "1g", records, T0 + 100)
    ledger.tick("p", "1g", records, T0 + 100)  # the same tick again (a second leader that lagged)
    ledger.tick("p", "1g", records, T0 + 50)  # and an older one: a negative window adds nothing
    (row,) = ledger.read(["p"], T0, T0 + 100)
    assert row.seconds["idle"] == 100.0
    ledger.tick("p", "1g", records, T0 + 160)
    (row,) = ledger.read(["p"], T0, T0 + 160)
    assert row.seconds["idle"] == 160.0


def test_leases_and_dollars_per_lease(redis_client: redis.Redis) -> None:
    ledger = CostLedger(redis_client, PRICES, prefix="t")
    ledger.tick("p", "1g", [], T0)
    ledger.tick("p", "1g", [_rec("a", State.LEASED, bound=T0)], T0 + 600)
    costs = Costs(redis_client, prices=PRICES, prefix="t")
    spec = PoolSpec(name="p", container={"memory_limit": "1g"})
    for _ in range(3):  # what the lease core runs per lease
        for command, args in costs.lease_counters(spec, T0 + 10):
            getattr(redis_client, command)(*args)
    (row,) = ledger.read(["p"], T0, T0 + 600)
    assert row.leases == 3
    assert row.usd_per_lease is not None and abs(row.usd_per_lease - 0.015 / 3) < 1e-9
    assert row.to_json()["usd_per_lease"] == round(0.015 / 3, 6)


def test_burn_rate_and_projection() -> None:
    price = PRICES.tier("4g")  # $0.36/h
    live = [_rec("a", State.READY, bound=T0, deadline=T0 + 1200), _rec("b", State.LEASED, bound=T0, deadline=T0 + 60)]
    gone = _rec("c", State.GONE, bound=T0, updated=T0 + 10)
    assert abs(burn_rate([*live, gone], price) - 2 * 0.36) < 1e-9
    # a: until its deadline (1200 s); b: its deadline is near, but its 5-minute minimum runs to T0+300.
    assert abs(projected_usd([*live, gone], T0, price) - price.usd(1200 + 300)) < 1e-9


def test_spend_in_one_script_is_the_sum_the_hourly_read_makes(redis_client: redis.Redis) -> None:
    # The tick reads today's spend with one script (``CostLedger.spent``); it must be exactly the
    # sum of ``read``'s rows, over several tiers, hours with and without buckets, and lease counts.
    ledger = CostLedger(redis_client, PRICES, prefix="tspent")
    ledger.tick("p", "1g", [], T0)
    for step in range(1, 6):  # ticks 1,000 s apart over two hours, idle and leased
        ledger.tick("p", "1g", [_rec("a", State.READY, bound=T0 - 7), _rec("b", State.LEASED, bound=T0)],
                    T0 + 1000 * step)
    ledger.record("p", "4g", Accrual(spans=[Span("idle", T0 + 100, 333.3), Span("other", T0 + 3000, 1234.5)],
                                     minimum_usd=[(T0 + 4000, 0.0123)]))
    redis_client.hincrby(ledger.bucket_key("p", T0), "leases:1g", 3)
    now = T0 + 5000
    for since in (T0, T0 + 3600):
        rows = ledger.read(["p"], since, now)
        assert {row.tier for row in rows} == {"1g", "4g"}
        assert ledger.spent("p", since, now) == sum(row.usd for row in rows)
    assert ledger.spent("p", T0 + 7200, now + 7200) == 0.0 == sum(r.usd for r in ledger.read(["p"], T0 + 7200, now))
    assert ledger.spent("other", T0, now) == 0.0
