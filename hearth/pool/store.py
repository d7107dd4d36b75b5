"""Pool state in Redis: container records, atomic state transitions, counts, the create breaker.

Redis is the single source of truth for every process on every host: there are no in-process
locks here, every change is one Lua script (``scripts.py``) that checks and writes atomically.
A provision task writes an *intent* (a CREATING record with no container id) before it calls
create, so that a crash between the call and the record update leaves a named intent the
reconcile can resolve, never an unowned container.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from hearth.clock import Clock
from hearth.errors import Conflict, LeaseError, StateStoreError
from hearth.events import redact_text
from hearth.pool import scripts
from hearth.pool.model import MAX_ERROR_CHARS, ContainerRecord, State, can_transition

# Fields a transition may not change through ``**changes``: identity, and what the store owns.
_PROTECTED = frozenset({"name", "pool", "state", "updated_at", "created_at"})
_TEMPLATE: dict[str, Any] = {"name": "x", "pool": "x", "created_at": 0.0, "updated_at": 0.0}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _states(states: State | Iterable[State] | None) -> tuple[State, ...]:
    if states is None:
        return ()
    if isinstance(states, State):
        return (states,)
    return tuple(State(s) for s in states)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerPolicy:
    """``threshold`` consecutive create failures within ``window`` s open the breaker for ``cooldown`` s."""

    threshold: int = 5
    window: float = 600.0
    cooldown: float = 300.0


@dataclass(frozen=True)
class BreakerStatus:
    """A pool's create breaker as read from Redis; ``reason`` is operator-facing and secret-free.

    ``permanent``: opened by a create that no retry can mend (a missing secret variable, a pools
    file the backend refuses): it stays OPEN with no cool-down until the planner sees the pool's
    spec (``spec_hash``) or the environment (the variables in ``env``) change. ``env_retry`` is
    False once an environment change the workers did not share was already tried.
    """

    pool: str
    state: BreakerState
    failures: int = 0
    reason: str | None = None
    opened_at: float | None = None
    open_until: float | None = None
    permanent: bool = False
    spec_hash: str | None = None
    env: tuple[str, ...] = ()
    env_retry: bool = True

    @property
    def is_open(self) -> bool:
        """No creates at all (a half-open breaker lets one probe through)."""
        return self.state is BreakerState.OPEN

    def describe(self) -> str:
        if self.state is BreakerState.CLOSED:
            return "closed"
        if self.permanent:
            return f"open until the pools file or the environment changes: {self.reason or 'unknown'}"
        until = f" until {self.open_until:.0f}" if self.open_until is not None else ""
        return f"{self.state.value} after {self.failures} create failures{until}: {self.reason or 'unknown'}"


@dataclass(frozen=True)
class MeterCounts:
    """Containers billed now per category (a container behind the record, not GONE or EXPIRED)."""

    idle: int = 0
    leased: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.idle + self.leased + self.other

    @classmethod
    def of(cls, records: Iterable[ContainerRecord]) -> MeterCounts:
        n = {"idle": 0, "leased": 0, "other": 0}
        for r in records:
            if r.container_id is None or r.state in (State.GONE, State.EXPIRED):
                continue
            n["idle" if r.state is State.READY else "leased" if r.state is State.LEASED else "other"] += 1
        return cls(**n)


@dataclass(frozen=True)
class MeterAdvance:
    """What one tick bills for a pool: container-seconds per category in ``(since, until]``, and
    the lives that ended meanwhile (end, lived). ``first``: the counters' clock only started."""

    since: float
    until: float
    seconds: dict[str, float]
    ended: list[tuple[float, float]] = field(default_factory=list)
    first: bool = False


