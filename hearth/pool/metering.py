"""What Hearth's containers cost: billed container time per pool, memory tier and state, in Redis.

A container is billed from its create until its delete or its expiry, by memory tier, with a
minimum per container (``settings.prices``). Hearth knows each of those moments: the record's
``bound_at`` (the create answered), its ``deadline`` (expiry) and the time it went GONE.

The heartbeat bills from counters (``PoolStore.meter_advance``): every script that changes a record
also integrates, per pool and category, the count of billed containers times the time since the
previous change, so a tick reads a few numbers however many containers there are, and the time
is exact to every state change (``CostLedger.bill``). The record-based path below (``tick``,
``accrue``) is kept for the full-read planner and for the first tick of a pool's counters.

Record-based accrual is by heartbeat tick, not per transition: each tick adds, for every record
it already read, the part of the container's life that falls between the previous tick of that
pool and now, to the bucket of the record's present state (``idle`` = READY, ``leased`` = LEASED,
``other`` = creating, seeding, harvesting, deleting, failed). Lifetimes are exact to the record's
timestamps; the split between states is exact to one tick interval per state change. A container
that ended since the previous tick adds the rest of its life and, if it lived less than the
price's minimum, the billed remainder (in dollars; container-seconds stay real seconds).

The previous tick's time per pool only moves forward, atomically (a small script), so a deposed
leader that still finishes a tick cannot count a window twice. Aggregates are one Redis hash per pool per
hour (``{prefix}:cost:{pool}:{YYYYMMDDHH}``), kept ``retention_days``; their size is bounded by
pools x hours x tiers x states, whatever the number of containers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from hearth.errors import StateStoreError
from hearth.pool.model import ContainerRecord, State
from hearth.pool.store import MeterAdvance
from settings.prices import PriceTable, TierPrice

CATEGORIES = ("idle", "leased", "other")
HOUR = 3600.0
MAX_DIRECT_HOURS = 24 * 40  # a read of more hours than this goes through the pool's index of hours

# Move a pool's "metered until" mark forward to ARGV[1] and return the old mark; never backwards,
# so an old tick (a deposed leader's) neither counts a window twice nor reopens one.
_ADVANCE = """
local prev = redis.call('GET', KEYS[1])
if prev and tonumber(prev) >= tonumber(ARGV[1]) then return {prev, 0} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {prev or false, 1}
"""

# ARGV: the ledger's prefix, a pool, then hours (YYYYMMDDHH) -> the pool's dollars over those hours
# as a string ('%.17g': exact). The same sum as ``read`` (per tier in hour order, then over tiers by
# name), in one command instead of one HGETALL per hour: today's spend is read every tick.
_SPENT = """
local per = {}
for i = 3, #ARGV do
  local flat = redis.call('HGETALL', ARGV[1] .. ':cost:' .. ARGV[2] .. ':' .. ARGV[i])
  for j = 1, #flat, 2 do
    local tier = string.match(flat[j], '^usd:(.*)$')
    if tier then per[tier] = (per[tier] or 0.0) + tonumber(flat[j + 1]) end
  end
