"""A pool's observed demand, shared by every replica through Redis: lease arrivals, time to ready, waiters.

``buffer: auto`` (``sizing.py``) needs three numbers per pool, the same on every host:

* the lease **arrival rate**: each lease adds one to a counter (one pipelined round trip on the
  lease path); the heartbeat folds the counter's growth since its previous look into two decaying
  estimates (fast and slow), so the estimate follows within a tick and costs nothing per lease;
* the **time to ready**: every provision that reaches READY pushes its create-to-READY seconds
  onto a short list (the last ``READY_SAMPLES``);
* the **waiting leases**: a lease that finds the pool empty registers (``key(pool, "waiting")``,
  written by the lease core) until it gives up, so a budget never starves a caller already waiting.

Only the heartbeat's tick writes the estimates (``commit=True``); ``hearth plan`` and ``status``
read them, decayed to now, without changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from hearth.errors import StateStoreError
from hearth.pool.sizing import RateEstimate, rate, ready_seconds, recent_rate

READY_SAMPLES = 50


@dataclass(frozen=True)
class DemandView:
    """A pool's demand now: leases/s, seconds to ready (a high quantile), samples, waiting leases."""

    rate: float
    ready_seconds: float
    ready_samples: int
    waiting: int

    def to_json(self) -> dict[str, Any]:
        return {"leases_per_minute": round(self.rate * 60, 3), "ready_seconds": round(self.ready_seconds, 3),
                "ready_samples": self.ready_samples, "waiting": self.waiting}


class DemandStore:
    """Demand observations of every pool under ``prefix``."""

    def __init__(self, redis_client: redis.Redis, *, prefix: str = "hearth", fast_tau: float = 20.0,
                 slow_tau: float = 900.0, ready_default: float = 10.0, recent_window: float = 10.0) -> None:
        """``recent_window``: the shortest span the last interval's lease rate is averaged over (the
        heartbeat interval; ``sizing.recent_rate``)."""
        self.redis = redis_client
        self.prefix = prefix
        self.fast_tau = fast_tau
        self.slow_tau = slow_tau
        self.ready_default = ready_default
        self.recent_window = recent_window

    def __repr__(self) -> str:
        return f"DemandStore(prefix={self.prefix!r})"

    def key(self, pool: str, *suffix: str) -> str:
        return ":".join((self.prefix, "demand", pool, *suffix))

    def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    # --- observations (any process) ----------------------------------------------------------------

    def observe_ready(self, pool: str, seconds: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(self.key(pool, "ready"), repr(round(max(0.0, seconds), 3)))
        pipe.ltrim(self.key(pool, "ready"), 0, READY_SAMPLES - 1)
        self._run(pipe.execute)

    # --- the estimate (the heartbeat commits, everyone reads) ----------------------------------------

    def view(self, pool: str, now: float, *, commit: bool = False) -> DemandView:
        """The pool's demand at ``now``; ``commit`` folds new leases into the stored estimates."""
        pipe = self.redis.pipeline(transaction=False)
        self.queue_view(pipe, pool, now)
        if commit:  # waiters that gave up without saying so (a killed caller)
            pipe.zremrangebyscore(self.key(pool, "waiting"), "-inf", f"({now!r}")
        view, fold = self.view_reply(self._run(pipe.execute)[:3], now, commit=commit)
        if fold is not None:
            self._run(self.redis.hset, self.key(pool), mapping=fold)
        return view

    def queue_view(self, pipe: Any, pool: str, now: float) -> int:
        """The reads of :meth:`view` queued on ``pipe`` (the tick reads every pool in one round
        trip); returns how many replies they take, for :meth:`view_reply`."""
        pipe.hgetall(self.key(pool))
        pipe.lrange(self.key(pool, "ready"), 0, READY_SAMPLES - 1)
        pipe.zcount(self.key(pool, "waiting"), repr(now), "+inf")
        return 3

    def view_reply(self, replies: list[Any], now: float, *, commit: bool = False
                   ) -> tuple[DemandView, dict[str, float] | None]:
        """The demand of :meth:`queue_view`'s replies, and (``commit``) the estimates to store:
        :meth:`queue_fold` writes them (the tick in its one write pipeline)."""
        raw, samples, waiting = replies
        fields = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
        leases = fields.get("leases", 0.0)
        new = int(leases - fields.get("seen", 0.0))
        fast = RateEstimate(fields.get("fast_rate", 0.0), fields.get("fast_at", now))
        slow = RateEstimate(fields.get("slow_rate", 0.0), fields.get("slow_at", now))
        # The last interval's rate needs the time of the last fold; before the first one it is unknown.
        recent = recent_rate(new, fast.at, now, window=self.recent_window) if "fast_at" in fields else 0.0
        if new > 0 or commit:
            fast = fast.observe(now, self.fast_tau, max(0, new))
            slow = slow.observe(now, self.slow_tau, max(0, new))
        # ``seen`` is the count read here: a lease counted after the read is folded next tick.
        fold = {"seen": leases, "fast_rate": fast.rate, "fast_at": fast.at, "slow_rate": slow.rate,
                "slow_at": slow.at} if commit else None
        seconds = [float(s) for s in samples]
        view = DemandView(
            rate=rate(fast, slow, now, fast_tau=self.fast_tau, slow_tau=self.slow_tau, recent=recent),
            ready_seconds=ready_seconds(seconds, default=self.ready_default),
            ready_samples=len(seconds),
            waiting=int(waiting),
        )
        return view, fold

    def queue_fold(self, pipe: Any, pool: str, now: float, fold: dict[str, float]) -> None:
        """Store the estimates :meth:`view_reply` folded, and drop waiters that gave up without
        saying so (a killed caller), on ``pipe`` (the tick's one write pipeline)."""
        pipe.zremrangebyscore(self.key(pool, "waiting"), "-inf", f"({now!r}")
        pipe.hset(self.key(pool), mapping=fold)