@dataclass(frozen=True)
class PoolView:
    """A pool as a steady tick sees it: every count, and only the records something may be due for."""

    pool: str
    counts: dict[State, int]
    records: list[ContainerRecord]
    digests: dict[str, int]  # inputs digest -> READY records holding it
    started: bool  # the counters are started (else: recount, and read every record this time)
    meter: MeterCounts
    deadline_sum: float  # of the billed containers that have a deadline
    deadline_count: int
    intents: int = 0  # intents ever written (``PoolStore.intents_written``), in the same snapshot
    draining: bool = False
    breaker: BreakerStatus | None = None


class PoolStore:
    """Records of every container Hearth owns, per pool, in Redis under ``prefix``."""

    def __init__(
        self,
        redis_client: redis.Redis,
        clock: Clock,
        *,
        prefix: str = "hearth",
        breaker: BreakerPolicy | None = None,
    ) -> None:
        self.redis = redis_client
        self.clock = clock
        self.prefix = prefix
        self.breaker_policy = breaker or BreakerPolicy()
        self._write_intent = redis_client.register_script(scripts.WRITE_INTENT)
        self._transition = redis_client.register_script(scripts.TRANSITION)
        self._forget = redis_client.register_script(scripts.FORGET)
        self._breaker_failure = redis_client.register_script(scripts.BREAKER_FAILURE)
        self._breaker_allow = redis_client.register_script(scripts.BREAKER_ALLOW)
        self._breaker_open = redis_client.register_script(scripts.BREAKER_OPEN)
        self._breaker_lift = redis_client.register_script(scripts.BREAKER_LIFT)
        self._recount = redis_client.register_script(scripts.METER_RECOUNT)
        self._meter_advance = redis_client.register_script(scripts.METER_ADVANCE)
        self._view = redis_client.register_script(scripts.TICK_VIEW)
        self._get_record = redis_client.register_script(scripts.GET_RECORD)

    def __repr__(self) -> str:
        return f"PoolStore(prefix={self.prefix!r})"

    # --- keys ------------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def pool_key(self, pool: str, suffix: str) -> str:
        return self.key("pool", pool, suffix)

    def health_key(self, component: str) -> str:
        return self.key("health", component)

    def _call(self, script: Any, *args: Any) -> Any:
        try:
            return script(keys=[], args=[self.prefix, *args])
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    def _cmd(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    # --- records ---------------------------------------------------------------------------------

    def write_intent(
        self,
        pool: str,
        name: str,
        *,
        inputs_digest: str = "",
        expires_minutes: int = 20,
        attempts: int = 0,
    ) -> ContainerRecord:
        """Record that ``name`` is about to be created in ``pool``; call BEFORE the create call.

        Idempotent by name: if a record already exists it is returned unchanged, so a retried
        provision adopts the earlier intent (and its container id, if the create got that far).
        """
        now = self.clock.now()
        record = ContainerRecord(
            name=name,
            pool=pool,
            state=State.CREATING,
            created_at=now,
            updated_at=now,
            inputs_digest=inputs_digest,
            expires_minutes=expires_minutes,
            attempts=attempts,
        )
        reply = self._call(self._write_intent, name, pool, record.to_json())
        return ContainerRecord.from_json(_text(reply[1]))

    def get(self, name: str) -> ContainerRecord | None:
        raw = self._call(self._get_record, name)  # the name's pool and its record, one round trip
        return None if raw is None else ContainerRecord.from_json(raw)

    def by_container_id(self, container_id: str) -> ContainerRecord | None:
        name = self._cmd(self.redis.hget, self.key("cids"), container_id)
        return None if name is None else self.get(_text(name))

    def records(self, pool: str, states: State | Iterable[State] | None = None) -> list[ContainerRecord]:
        """Every record of ``pool`` (optionally only those in ``states``), oldest first."""
        wanted = set(_states(states))
        raws = self._cmd(self.redis.hvals, self.pool_key(pool, "records"))
        records = [ContainerRecord.from_json(raw) for raw in raws]
        if wanted:
            records = [r for r in records if r.state in wanted]
        return sorted(records, key=lambda r: (r.created_at, r.name))

    def pools(self) -> list[str]:
        return sorted(_text(p) for p in self._cmd(self.redis.smembers, self.key("pools")))

    def counts(self, pool: str) -> dict[State, int]:
        """Records per state for one pool: one round trip of ZCARDs, cheap at any pool size."""
        return self.all_counts([pool])[pool]

    def all_counts(self, pools: Iterable[str] | None = None) -> dict[str, dict[State, int]]:
        names = list(pools) if pools is not None else self.pools()
        pipe = self.redis.pipeline(transaction=False)
        for pool in names:
            for state in State:
                pipe.zcard(self.pool_key(pool, f"state:{state.value}"))
        values = iter(self._cmd(pipe.execute))
        return {pool: {state: int(next(values)) for state in State} for pool in names}

    def _patch(self, changes: Mapping[str, Any]) -> str:
        bad = set(changes) - (set(ContainerRecord.model_fields) - _PROTECTED)
        if bad:
            raise ValueError(f"cannot change {sorted(bad)} through a transition")
        # Validate (and round timestamps) with the model itself, then send only what changed.
        checked = ContainerRecord.model_validate({**_TEMPLATE, **changes})
        return json.dumps(checked.model_dump(mode="json", include=set(changes)))

    def transition(
        self,
        name: str,
        from_states: State | Iterable[State],
        to_state: State,
        **changes: Any,
    ) -> ContainerRecord:
        """Compare-and-set: move ``name`` to ``to_state`` only if it is in one of ``from_states``.

        Raises :class:`~hearth.errors.Conflict` when the record is missing or in another state
        (someone else moved it first). ``changes`` sets other fields in the same atomic step.
        """
        froms = _states(from_states)
        if not froms:
            raise ValueError("from_states must name at least one state")
        for state in froms:
            if not can_transition(state, to_state):
                raise ValueError(f"{state.value} -> {to_state.value} is not a transition of the state machine")
        return self._apply("name", name, froms, to_state, self._patch(changes))

    def update(self, name: str, expect_states: State | Iterable[State], **changes: Any) -> ContainerRecord:
        """Change fields of ``name`` without moving it, if it is (still) in one of ``expect_states``."""
        froms = _states(expect_states)
        if not froms:
            raise ValueError("expect_states must name at least one state")
        return self._apply("name", name, froms, None, self._patch(changes))

    def _apply(
        self,
        kind: str,
        ref: str,
        froms: tuple[State, ...],
        to_state: State | None,
        patch: str,
        *,
        lease_id: str | None = None,
        token: int | None = None,
    ) -> ContainerRecord:
        args = self._transition_args(kind, ref, froms, to_state, patch, lease_id=lease_id, token=token)
        return self._transition_reply(self._call(self._transition, *args), ref, froms, to_state)

    # The TRANSITION script's arguments and the meaning of its reply, without IO: the async lease
    # face (hearth/pool/async_leases.py) runs the same script on redis.asyncio with these two.

    def _transition_args(
        self,
        kind: str,
        ref: str,
        froms: tuple[State, ...],
        to_state: State | None,
        patch: str,
        *,
        lease_id: str | None = None,
        token: int | None = None,
    ) -> tuple[str, ...]:
        return (
            kind,
            ref,
            ",".join(s.value for s in froms),
            to_state.value if to_state is not None else "",
            patch,
            repr(round(self.clock.now(), 3)),
            lease_id or "",
            "" if token is None else str(token),
        )

    def _transition_reply(
        self, reply: Any, ref: str, froms: tuple[State, ...], to_state: State | None
    ) -> ContainerRecord:
        status = _text(reply[0])
        if status == "ok":
            return ContainerRecord.from_json(_text(reply[1]))
        target = f"{to_state.value}" if to_state is not None else "update"
        if status == "missing":
            raise Conflict(f"{ref}: no such record ({target})")
        found = _text(reply[1])
        if status == "stale":
            raise LeaseError(f"{ref}: the lease is no longer held (record is {found})")
        expected = "|".join(s.value for s in froms)
        raise Conflict(f"{ref}: expected {expected}, found {found} ({target})")

    def fail(self, name: str, from_states: State | Iterable[State], error: str) -> ContainerRecord:
        """Mark ``name`` FAILED with a short operator-facing reason (never put secrets in it)."""
        return self.transition(name, from_states, State.FAILED, error=error[:MAX_ERROR_CHARS])

    def forget(self, name: str, *, states: State | Iterable[State] | None = None) -> bool:
        """Delete the record (after GONE, or a dead intent). False if there was none.

        With ``states``, only a record in one of them is deleted; otherwise Conflict.
        """
        wanted = _states(states)
        reply = self._call(self._forget, name, ",".join(s.value for s in wanted), repr(round(self.clock.now(), 3)))
        status = _text(reply[0])
        if status == "conflict":
            raise Conflict(f"{name}: not forgotten, it is {_text(reply[1])}")
        return status == "ok"

    # --- indexes: what a steady tick reads instead of every record --------------------------------

    def intents_written(self, pool: str) -> int:
        """Intents ever written in ``pool`` (a plan's provision, less those written since it)."""
        raw = self._cmd(self.redis.get, self.pool_key(pool, "intents"))
        return int(raw) if raw is not None else 0

    def recount(self, pool: str) -> MeterCounts:
        """Count every record of ``pool`` once, in Lua, and set the counters (starts or repairs them)."""
        reply = self._call(self._recount, pool, repr(round(self.clock.now(), 3)))
        return MeterCounts(idle=int(reply[0]), leased=int(reply[1]), other=int(reply[2]))

    def counters_match(self, pool: str) -> bool:
        """Whether the counters equal a full recount from the records (the slow consistency check)."""
        records = self.records(pool)
        view = self.view(pool, self.clock.now(), ready_horizon=float("-inf"), leased_horizon=float("-inf"),
                         surplus=0, lapsed_before=float("-inf"))
        if not view.started:
            return False
        want = MeterCounts.of(records)
        digests: dict[str, int] = {}
        for r in records:
            if r.state is State.READY:
                digests[r.inputs_digest] = digests.get(r.inputs_digest, 0) + 1
        counts = {state: sum(1 for r in records if r.state is state) for state in State}
        return view.meter == want and view.digests == digests and view.counts == counts

    def meter_advance(self, pool: str, now: float, *, retention: int = 35 * 86400) -> MeterAdvance | None:
        """Bill ``pool``'s container time since its previous tick: None when the counters are not
        started (``recount`` first); an empty advance for the first or an old tick."""
        return self.meter_advance_reply(self._call(self._meter_advance, *self._advance_args(pool, now, retention)), now)

    def queue_meter_advance(self, pipe: Any, pool: str, now: float, *, retention: int = 35 * 86400) -> None:
        """:meth:`meter_advance` queued on ``pipe`` (the tick's one read pipeline of every pool);
        its reply goes to :meth:`meter_advance_reply`."""
        self._meter_advance(keys=[], args=[self.prefix, *self._advance_args(pool, now, retention)], client=pipe)

    @staticmethod
    def _advance_args(pool: str, now: float, retention: int) -> tuple[str, ...]:
        return pool, repr(round(now, 3)), str(int(retention))

    @staticmethod
    def meter_advance_reply(reply: Any, now: float) -> MeterAdvance | None:
        status = _text(reply[0])
        if status == "cold":
            return None
        if status == "old":
            return MeterAdvance(since=now, until=now, seconds={})
        if reply[1] is None:
            return MeterAdvance(since=now, until=now, seconds={}, first=True)
        since = float(_text(reply[1]))
        seconds = dict(zip(("idle", "leased", "other"), (float(_text(v)) for v in reply[2:5]), strict=True))
        ended = []
        for raw in reply[5:]:
            end, _, lived = _text(raw).partition(",")
            ended.append((float(end), float(lived)))
        return MeterAdvance(since=since, until=now, seconds=seconds, ended=ended)

    def view(self, pool: str, now: float, *, ready_horizon: float, leased_horizon: float, surplus: int,
             lapsed_before: float, harvest_before: float | None = None) -> PoolView:
        """The counts of ``pool`` and only the records something may be due for (``scripts.TICK_VIEW``)."""
        args = self._view_args(pool, now, ready_horizon=ready_horizon, leased_horizon=leased_horizon,
                               surplus=surplus, lapsed_before=lapsed_before, harvest_before=harvest_before)
        return self.view_reply(pool, self._call(self._view, *args))

    def queue_view(self, pipe: Any, pool: str, now: float, *, ready_horizon: float, leased_horizon: float,
                   surplus: int, lapsed_before: float, harvest_before: float | None = None) -> None:
        """:meth:`view` queued on ``pipe``, so that one round trip reads every pool of a tick; its
        reply goes to :meth:`view_reply`."""
        args = self._view_args(pool, now, ready_horizon=ready_horizon, leased_horizon=leased_horizon,
                               surplus=surplus, lapsed_before=lapsed_before, harvest_before=harvest_before)
        self._view(keys=[], args=[self.prefix, *args], client=pipe)

    @staticmethod
    def _view_args(pool: str, now: float, *, ready_horizon: float, leased_horizon: float, surplus: int,
                   lapsed_before: float, harvest_before: float | None) -> tuple[str, ...]:
        return (pool, repr(round(now, 3)), repr(ready_horizon), repr(leased_horizon), str(max(0, surplus)),
                repr(lapsed_before), "" if harvest_before is None else repr(harvest_before))

    def view_reply(self, pool: str, reply: Any) -> PoolView:
        """The :class:`PoolView` of one ``TICK_VIEW`` reply."""
        states = list(State)
        counts = {state: int(reply[i]) for i, state in enumerate(states)}
        flat = reply[len(states)]
        meter = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
        dflat = reply[len(states) + 1]
        digests = {_text(dflat[i]): int(dflat[i + 1]) for i in range(0, len(dflat), 2)}
        n = len(states)
        bflat = reply[n + 4]
        records = sorted((ContainerRecord.from_json(raw) for raw in reply[n + 5:]),
                         key=lambda r: (r.created_at, r.name))
        started = meter.get("v") == "1"
        return PoolView(
            pool=pool, counts=counts, records=records, digests={d: n for d, n in digests.items() if n > 0},
            started=started,
            meter=MeterCounts(idle=int(meter.get("n:idle", 0)), leased=int(meter.get("n:leased", 0)),
                              other=int(meter.get("n:other", 0))),
            deadline_sum=float(meter.get("dsum", 0.0)), deadline_count=int(meter.get("dn", 0)),
            intents=int(reply[n + 2]), draining=bool(int(reply[n + 3])),
            breaker=self._breaker_from(pool, {_text(bflat[i]): _text(bflat[i + 1]) for i in range(0, len(bflat), 2)}),
        )

    # --- breaker ---------------------------------------------------------------------------------

    def record_create_failure(self, pool: str, reason: str) -> BreakerStatus:
        """Count a failed create; opens the pool's breaker at ``threshold`` failures in a row."""
        policy = self.breaker_policy
        self._call(
            self._breaker_failure,
            pool,
            repr(round(self.clock.now(), 3)),
            str(policy.threshold),
            repr(float(policy.window)),
            repr(float(policy.cooldown)),
            reason[:MAX_ERROR_CHARS],
        )
        return self.breaker_state(pool)

    def open_breaker(
        self, pool: str, reason: str, *, permanent: bool, spec_hash: str = "", env: Iterable[str] = ()
    ) -> BreakerStatus:
        """Open the pool's breaker now, whatever the count, with ``reason`` (masked of secrets).

        ``permanent``: until :meth:`lift_breaker` (the planner, when ``spec_hash`` or the variables
        ``env`` change); otherwise for one cool-down, then the usual half-open probe.
        """
        self._call(
            self._breaker_open,
            pool,
            repr(round(self.clock.now(), 3)),
            repr(float(self.breaker_policy.cooldown)),
            redact_text(reason)[:MAX_ERROR_CHARS],
            "1" if permanent else "0",
            spec_hash,
            json.dumps(sorted(set(env))),
        )
        return self.breaker_state(pool)

    def lift_breaker(self, pool: str, opened_at: float, *, env_change: bool = False) -> bool:
        """End a permanent pause that opened at ``opened_at``; False when it is not that one any more.

        ``env_change``: lifted because its variables appeared where the planner runs; remembered,
        so that the same failure again (a worker without them) stays open instead of churning.
        """
        return bool(self._call(self._breaker_lift, pool, repr(round(opened_at, 3)), "env" if env_change else "spec"))

    def record_create_success(self, pool: str) -> BreakerStatus:
        """A create worked: the breaker closes (also ends a half-open probe)."""
        self._cmd(self.redis.delete, self.pool_key(pool, "breaker"))
        return BreakerStatus(pool=pool, state=BreakerState.CLOSED)

    def breaker_allows(self, pool: str) -> bool:
        """Whether a create may start now: always when closed, once per cool-down when half-open."""
        now = repr(round(self.clock.now(), 3))
        return bool(self._call(self._breaker_allow, pool, now, repr(float(self.breaker_policy.cooldown))))

    def breaker_state(self, pool: str) -> BreakerStatus:
        raw = self._cmd(self.redis.hgetall, self.pool_key(pool, "breaker"))
        return self._breaker_from(pool, {_text(k): _text(v) for k, v in raw.items()})

    def _breaker_from(self, pool: str, fields: dict[str, str]) -> BreakerStatus:
        failures = int(float(fields.get("failures", "0")))
        reason = fields.get("reason") or None
        if fields.get("state") != "open":
            return BreakerStatus(pool=pool, state=BreakerState.CLOSED, failures=failures, reason=reason)
        opened_at = float(fields.get("opened_at", "0"))
        if fields.get("permanent") == "1":
            env = json.loads(fields.get("env") or "[]")
            return BreakerStatus(
                pool=pool, state=BreakerState.OPEN, failures=failures, reason=reason, opened_at=opened_at,
                permanent=True, spec_hash=fields.get("spec_hash") or None,
                env=tuple(str(v) for v in env) if isinstance(env, list) else (),
                env_retry=fields.get("env_retry", "1") == "1",
            )
        open_until = float(fields.get("open_until", "0"))
        state = BreakerState.OPEN if self.clock.now() < open_until else BreakerState.HALF_OPEN
        return BreakerStatus(
            pool=pool, state=state, failures=failures, reason=reason, opened_at=opened_at, open_until=open_until
        )

    def reset_breaker(self, pool: str) -> None:
        self._cmd(self.redis.delete, self.pool_key(pool, "breaker"))

    # --- health ----------------------------------------------------------------------------------

    def beat(self, component: str, ttl: float, **info: Any) -> None:
        """Say ``component`` is alive for ``ttl`` s (with small JSON-able facts, never secrets)."""
        body = json.dumps({"at": round(self.clock.now(), 3), **info}, default=str)
        self._cmd(self.redis.set, self.health_key(component), body, px=max(1, int(ttl * 1000)))

    def health(self, component: str) -> dict[str, Any] | None:
        raw = self._cmd(self.redis.get, self.health_key(component))
        if raw is None:
            return None
        value = json.loads(raw)
        return value if isinstance(value, dict) else None