end
local tiers = {}
for tier in pairs(per) do table.insert(tiers, tier) end
table.sort(tiers)
local total = 0.0
for _, tier in ipairs(tiers) do total = total + per[tier] end
return string.format('%.17g', total)
"""

# ARGV: retention, the pool's hours index, then per hour: bucket key, hour, hour start, n, then n
# (field, amount) pairs. The writes of one bill (``CostLedger._write``) as one command.
_ADD = """
local retention, hours = ARGV[1], ARGV[2]
local i = 3
while i <= #ARGV do
  local key, hour, start, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  for _ = 1, n do
    redis.call('HINCRBYFLOAT', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('EXPIRE', key, retention)
  redis.call('ZADD', hours, start, hour)
end
redis.call('EXPIRE', hours, retention)
return 1
"""


def category(state: State) -> str:
    if state is State.READY:
        return "idle"
    if state is State.LEASED:
        return "leased"
    return "other"


@dataclass(frozen=True)
class Span:
    """Billed container time to add: ``seconds`` from ``start`` in ``category`` (may cross hours)."""

    category: str
    start: float
    seconds: float


@dataclass
class Accrual:
    """One pool's container time between two ticks, plus minimum top-ups of containers that ended."""

    spans: list[Span] = field(default_factory=list)
    minimum_usd: list[tuple[float, float]] = field(default_factory=list)  # (at, dollars)

    def seconds(self, cat: str | None = None) -> float:
        return sum(s.seconds for s in self.spans if cat is None or s.category == cat)


def _life(record: ContainerRecord) -> tuple[float, float | None] | None:
    """(start, end) of the container behind ``record``; end None while it lives; None if there is none."""
    if record.container_id is None:
        return None  # an intent that never created anything costs nothing
    start = record.bound_at if record.bound_at is not None else record.created_at
    if record.state is State.GONE:
        return start, record.updated_at
    if record.state is State.EXPIRED and record.deadline is not None:
        return start, min(record.deadline, record.updated_at)
    return start, None


def accrue(records: Iterable[ContainerRecord], last: float, now: float, price: TierPrice) -> Accrual:
    """Container time of ``records`` within ``(last, now]`` (pure)."""
    out = Accrual()
    if now <= last:
        return out
    for record in records:
        life = _life(record)
        if life is None:
            continue
        start, end = life
        lo = max(last, start)
        hi = now if end is None else min(now, end)
        if hi > lo:
            out.spans.append(Span(category(record.state), lo, hi - lo))
        if end is not None and last < end <= now:
            lived = max(0.0, end - start)
            extra = price.billed_seconds(lived) - lived
            if extra > 0:
                out.minimum_usd.append((end, price.usd(extra)))
    return out


def _hour(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y%m%d%H")


def _hour_start(hour: str) -> float:
    return datetime.strptime(hour, "%Y%m%d%H").replace(tzinfo=UTC).timestamp()


def _split_by_hour(start: float, seconds: float) -> list[tuple[str, float]]:
    parts: list[tuple[str, float]] = []
    t, end = start, start + seconds
    while t < end:
        boundary = (t // HOUR + 1) * HOUR
        step = min(end, boundary) - t
        parts.append((_hour(t), step))
        t += step
    return parts


@dataclass
class PoolCost:
    """What ``hearth cost`` shows for one pool and tier over a window."""

    pool: str
    tier: str
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    usd: float = 0.0
    leases: int = 0

    @property
    def usd_per_lease(self) -> float | None:
        return self.usd / self.leases if self.leases else None

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool, "tier": self.tier,
            "container_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "usd": round(self.usd, 6), "leases": self.leases,
            "usd_per_lease": None if self.usd_per_lease is None else round(self.usd_per_lease, 6),
        }


class CostLedger:
    """Per pool, per hour aggregates of billed container time and dollars, in Redis."""

    def __init__(self, redis_client: redis.Redis, prices: PriceTable, *, prefix: str = "hearth",
                 retention_days: float = 35.0) -> None:
        self.redis = redis_client
        self.prices = prices
        self.prefix = prefix
        self.retention = int(retention_days * 86400)
        self._advance = redis_client.register_script(_ADVANCE)
        self._spent = redis_client.register_script(_SPENT)
        self._add = redis_client.register_script(_ADD)

    def __repr__(self) -> str:
        return f"CostLedger(prefix={self.prefix!r})"

    def _key(self, pool: str, hour: str) -> str:
        return f"{self.prefix}:cost:{pool}:{hour}"

    def _last_key(self, pool: str) -> str:
        return f"{self.prefix}:cost-last:{pool}"

    def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    def tick(self, pool: str, tier: str, records: Sequence[ContainerRecord], now: float) -> Accrual:
        """Account ``pool``'s container time since its previous tick (the first tick only starts the clock)."""
        previous, moved = self._run(self._advance, keys=[self._last_key(pool)], args=[repr(now), self.retention])
        if not moved or previous is None:
            return Accrual()
        last = float(previous)
        price = self.prices.tier(tier)
        accrual = accrue(records, last, now, price)
        self.record(pool, tier, accrual)
        return accrual

    def bill(self, pool: str, tier: str, advance: MeterAdvance, *, pipe: Any = None) -> Accrual:
        """Bill what the pool's counters integrated over one tick (``PoolStore.meter_advance``).

        The container-seconds are exact to every state change (the scripts integrate count x
        elapsed at each one); a window that crosses an hour is split in proportion to time, exact
        unless a state changed inside that one window. Lives that ended pay their minimum once.
        ``pipe``: queue the writes there (the tick's one write pipeline) instead of sending them now.
        """
        price = self.prices.tier(tier)
        out = Accrual()
        for cat in CATEGORIES:
            seconds = advance.seconds.get(cat, 0.0)
            if seconds > 0:
                out.spans.append(Span(cat, advance.since, seconds))
        for end, lived in advance.ended:
            extra = price.billed_seconds(lived) - lived
            if extra > 0:
                out.minimum_usd.append((end, price.usd(extra)))
        adds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        window = advance.until - advance.since
        for span in out.spans:
            parts = _split_by_hour(advance.since, window) if window > 0 else [(_hour(advance.until), 1.0)]
            total = sum(part for _, part in parts)
            for hour, part in parts:
                seconds = span.seconds * part / total
                adds[hour][f"s:{tier}:{span.category}"] += seconds
                adds[hour][f"usd:{tier}"] += price.usd(seconds)
        for at, usd in out.minimum_usd:
            adds[_hour(at)][f"usd:{tier}"] += usd
        self._write(pool, adds, pipe=pipe)
        return out

    def record(self, pool: str, tier: str, accrual: Accrual) -> None:
        price = self.prices.tier(tier)
        adds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for span in accrual.spans:
            for hour, seconds in _split_by_hour(span.start, span.seconds):
                adds[hour][f"s:{tier}:{span.category}"] += seconds
                adds[hour][f"usd:{tier}"] += price.usd(seconds)
        for at, usd in accrual.minimum_usd:
            adds[_hour(at)][f"usd:{tier}"] += usd
        self._write(pool, adds)

    def _write(self, pool: str, adds: dict[str, dict[str, float]], *, pipe: Any = None) -> None:
        """Add ``adds`` (hour -> field -> amount) to the pool's buckets, in one script call (on
        ``pipe`` when given: the tick's one write pipeline)."""
        if not adds:
            return
        args: list[Any] = [self.retention, self.hours_key(pool)]
        for hour, fields in adds.items():
            args += [self._key(pool, hour), hour, repr(_hour_start(hour)), len(fields)]
            for name, value in fields.items():
                args += [name, repr(float(value))]
        if pipe is not None:
            self._add(keys=[], args=args, client=pipe)
        else:
            self._run(self._add, keys=[], args=args)

    def hours_key(self, pool: str) -> str:
        """The pool's hours that have a bucket (scored by the hour's start): wide reads use it."""
        return f"{self.prefix}:cost-hours:{pool}"

    def bucket_key(self, pool: str, at: float) -> str:
        return self._key(pool, _hour(at))

    def read(self, pools: Iterable[str], since: float, now: float) -> list[PoolCost]:
        """Aggregates of every hour that overlaps ``[since, now]`` (whole hours), per pool and tier."""
        hours = self._hours(since, now)
        out: dict[tuple[str, str], PoolCost] = {}
        for pool in pools:
            if hours is None:
                # A window wider than the retention (``since=0``: half a million hours): only the
                # hours that have a bucket, from the pool's index of them.
                found = self._run(self.redis.zrangebyscore, self.hours_key(pool), (since // HOUR) * HOUR, now)
                wanted = [h.decode() if isinstance(h, bytes) else str(h) for h in found]
            else:
                wanted = hours
            pipe = self.redis.pipeline(transaction=False)
            for hour in wanted:
                pipe.hgetall(self._key(pool, hour))
            self._fold(out, pool, self._run(pipe.execute))
        return sorted(out.values(), key=lambda r: (r.pool, r.tier))

    def spent(self, pool: str, since: float, now: float, *, pipe: Any = None) -> float | None:
        """The pool's dollars over the hours overlapping ``[since, now]`` (at most
        ``MAX_DIRECT_HOURS``: today's spend), the sum :meth:`read` makes, in one command; with
        ``pipe`` it is queued there (None returned) and its reply goes to :meth:`spent_reply`."""
        hours = self._hours(since, now)
        if hours is None:
            raise ValueError(f"spent() spans at most {MAX_DIRECT_HOURS} hours")
        args = [self.prefix, pool, *hours]
        if pipe is not None:
            self._spent(keys=[], args=args, client=pipe)
            return None
        return self.spent_reply(self._run(self._spent, keys=[], args=args))

    @staticmethod
    def spent_reply(reply: Any) -> float:
        return float(reply.decode() if isinstance(reply, bytes) else reply)

    @staticmethod
    def _hours(since: float, now: float) -> list[str] | None:
        """The hours overlapping ``[since, now]``; None when there are more than ``MAX_DIRECT_HOURS``."""
        hours: list[str] = []
        t = (since // HOUR) * HOUR
        while t <= now and len(hours) <= MAX_DIRECT_HOURS:
            hours.append(_hour(t))
            t += HOUR
        return hours if len(hours) <= MAX_DIRECT_HOURS else None

    @staticmethod
    def _fold(out: dict[tuple[str, str], PoolCost], pool: str, buckets: Iterable[dict[Any, Any]]) -> None:
        for bucket in buckets:
            for raw_name, raw_value in bucket.items():
                name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
                kind, _, rest = name.partition(":")
                tier, _, cat = rest.partition(":")
                row = out.setdefault((pool, tier), PoolCost(pool=pool, tier=tier))
                value = float(raw_value)
                if kind == "s":
                    row.seconds[cat] = row.seconds.get(cat, 0.0) + value
                elif kind == "usd":
                    row.usd += value
                elif kind == "leases":
                    row.leases += int(value)


def _alive(record: ContainerRecord) -> tuple[float, float | None] | None:
    life = _life(record)
    return life if life is not None and life[1] is None else None


def burn_rate(records: Iterable[ContainerRecord], price: TierPrice) -> float:
    """Dollars per hour the pool's live containers cost now."""
    return sum(1 for r in records if _alive(r)) * price.usd_per_hour


def projected_usd(records: Iterable[ContainerRecord], now: float, price: TierPrice) -> float:
    """Dollars the live containers will still cost if nothing touches them again.

    Each is billed until its deadline (its idle expiry), and at least its minimum: what today's
    budget must leave room for before a new container is made.
    """
    total = 0.0
    for record in records:
        life = _alive(record)
        if life is None:
            continue
        start = life[0]
        until = max(record.deadline if record.deadline is not None else now, start + price.billed_seconds(0.0))
        total += price.usd(max(0.0, until - now))
    return total
