"""One heartbeat tick, without the scheduler: read the state, plan every pool, apply the plan.

``Planner.plan`` turns the pools file and the records into actions with the pure reconcile (plus
the harvest rules of leased containers) and changes nothing, so ``hearth plan`` can print it.
``Applier.apply`` makes each action visible in Redis first (an intent, a state move, a pending
mark) and then hands it to ``enqueue`` — a callable, so this module knows nothing of Celery.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, ClassVar

from hearth.costs import PoolSizing, Spend
from hearth.errors import Conflict, HearthError, LeaseError
from hearth.events import log_event
from hearth.operations import missing_secret_vars, spec_hash
from hearth.pool.demand import DemandView
from hearth.pool.model import ContainerRecord, State, make_name
from hearth.pool.reconcile import (
    Action,
    Adopt,
    DeleteOrphan,
    DesiredPool,
    Forget,
    Provision,
    Reclaim,
    Refresh,
    RemoteContainer,
    Retire,
    Unread,
    find_orphans,
    ready_target,
    reconcile,
)
from hearth.pool.store import BreakerState, BreakerStatus, MeterAdvance, PoolView
from hearth.pool.wanted import FillRequests
from hearth.runtime import Runtime
from hearth.sessions.live import LiveSaves
from settings.pools import PoolSpec

log = logging.getLogger(__name__)

Enqueue = Callable[[str, list[Any]], None]
DEFAULT_STUCK_TIMEOUT = 900.0  # harvest/delete work without progress this long is issued again, s
COUNTER_CHECK_SECONDS = 3600  # a pool's counters are compared with a full recount this often
_CHECKED: dict[tuple[str, str], float] = {}  # (prefix, pool) -> when this process last looked
SPEC_CHANGED = "the pool's spec changed"
# SET NX PX of every key, one command: the pending marks of a tick's refreshes (1 = newly set).
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('SET', key, '1', 'NX', 'PX', ARGV[1]) and 1 or 0
end
return out
"""  # a breaker_retry; any other one is an environment change


@dataclass(frozen=True)
class HarvestDue(Action):
    """Harvest a leased container now: its ``every`` period passed, or it is close to its deadline."""

    kind: ClassVar[str] = "harvest"
    pool: str
    name: str
    container_id: str
    reason: str


@dataclass
class PoolPlan:
    """What the heartbeat would do for one pool now, and why."""

    pool: str
    desired_ready: int
    min_ready: int
    buffer: int | str
    max_total: int
    counts: dict[str, int]
    breaker: str
    breaker_reason: str | None
    draining: bool
    next_schedule_change: str | None
    actions: list[Action] = field(default_factory=list)
    # The state of every record when the plan was made: the applier moves records only from these.
    seen: dict[str, State] = field(default_factory=dict)
    error: str | None = None
    # Why the pool has this size: demand, time to ready, spend and budget (``hearth.costs``).
    sizing: PoolSizing | None = None
    # A create failed for a reason no retry mends: the pool creates nothing until its spec or the
    # environment changes. ``breaker_retry`` says which change the planner sees now (the applier
    # then lifts the pause and lets one create probe it); ``breaker_opened_at`` names the pause.
    breaker_permanent: bool = False
    breaker_retry: str | None = None
    breaker_opened_at: float | None = None
    # Intents the pool had when planned (a provision applied later subtracts those written since).
    intents_seen: int = 0
    read: int = 0  # records the plan read (a steady pool: only those something is due for)

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "desired": self.desired_ready,
            "min_ready": self.min_ready,
            "buffer": self.buffer,
            "max_total": self.max_total,
            "counts": self.counts,
            "breaker": self.breaker,
            "breaker_reason": self.breaker_reason,
            "breaker_permanent": self.breaker_permanent,
            "breaker_retry": self.breaker_retry,
            "draining": self.draining,
            "next_schedule_change": self.next_schedule_change,
            "error": self.error,
            "sizing": self.sizing.to_json() if self.sizing else None,
            "actions": [a.to_json() for a in self.actions],
        }


