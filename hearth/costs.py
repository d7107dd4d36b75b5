"""Money next to latency: how big each pool should be now, what it costs, and whether it may spend more.

One object per process (``Runtime.costs``) joins the three parts the heartbeat, the lease path and
the CLI need, so none of them assembles prices, budgets and demand by itself:

* ``pool/metering.py``: billed container time per pool, tier and state (``CostLedger``);
* ``pool/demand.py``: lease arrivals, time to ready and waiting leases (``DemandStore``);
* ``pool/sizing.py``: the pure policy (spares for a wait target, clamped by sizes and budget).

A pool's budget is its own ``budget`` in the pools file, else the global
``HEARTH_BUDGET_USD_PER_DAY``. It is over when what the pool spent today (UTC) plus what its live
containers will still cost if nothing touches them again (``projected_usd``), plus one more
container's idle life, would exceed the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from hearth.events import Observer, log_event
from hearth.pool.demand import DemandStore, DemandView
from hearth.pool.metering import CATEGORIES, CostLedger, PoolCost, burn_rate, projected_usd
from hearth.pool.model import ContainerRecord, State
from hearth.pool.sizing import AutoBuffer, BudgetVerdict, Sizing, size_pool
from hearth.pool.store import MeterAdvance, PoolView
from settings.pools import Budget, PoolSpec
from settings.prices import PriceTable

log = logging.getLogger(__name__)
REFUSAL_TTL = 300  # s: a hard-budget refusal the heartbeat stopped renewing lapses after this


@dataclass(frozen=True)
class Spend:
    """A pool's money now: today's spend, the projection of its live containers, the burn rate."""

    today_usd: float
    projected_usd: float
    burn_usd_per_hour: float
    budget_usd_per_day: float | None
    hard: bool

    def to_json(self) -> dict[str, Any]:
        return {"today_usd": round(self.today_usd, 6), "projected_usd": round(self.projected_usd, 6),
                "burn_usd_per_hour": round(self.burn_usd_per_hour, 6),
                "budget_usd_per_day": self.budget_usd_per_day, "budget_hard": self.hard}


@dataclass(frozen=True)
class PoolSizing:
    """Why a pool has the size it has: the sizing, the demand it was sized from and the money."""

    sizing: Sizing
    demand: DemandView
    spend: Spend
    budget: BudgetVerdict

    def to_json(self) -> dict[str, Any]:
        return {"ready_target": self.sizing.ready_target, "why": self.sizing.why,
                "creates_allowed": self.sizing.creates_allowed, "over_budget": self.budget.over,
                "demand": self.demand.to_json(), "spend": self.spend.to_json()}


def _midnight(now: float) -> float:
    """The start of ``now``'s day (UTC): a budget is per day."""
    return datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