@dataclass
class _TickReads:
    """What one pipelined round trip read for every pool of a plan (``Planner._read_all``), and the
    pipeline the plan's writes (bills, demand folds, budget refusals) are queued on, sent once."""

    writes: Any
    inputs: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # pool -> (digest, error)
    views: dict[str, PoolView] = field(default_factory=dict)  # only the usable ones
    demand: dict[str, tuple[DemandView, dict[str, float] | None]] = field(default_factory=dict)  # (view, fold)
    today: dict[str, float] = field(default_factory=dict)  # spend today (UTC), USD
    advances: dict[str, MeterAdvance | None] = field(default_factory=dict)  # a committing tick's
    known: list[str] = field(default_factory=list)  # pools that ever had a record


def harvest_due(spec: PoolSpec, records: Sequence[ContainerRecord], now: float) -> list[HarvestDue]:
    """Leased containers whose outputs should be saved now (every ``outputs.every_seconds``, and
    before the container would expire: ``deadline - before_expiry_margin``)."""
    out = spec.outputs
    due: list[HarvestDue] = []
    for r in records:
        if r.state is not State.LEASED or r.container_id is None:
            continue
        last = r.last_harvest_at or r.leased_at or r.updated_at
        if r.deadline is not None and r.deadline - now <= out.before_expiry_margin_seconds and (
            r.last_harvest_at is None or r.last_harvest_at < r.deadline - out.before_expiry_margin_seconds
        ):
            due.append(HarvestDue(pool=r.pool, name=r.name, container_id=r.container_id, reason="before-expiry"))
        elif out.every_seconds is not None and now - last >= out.every_seconds:
            due.append(HarvestDue(pool=r.pool, name=r.name, container_id=r.container_id, reason="every"))
    return due