class Costs:
    """Metering, demand and budgets of every pool under one key prefix."""

    def __init__(self, redis_client: redis.Redis, *, prices: PriceTable, prefix: str = "hearth",
                 retention_days: float = 35.0, budget: Budget | None = None, fast_tau: float = 20.0,
                 slow_tau: float = 900.0, ready_default: float = 10.0, replenish_seconds: float = 0.0) -> None:
        """``replenish_seconds``: the heartbeat interval, how long a taken spare may wait before its
        replacement is asked for (``sizing.spares_for``)."""
        self.redis = redis_client
        self.prices = prices
        self.default_budget = budget
        self.replenish_seconds = replenish_seconds
        self.ledger = CostLedger(redis_client, prices, prefix=prefix, retention_days=retention_days)
        self.demand = DemandStore(redis_client, prefix=prefix, fast_tau=fast_tau, slow_tau=slow_tau,
                                  ready_default=ready_default, recent_window=replenish_seconds or 10.0)
        self._over: dict[str, bool] = {}  # last verdict per pool: one log line per change, not per tick

    def __repr__(self) -> str:
        return f"Costs(ledger={self.ledger!r})"

    def budget_of(self, spec: PoolSpec) -> Budget | None:
        return spec.budget or self.default_budget

    def spend(self, spec: PoolSpec, records: Sequence[ContainerRecord], now: float, *,
              today: float | None = None) -> Spend:
        """``today``: the pool's spend today, already read (``queue_today``); else read now."""
        price = self.prices.tier(spec.container.memory_limit)
        if today is None:
            today = sum(row.usd for row in self.ledger.read([spec.name], _midnight(now), now))
        budget = self.budget_of(spec)
        return Spend(today_usd=today, projected_usd=projected_usd(records, now, price),
                     burn_usd_per_hour=burn_rate(records, price),
                     budget_usd_per_day=budget.usd_per_day if budget else None, hard=bool(budget and budget.hard))

    def spend_counted(self, spec: PoolSpec, view: PoolView, now: float, *, today: float | None = None) -> Spend:
        """As :meth:`spend`, from the pool's counters instead of every record: the burn is the count
        of billed containers, the projection the sum of their deadlines less now, plus what the
        overdue ones (all read by the view: something is due for them) would add below zero.
        Equal to :meth:`spend` when a container's minimum ends before its deadline (an expiry at
        least the price's minimum: 20 against 5 minutes by default). ``today``: the pool's spend
        today, already read (``queue_today``); else read now."""
        price = self.prices.tier(spec.container.memory_limit)
        overdue = sum(now - r.deadline for r in view.records
                      if r.deadline is not None and r.deadline < now and r.container_id is not None
                      and r.state not in (State.GONE, State.EXPIRED))
        remaining = view.deadline_sum - view.deadline_count * now + overdue
        return self._spend(spec, now, projected=price.usd(max(0.0, remaining)),
                           burn=view.meter.total * price.usd_per_hour, today=today)

    def _spend(self, spec: PoolSpec, now: float, *, projected: float, burn: float,
               today: float | None = None) -> Spend:
        if today is None:
            today = sum(row.usd for row in self.ledger.read([spec.name], _midnight(now), now))
        budget = self.budget_of(spec)
        return Spend(today_usd=today, projected_usd=projected, burn_usd_per_hour=burn,
                     budget_usd_per_day=budget.usd_per_day if budget else None, hard=bool(budget and budget.hard))

    def queue_today(self, pipe: Any, pool: str, now: float) -> None:
        """The pool's spend today (UTC), one command queued on ``pipe``; its reply goes to
        ``ledger.spent_reply``."""
        self.ledger.spent(pool, _midnight(now), now, pipe=pipe)

    def size(self, spec: PoolSpec, records: Sequence[ContainerRecord], now: float, *, min_ready: int,
             buffer: int | str, leased: int, commit: bool = False, spend: Spend | None = None,
             demand: DemandView | None = None, writes: Any = None) -> PoolSizing:
        """The pool's READY target now. ``commit`` (the heartbeat's tick only) updates the demand
        estimate and logs a budget change; ``hearth plan`` and ``status`` leave both alone.
        ``spend``: already known (from the counters); else computed from ``records``. ``demand``:
        already read (and, with ``commit``, its fold queued by the caller); else read now.
        ``writes``: a pipeline the refusal is queued on (the tick's one write pipeline), else sent now."""
        if demand is None:
            demand = self.demand.view(spec.name, now, commit=commit)
        spend = spend if spend is not None else self.spend(spec, records, now)
        verdict = BudgetVerdict()
        # One more container would cost at least its idle expiry: over when that would not fit.
        price = self.prices.tier(spec.container.memory_limit)
        one_more = price.usd(price.billed_seconds(spec.container.expires_after_seconds))
        if (spend.budget_usd_per_day is not None
                and spend.today_usd + spend.projected_usd + one_more > spend.budget_usd_per_day):
            verdict = BudgetVerdict(over=True, hard=spend.hard, reason=(
                f"budget ${spend.budget_usd_per_day:g}/day: spent ${spend.today_usd:.2f} today + "
                f"${spend.projected_usd:.2f} committed"))
        auto = AutoBuffer(spec.demand.target_wait_seconds, spec.demand.percentile) if buffer == "auto" else None
        sizing = size_pool(min_ready=min_ready, buffer=None if auto else int(buffer), max_total=spec.max_total,
                           leased=leased, waiting=demand.waiting, rate=demand.rate,
                           ready_seconds=demand.ready_seconds, auto=auto, budget=verdict,
                           replenish_seconds=self.replenish_seconds)
        if commit:
            self._publish_refusal(spec.name, verdict, pipe=writes)
        if commit and self._over.get(spec.name, False) != verdict.over:
            self._over[spec.name] = verdict.over
            if verdict.over:
                log_event(log, "budget.reached", pool=spec.name, reason=verdict.reason, hard=verdict.hard,
                          level=logging.WARNING)
            else:
                log_event(log, "budget.ok", pool=spec.name)
        return PoolSizing(sizing=sizing, demand=demand, spend=spend, budget=verdict)

    def refusal_key(self, pool: str) -> str:
        return f"{self.ledger.prefix}:pool:{pool}:budget-refusal"

    def _publish_refusal(self, pool: str, verdict: BudgetVerdict, *, pipe: Any = None) -> None:
        # Leases read this only when the pool is empty, so a hard budget costs the warm path nothing.
        # It lapses by itself if the heartbeat stops: a stale refusal must not outlive its reason.
        target = self.redis if pipe is None else pipe
        if verdict.over and verdict.hard:
            target.set(self.refusal_key(pool), verdict.reason or "over budget", ex=REFUSAL_TTL)
        else:
            target.delete(self.refusal_key(pool))

    def refusal(self, pool: str) -> str | None:
        """Why leases of ``pool`` are refused at once (a hard budget), or None."""
        raw = self.redis.get(self.refusal_key(pool))
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

    def hold_surplus_seconds(self, spec: PoolSpec) -> float:
        """How long a surplus READY container is kept: while its billed minimum is still running."""
        return self.prices.tier(spec.container.memory_limit).billed_seconds(0.0)

    def meter(self, spec: PoolSpec, records: Sequence[ContainerRecord], now: float, observer: Observer) -> None:
        tier = spec.container.memory_limit
        accrual = self.ledger.tick(spec.name, tier, records, now)
        price = self.prices.tier(tier)
        usd = price.usd(accrual.seconds()) + sum(d for _, d in accrual.minimum_usd)
        if accrual.spans or accrual.minimum_usd:
            observer.cost(spec.name, tier, {c: accrual.seconds(c) for c in CATEGORIES}, usd)

    def meter_counted(self, spec: PoolSpec, advance: MeterAdvance, observer: Observer, *,
                      writes: Any = None) -> None:
        """Bill one tick's advance of the pool's counters (``PoolStore.meter_advance``); ``writes``:
        a pipeline the bill is queued on (the tick's one write pipeline), else sent now."""
        tier = spec.container.memory_limit
        accrual = self.ledger.bill(spec.name, tier, advance, pipe=writes)
        usd = self.prices.tier(tier).usd(accrual.seconds()) + sum(d for _, d in accrual.minimum_usd)
        if accrual.spans or accrual.minimum_usd:
            observer.cost(spec.name, tier, {c: accrual.seconds(c) for c in CATEGORIES}, usd)

    def lease_counters(self, spec: PoolSpec, now: float) -> list[tuple[str, tuple[Any, ...]]]:
        """The Redis commands that count one lease (demand rate, leases served): the lease faces run
        them, so the sync and the async face count alike."""
        bucket = self.ledger.bucket_key(spec.name, now)
        hour = bucket.rsplit(":", 1)[-1]
        return [
            ("hincrby", (self.demand.key(spec.name), "leases", 1)),
            ("hincrby", (bucket, f"leases:{spec.container.memory_limit}", 1)),
            ("expire", (bucket, self.ledger.retention)),
            ("zadd", (self.ledger.hours_key(spec.name), {hour: (now // 3600) * 3600})),
        ]

    def report(self, pools: Iterable[str], since: float, now: float) -> list[PoolCost]:
        return self.ledger.read(pools, since, now)