class Planner:
    """Reads the pools file and the records; produces a :class:`PoolPlan` per pool."""

    def __init__(self, runtime: Runtime, *, commit: bool = False, env: Mapping[str, str] | None = None,
                 full_read: bool = False) -> None:
        """``env``: where the planner looks for the variables a paused pool lacked (default ``os.environ``).
        ``full_read``: read every record of every pool and meter from them (the path before the
        indexes; ``bench/tick.py`` measures it as the baseline)."""
        self.rt = runtime
        self.full_read = full_read
        # Only the tick commits (meters container time, folds new leases into the demand estimate);
        # `hearth plan` and `status` plan with commit=False and change nothing.
        self.commit = commit
        self.env: Mapping[str, str] = os.environ if env is None else env

    def retry_reason(self, spec: PoolSpec, breaker: BreakerStatus) -> str | None:
        """Why a pool paused for a permanent create failure may try again now (None: it may not).

        Cheap, every tick: the spec's digest, and whether the missing secret variables are set here
        (where the heartbeat runs; workers normally share its environment, and when one does not, the
        store remembers the try and does not lift the same pause for the same reason again).
        """
        if not breaker.permanent:
            return None
        if breaker.spec_hash and breaker.spec_hash != spec_hash(spec):
            return SPEC_CHANGED
        if breaker.env and breaker.env_retry and not missing_secret_vars(spec.container, self.env) \
                and all(self.env.get(v) for v in breaker.env):
            return f"{', '.join(breaker.env)} now set"
        return None

    def drain_key(self, pool: str) -> str:
        return self.rt.store.pool_key(pool, "drain")

    def draining(self, pool: str) -> bool:
        return bool(self.rt.redis.exists(self.drain_key(pool)))

    def set_drain(self, pool: str, on: bool) -> None:
        if on:
            self.rt.redis.set(self.drain_key(pool), "1")
        else:
            self.rt.redis.delete(self.drain_key(pool))

    def desired(self, spec: PoolSpec, now: float, *, digest: str, draining: bool = False,
                sized: PoolSizing | None = None) -> DesiredPool:
        min_ready, buffer = (0, 0) if draining else spec.sizes_at(now)
        expires = spec.container.expires_after_minutes
        # Demand sizing and budgets set the READY target; a static buffer keeps the reconcile's rule.
        explicit = sized is not None and (buffer == "auto" or sized.budget.over)
        return DesiredPool(
            name=spec.name,
            min_ready=min_ready,
            buffer=0 if buffer == "auto" else int(buffer),
            ready=sized.sizing.ready_target if explicit and sized is not None else None,
            hold_surplus_seconds=self.rt.costs.hold_surplus_seconds(spec) if buffer == "auto" else 0.0,
            max_total=spec.max_total,
            keepalive_margin=min(float(spec.keepalive.margin_seconds), expires * 60 - 1.0),
            claim_margin=min(float(spec.lease.min_remaining_on_claim_seconds), expires * 60 - 1.0),
            inputs_digest=digest,
            expires_minutes=expires,
            orphan_grace=self.rt.settings.orphan_grace,
            create_timeout=self.rt.settings.create_timeout,
            stuck_timeout=max(self.rt.settings.create_timeout, DEFAULT_STUCK_TIMEOUT),
            name_prefix=self.rt.settings.name_prefix,
        )

    def remote(self) -> list[RemoteContainer]:
        """Every container the API lists (listing all containers touches none of them)."""
        prefix = self.rt.settings.name_prefix + "-"
        return [
            RemoteContainer(id=c.id, name=c.name, created_at=float(c.created_at), status=c.status)
            for c in self.rt.client.list_containers()
            if c.name.startswith(prefix)
        ]

    def plan(self, now: float | None = None, *, remote: list[RemoteContainer] | None = None,
             only: Iterable[str] | None = None) -> list[PoolPlan]:
        """Plans of every pool; ``only``: of those pools of the pools file alone (a fill request:
        no removed pools, no orphans)."""
        now = self.rt.clock.now() if now is None else now
        pools = self.rt.pools().pools
        specs = list(pools.values())
        if only is not None:
            wanted = set(only)
            specs = [spec for spec in specs if spec.name in wanted]
            remote = None  # a fill request: no removed pools, no orphans
        reads = None if self.full_read else self._read_all(specs, now, remote=remote, known=only is None)
        try:
            plans = [self._plan_pool(spec, now, remote, reads) for spec in specs]
        finally:
            if reads is not None:  # the bills, demand folds and refusals of every pool: one round trip
                self.rt.store._cmd(reads.writes.execute)
        if only is not None:
            return plans
        known = reads.known if reads is not None else self.rt.store.pools()
        # Pools removed from the pools file: let go of their idle containers, keep leased ones.
        for name in sorted(set(known) - set(pools)):
            records = self.rt.store.records(name)
            if not records:
                continue
            desired = DesiredPool(name=name, min_ready=0, max_total=0, name_prefix=self.rt.settings.name_prefix,
                                  orphan_grace=self.rt.settings.orphan_grace)
            plans.append(
                PoolPlan(pool=name, desired_ready=0, min_ready=0, buffer=0, max_total=0, counts=_counts(records),
                         breaker="closed", breaker_reason=None, draining=True, next_schedule_change=None,
                         actions=reconcile(desired, records, now, remote=remote, breaker_open=True),
                         seen={r.name: r.state for r in records})
            )
        if remote is not None:
            plans.extend(self._orphans(plans, remote, now))
        return plans

    def _read_all(self, specs: Sequence[PoolSpec], now: float, *, remote: list[RemoteContainer] | None,
                  known: bool) -> _TickReads:
        """What every pool's plan reads, in one pipelined round trip: each pool's index view
        (``TICK_VIEW``), demand, spend today and (a committing tick) meter advance, plus the pools
        that have records (``known``). A pool whose view cannot be used (counters not started, a
        rotation) is read in full later, as before."""
        store, costs = self.rt.store, self.rt.costs
        reads = _TickReads(writes=self.rt.redis.pipeline(transaction=False))
        pipe = self.rt.redis.pipeline(transaction=False)
        steps: list[tuple[str, str, int]] = []  # (pool, what, replies it takes), in queue order
        for spec in specs:
            name = spec.name
            try:
                reads.inputs[name] = (self.rt.inputs(spec)[1], None)
            except HearthError as exc:
                # One pool's broken input must not stop keepalive anywhere: keep what its containers
                # hold (no rotation), create nothing new, and say why.
                reads.inputs[name] = (None, f"inputs: {exc}")
            if remote is None and reads.inputs[name][0] is not None:
                store.queue_view(pipe, name, now, **self._horizons(spec, now))
                steps.append((name, "view", 1))
            steps.append((name, "demand", costs.demand.queue_view(pipe, name, now)))
            costs.queue_today(pipe, name, now)
            steps.append((name, "today", 1))
            if self.commit:
                store.queue_meter_advance(pipe, name, now, retention=costs.ledger.retention)
                steps.append((name, "advance", 1))
        if known:
            pipe.smembers(store.key("pools"))
        replies = store._cmd(pipe.execute)
        at = 0
        for name, what, n in steps:
            got = replies[at:at + n]
            at += n
            if what == "view":
                view = store.view_reply(name, got[0])
                digest = reads.inputs[name][0]
                assert digest is not None
                usable = self._usable(name, view, digest)
                if usable is not None:
                    reads.views[name] = usable
            elif what == "demand":
                reads.demand[name] = costs.demand.view_reply(got, now, commit=self.commit)
            elif what == "today":
                reads.today[name] = costs.ledger.spent_reply(got[0])
            else:
                reads.advances[name] = store.meter_advance_reply(got[0], now)
        if known:
            reads.known = sorted(_text(p) for p in replies[at])
        return reads

    def _horizons(self, spec: PoolSpec, now: float, surplus: int = 0) -> dict[str, Any]:
        """The view's arguments for ``spec``: what may be due for a READY or LEASED record now."""
        expires = spec.container.expires_after_minutes
        margin = min(float(spec.keepalive.margin_seconds), expires * 60 - 1.0)
        # READY ones are refreshed earlier when a lease wants more life (``DesiredPool.claim_margin``).
        claim = min(float(spec.lease.min_remaining_on_claim_seconds), expires * 60 - 1.0)
        every = spec.outputs.every_seconds
        return {"ready_horizon": now + max(margin, claim),
                "leased_horizon": now + max(margin, float(spec.outputs.before_expiry_margin_seconds)),
                "surplus": surplus, "lapsed_before": now, "harvest_before": None if every is None else now - every}

    def _usable(self, pool: str, view: PoolView, digest: str) -> PoolView | None:
        """``view``, or None when every record must be read: the counters are not started yet (a
        tick starts them now), or a rotation is under way."""
        if not view.started:
            if self.commit:  # the tick starts them; `hearth plan` and `status` write nothing
                self.rt.store.recount(pool)
            return None
        if any(d != digest for d in view.digests):
            return None  # READY containers with other inputs: rotation ranks all of them
        return view

    def _view(self, spec: PoolSpec, now: float, digest: str, surplus: int = 0) -> PoolView | None:
        """The pool through its indexes (``PoolStore.view``), read alone (a surplus beyond what the
        tick's view read); None when every record must be read (``_usable``)."""
        view = self.rt.store.view(spec.name, now, **self._horizons(spec, now, surplus))
        return self._usable(spec.name, view, digest)

    def _plan_pool(self, spec: PoolSpec, now: float, remote: list[RemoteContainer] | None,
                   reads: _TickReads | None) -> PoolPlan:
        """One pool's plan from what ``_read_all`` read (``reads``; None on the full-read path)."""
        store = self.rt.store
        error: str | None = None
        digest: str | None = None
        if reads is not None:
            digest, error = reads.inputs[spec.name]
        else:
            try:
                _, digest = self.rt.inputs(spec)
            except HearthError as exc:
                # One pool's broken input must not stop keepalive anywhere: keep what its containers
                # hold (no rotation), create nothing new, and say why.
                error = f"inputs: {exc}"
        view = reads.views.get(spec.name) if reads is not None else None
        if view is not None and view.breaker is not None:
            # One script read the records, the counts, the breaker, the drain mark and the intents.
            draining, breaker, intents = view.draining, view.breaker, view.intents
            records = view.records
        else:
            draining = self.draining(spec.name)
            breaker = store.breaker_state(spec.name)
            intents = store.intents_written(spec.name)  # before the records: a provision never fills twice
            records = store.records(spec.name)
        retry = self.retry_reason(spec, breaker)
        breaker_open = (breaker.state is BreakerState.OPEN and retry is None) or error is not None
        if digest is None:
            digest = _common_digest(records)
        counts_by_state = view.counts if view is not None else _state_counts(records)
        sized: PoolSizing | None = None
        if not draining:
            min_ready, buffer = spec.sizes_at(now)
            leased = counts_by_state[State.LEASED]
            costs = self.rt.costs
            spent: Spend | None = None
            demand: DemandView | None = None
            writes: Any = None
            if reads is not None:
                today = reads.today.get(spec.name)
                spent = costs.spend_counted(spec, view, now, today=today) if view is not None \
                    else costs.spend(spec, records, now, today=today)
                demand, fold = reads.demand[spec.name]
                writes = reads.writes
                if fold is not None:
                    costs.demand.queue_fold(writes, spec.name, now, fold)
            sized = costs.size(spec, records, now, min_ready=min_ready, buffer=buffer, leased=leased,
                               commit=self.commit, spend=spent, demand=demand, writes=writes)
            breaker_open = breaker_open or not sized.sizing.creates_allowed
            if self.commit:
                self.rt.observer.spend(spec.name, sized.spend.burn_usd_per_hour, sized.budget.over)
        desired = self.desired(spec, now, digest=digest, draining=draining, sized=sized)
        if view is not None:
            # Surplus READY beyond what the view read: read the ones with the least life, by name.
            lapsed = sum(1 for r in view.records if r.lease_lapsed(now, desired.lease_grace))
            surplus = view.counts[State.READY] - ready_target(desired, view.counts[State.LEASED] - lapsed)
            if surplus > sum(1 for r in view.records if r.state is State.READY):
                view = self._view(spec, now, digest, surplus=surplus) or view
                records = view.records
                counts_by_state = view.counts
        if self.commit:
            self._meter(spec, records, now, counted=view is not None, reads=reads)
        unread = Unread()
        if view is not None:
            unread = Unread(
                ready=max(0, view.counts[State.READY] - sum(1 for r in records if r.state is State.READY)),
                leased=max(0, view.counts[State.LEASED] - sum(1 for r in records if r.state is State.LEASED)),
            )
        actions: list[Action] = reconcile(
            desired,
            records,
            now,
            remote=remote,
            breaker_open=breaker_open,
            max_provision=1 if breaker.state is BreakerState.HALF_OPEN or retry is not None else None,
            unread=unread,
        )
        actions.extend(harvest_due(spec, records, now))
        counts = {state.value.lower(): n for state, n in counts_by_state.items() if n}
        change = spec.next_schedule_change(now)
        return PoolPlan(
            pool=spec.name,
            desired_ready=ready_target(desired, counts.get("leased", 0)),
            min_ready=desired.min_ready,
            buffer="auto" if spec.sizes_at(now)[1] == "auto" and not draining else desired.buffer,
            max_total=desired.max_total,
            counts=counts,
            breaker=breaker.state.value,
            breaker_reason=breaker.reason,
            draining=draining,
            next_schedule_change=change.astimezone(UTC).isoformat() if change else None,
            actions=actions,
            seen={r.name: r.state for r in records},
            error=error,
            sizing=sized,
            breaker_permanent=breaker.permanent,
            breaker_retry=retry,
            breaker_opened_at=breaker.opened_at,
            intents_seen=intents,
            read=len(records),
        )

    def _meter(self, spec: PoolSpec, records: list[ContainerRecord], now: float, *, counted: bool,
               reads: _TickReads | None = None) -> None:
        """Bill the pool's container time since its previous tick: from the counters (count x
        elapsed, kept by the scripts; the advance read with the tick's views, the bill queued on its
        write pipeline), or from every record on the full-read path."""
        store, costs = self.rt.store, self.rt.costs
        if self.full_read:
            costs.meter(spec, records, now, self.rt.observer)
            return
        retention = costs.ledger.retention
        advance = reads.advances.get(spec.name) if reads is not None else None
        if advance is None:
            # Counters not started when the tick read them (the view may have started them since).
            advance = store.meter_advance(spec.name, now, retention=retention)
        if advance is None:
            store.recount(spec.name)
            advance = store.meter_advance(spec.name, now, retention=retention)
        if advance is not None and advance.first:
            # The counters' clock starts now; up to now, bill once from the records (the old mark),
            # so that nothing between the last record-based tick and this one is lost.
            costs.meter(spec, store.records(spec.name) if counted else records, now, self.rt.observer)
            return
        if advance is not None:
            costs.meter_counted(spec, advance, self.rt.observer, writes=reads.writes if reads is not None else None)
            self._check_counters(spec.name)

    def _check_counters(self, pool: str) -> None:
        """Now and then (``COUNTER_CHECK_EVERY`` ticks of a pool), compare the counters with a full
        recount and repair them: they change only inside the scripts, so a mismatch means data was
        edited by hand or a script was cut short; logged, and repaired at once."""
        now = self.rt.clock.now()
        local = _CHECKED.get((self.rt.store.prefix, pool))
        if local is not None and now - local < COUNTER_CHECK_SECONDS:
            return  # this process checked lately (no round trip); across processes the key decides
        _CHECKED[(self.rt.store.prefix, pool)] = now
        key = self.rt.store.pool_key(pool, "checked")
        if not self.rt.redis.set(key, "1", nx=True, ex=COUNTER_CHECK_SECONDS):
            return
        if not self.rt.store.counters_match(pool):
            log_event(log, "pool.counters_repaired", pool=pool, level=logging.WARNING)
            self.rt.store.recount(pool)

    def _orphans(self, plans: list[PoolPlan], remote: list[RemoteContainer], now: float) -> list[PoolPlan]:
        """Orphans of pools that no per-pool plan covered (e.g. a pool removed from the file)."""
        store = self.rt.store
        known = [r for p in store.pools() for r in store.records(p)]
        orphans = find_orphans(
            remote, [r.name for r in known], [r.container_id for r in known if r.container_id], now,
            name_prefix=self.rt.settings.name_prefix, grace=self.rt.settings.orphan_grace,
        )
        covered = {a.container_id for p in plans for a in p.actions if isinstance(a, DeleteOrphan)}
        by_pool: dict[str, list[Action]] = {}
        for orphan in orphans:
            if orphan.container_id not in covered:
                by_pool.setdefault(orphan.pool or "-", []).append(orphan)
        return [
            PoolPlan(pool=name, desired_ready=0, min_ready=0, buffer=0, max_total=0, counts={}, breaker="closed",
                     breaker_reason=None, draining=True, next_schedule_change=None, actions=found)
            for name, found in sorted(by_pool.items())
        ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _common_digest(records: Sequence[ContainerRecord]) -> str:
    """The inputs digest most of a pool's containers hold (used when the inputs cannot be read)."""
    digests = [r.inputs_digest for r in records if r.inputs_digest]
    return max(set(digests), key=digests.count) if digests else ""


def _state_counts(records: Sequence[ContainerRecord]) -> dict[State, int]:
    counts = dict.fromkeys(State, 0)
    for r in records:
        counts[r.state] += 1
    return counts


def _counts(records: Sequence[ContainerRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        key = r.state.value.lower()
        counts[key] = counts.get(key, 0) + 1
    return counts


class Applier:
    """Makes each action visible in Redis, then enqueues its task. Safe to run on any replica."""

    def __init__(self, runtime: Runtime, enqueue: Enqueue, *, rng: random.Random | None = None,
                 pending_ttl: float = 60.0, still_current: Callable[[], bool] | None = None) -> None:
        self.rt = runtime
        self.enqueue = enqueue
        self.rng = rng or random.Random()
        self.pending_ttl = pending_ttl
        # Checked before every provision: a tick that outlived its lock (or its leader lease) must
        # not fill a gap that a newer tick is filling too.
        self.still_current = still_current or (lambda: True)
        self._claimed: dict[str, bool] = {}  # pending marks set ahead (``_claim``), by key

    def _once(self, kind: str, ref: str) -> bool:
        """True the first time within ``pending_ttl``: a task already queued is not queued again."""
        key = self.rt.store.key("pending", kind, ref)
        claimed = self._claimed.pop(key, None)
        if claimed is not None:
            return claimed
        return bool(self.rt.redis.set(key, "1", nx=True, px=max(1, int(self.pending_ttl * 1000))))

    def _claim(self, plans: Sequence[PoolPlan]) -> None:
        """The pending marks of every plan's refreshes and harvests in one round trip (a steady
        tick's actions are nearly all refreshes: one SET NX each would be a round trip each)."""
        keys: list[str] = []
        for plan in plans:
            keys += [self.rt.store.key("pending", "refresh", a.name) for a in plan.actions if isinstance(a, Refresh)]
            keys += [self.rt.store.key("pending", "harvest", a.container_id) for a in plan.actions
                     if isinstance(a, HarvestDue)]
        if len(keys) < 2:
            return
        claim = self.rt.redis.register_script(_CLAIM)  # no IO: the script is loaded on first use
        got = self.rt.store._cmd(claim, keys=keys, args=[max(1, int(self.pending_ttl * 1000))])
        for key, claimed in zip(keys, got, strict=True):
            self._claimed[key] = bool(claimed)

    def apply(self, plans: Sequence[PoolPlan]) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        try:
            self._claim(plans)
        except HearthError as exc:
            log.warning("could not mark refreshes pending: %s", exc)  # each is marked as it is applied
        for plan in plans:
            for action in plan.actions:
                try:
                    if isinstance(action, Provision):
                        action = self._still_needed(action, plan)
                        if action.count > 0 and plan.breaker_retry is not None:
                            self._lift(plan)
                    if self._apply(action, plan.seen.get(getattr(action, "name", ""))):
                        done.append(action.to_json())
                except (Conflict, LeaseError) as exc:
                    log.info("skipped %s: %s", action.kind, exc)  # the record moved: next tick decides again
                except HearthError as exc:
                    log.warning("could not apply %s: %s", action.kind, exc)
        return done

    def _lift(self, plan: PoolPlan) -> None:
        """End the pool's permanent pause before its probe create; Conflict when it changed since."""
        assert plan.breaker_opened_at is not None
        env_change = plan.breaker_retry != SPEC_CHANGED
        if not self.rt.store.lift_breaker(plan.pool, plan.breaker_opened_at, env_change=env_change):
            raise Conflict(f"pool {plan.pool}: its breaker changed since the plan")
        log_event(log, "pool.resumed", pool=plan.pool, why=plan.breaker_retry, reason=plan.breaker_reason)

    def _still_needed(self, action: Provision, plan: PoolPlan) -> Provision:
        """The provision less what was provisioned since the plan was made (a stale or repeated plan
        must not fill one gap twice), and never past ``max_total``."""
        store = self.rt.store
        added = store.intents_written(action.pool) - plan.intents_seen
        live = sum(n for state, n in store.counts(action.pool).items() if state is not State.GONE)
        room = plan.max_total - live if plan.max_total else action.count
        return Provision(pool=action.pool, count=max(0, min(action.count - added, room)))

    def _apply(self, action: Action, seen: State | None) -> bool:
        """Apply one action; ``seen`` is its record's state when planned (moves start only from it)."""
        store = self.rt.store
        if isinstance(action, Provision):
            if not self.still_current():
                raise Conflict("this tick lost its lock: leaving the provision to the current one")
            spec = self.rt.pool(action.pool)
            _, digest = self.rt.inputs(spec)
            for _ in range(action.count):
                name = make_name(self.rt.settings.name_prefix, action.pool, rng=self.rng)
                store.write_intent(action.pool, name, inputs_digest=digest,
                                   expires_minutes=spec.container.expires_after_minutes)
                self.enqueue("hearth.provision", [name])
                log_event(log, "container.provisioning", pool=action.pool, name=name)
            return action.count > 0
        if isinstance(action, Refresh):
            if self._once("refresh", action.name):
                self.enqueue("hearth.refresh", [action.name])
                return True
            return False
        if isinstance(action, Retire):
            record = store.get(action.name)
            if record is None or seen is None:
                return False
            if seen not in (State.HARVESTING, State.DELETING):
                # Only from the state the plan saw: a container leased since then is not retired.
                # A dead intent's container may only be known from the remote listing: keep its id
                # on the record, or the retire would delete nothing and leave an orphan.
                container_id = record.container_id or action.container_id
                target = State.HARVESTING if action.harvest and container_id else State.DELETING
                store.transition(action.name, seen, target, error=action.reason[:200], container_id=container_id)
            elif not self._once("retire", action.name):
                return False
            elif seen is State.HARVESTING and not action.harvest:
                # Stuck harvesting a container that is gone or expired: nothing left to save.
                store.transition(action.name, State.HARVESTING, State.DELETING, error=action.reason[:200])
            self.enqueue("hearth.retire", [action.name])
            return True
        if isinstance(action, Reclaim):
            if action.lease_id is not None:
                self.rt.leases.reclaim(action.name, action.lease_id)
            elif not self._once("retire", action.name):
                return False
            self.enqueue("hearth.retire", [action.name])
            log_event(log, "lease.reclaimed", pool=action.pool, name=action.name, lease_id=action.lease_id)
            return True
        if isinstance(action, Forget):
            # Only what the reconcile saw: a slow provision may have recorded its container since.
            record = store.get(action.name)
            if record is None or seen is None or (seen is State.CREATING and record.container_id is not None):
                return False
            return store.forget(action.name, states=(seen,))
        if isinstance(action, Adopt):
            if self._once("adopt", action.name):
                self.enqueue("hearth.adopt", [action.name])
                return True
            return False
        if isinstance(action, DeleteOrphan):
            if self._once("orphan", action.container_id):
                self.enqueue("hearth.delete_orphan", [action.container_id, action.name])
                return True
            return False
        if isinstance(action, HarvestDue):
            if self._once("harvest", action.container_id):
                self.enqueue("hearth.harvest", [action.container_id])
                return True
            return False
        raise HearthError(f"unknown action {action.kind!r}")


def _session_saves(runtime: Runtime, enqueue: Enqueue) -> list[dict[str, Any]]:
    """Live saves of active sessions due before the next tick (``hearth.sessions.live``); after the
    keepalive work, and never in its way: a failure here is logged, the tick still counts."""
    try:
        return LiveSaves(runtime).enqueue_due(enqueue)
    except HearthError as exc:
        log.warning("session saves not scheduled this tick: %s", exc)
        return []


def _release(runtime: Runtime, key: str, token: str) -> None:
    # Release only our own lock (a tick that outlived lock_ttl must not free another's).
    runtime.redis.eval(
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
        1, key, token,
    )


def tick(runtime: Runtime, enqueue: Enqueue, *, remote: list[RemoteContainer] | None = None,
         lock_ttl: float = 60.0, rng: random.Random | None = None,
         still_leader: Callable[[], bool] | None = None,
         session_saves: bool = True) -> list[dict[str, Any]] | None:
    """Plan and apply every pool under a Redis lock; None when another tick holds the lock.

    The heartbeat leader and on-demand reconciles (``hearth.reconcile``, ``hearth.reconcile_pool``)
    may overlap; the lock keeps two planners from provisioning the same gap twice. Fill requests
    made meanwhile (``hearth.pool.wanted``) are served right after, before this returns.
    ``session_saves=False``: the live saves due are claimed elsewhere (the heartbeat's own, more
    frequent job), not by this tick.
    """
    rng = rng or random.Random()
    key = runtime.store.key("lock", "tick")
    token = f"{rng.getrandbits(64):x}"
    if not runtime.redis.set(key, token, nx=True, px=int(lock_ttl * 1000)):
        return None
    try:
        def still_current() -> bool:
            held = runtime.redis.get(key) == token.encode()
            return held and (still_leader is None or still_leader())

        FillRequests(runtime.store).take()  # every pool is planned now: requests so far are served
        done = Applier(runtime, enqueue, rng=rng, still_current=still_current).apply(
            Planner(runtime, commit=True).plan(remote=remote)
        )
        if session_saves:
            done.extend(_session_saves(runtime, enqueue))
    finally:
        _release(runtime, key, token)
    done.extend(reconcile_wanted(runtime, enqueue, lock_ttl=lock_ttl, rng=rng) or [])
    return done


def reconcile_wanted(runtime: Runtime, enqueue: Enqueue, *, lock_ttl: float = 60.0,
                     rng: random.Random | None = None) -> list[dict[str, Any]] | None:
    """Plan and apply the pools a fill was asked for (``FillRequests``), until none is left.

    None when another planner holds the lock and something is still wanted: that planner looks
    again when it lets go (as this one does), and the caller may try again shortly. The planner
    that serves a request does not meter or fold demand (``commit=False``): the heartbeat's ticks
    own that, so an extra reconcile never shortens their windows.
    """
    rng = rng or random.Random()
    requests = FillRequests(runtime.store)
    key = runtime.store.key("lock", "tick")
    done: list[dict[str, Any]] = []
    while requests.waiting():
        token = f"{rng.getrandbits(64):x}"
        if not runtime.redis.set(key, token, nx=True, px=int(lock_ttl * 1000)):
            return None
        try:
            def still_current(token: str = token) -> bool:
                return bool(runtime.redis.get(key) == token.encode())

            pools = requests.take()
            if pools:
                log_event(log, "pools.fill_requested", pools=",".join(pools))
                done.extend(Applier(runtime, enqueue, rng=rng, still_current=still_current).apply(
                    Planner(runtime).plan(only=pools)
                ))
        finally:
            _release(runtime, key, token)
    return done
