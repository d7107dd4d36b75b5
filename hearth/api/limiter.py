"""A request-rate and concurrency limit that every Hearth process shares through Redis.

OpenAI limits an organisation, not a worker: ten workers that each stay under the limit still
trip it together. So the limit lives in Redis, per backend, and one Lua script decides atomically:

* in-flight requests: a sorted set of slot tokens scored by lease expiry. A holder that crashes
  never releases its slot, so each slot is a lease that lapses after ``lease_ttl`` seconds (long
  transfers renew theirs); lapsed leases are swept by the next acquire.
* requests per minute: a sliding window log (a sorted set of acquisition times over ``window``).

Times come from the injected clock, so tests can move the window without waiting. A limit of 0
turns that half off; both 0 and the limiter is a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import random
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any

import redis

from hearth.clock import Clock, SystemClock
from hearth.errors import RateLimited, StorageError

if TYPE_CHECKING:
    from settings.config import Settings

log = logging.getLogger("hearth.api.limiter")

# KEYS: in-flight zset, window zset.
# ARGV: now, token, max_in_flight, rpm, lease_expiry, window_start, ttl_ms, window_ms.
# Returns {1, "0", ""} when granted, else {0, "<seconds until it may be granted>", "inflight"|"rpm"}
# (strings: Lua numbers would be truncated to integers on the way back).
_ACQUIRE = """
local now = tonumber(ARGV[1])
local max_in_flight = tonumber(ARGV[3])
local rpm = tonumber(ARGV[4])
if max_in_flight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
  if redis.call('ZCARD', KEYS[1]) >= max_in_flight then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, tostring(tonumber(first[2]) - now), 'inflight'}
  end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
  if redis.call('ZCARD', KEYS[2]) >= rpm then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, tostring(tonumber(first[2]) - tonumber(ARGV[6])), 'rpm'}
  end
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
end
if max_in_flight > 0 then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
return {1, "0", ''}
"""

# KEYS: in-flight zset. ARGV: token, new lease expiry, ttl_ms. 1 if the lease was still held.
_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""


class Slot:
    """One granted request: release it when the response is done (a context manager)."""

    def __init__(self, limiter: Limiter | None, token: str, acquired_at: float) -> None:
        self._limiter = limiter
        self.token = token
        self.acquired_at = acquired_at
        self._released = False

    def renew(self) -> bool:
        """Extend the lease (for long transfers); False if it had already lapsed."""
        if self._limiter is None or self._released:
            return True
        return self._limiter._renew(self.token)

    def release(self) -> None:
        if self._limiter is not None and not self._released:
            self._released = True
            self._limiter._release(self.token)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


class Limiter:
    """Shared limits for one backend; ``name`` tells backends apart in Redis."""

    def __init__(
        self,
        client: redis.Redis | None,
        *,
        name: str = "default",
        max_in_flight: int = 0,
        requests_per_minute: int = 0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        lease_ttl: float = 120.0,
        max_wait: float = 300.0,
        poll: float = 0.05,
        window: float = 60.0,
        key_prefix: str = "hearth",
    ) -> None:
        if max_in_flight < 0 or requests_per_minute < 0:
            raise ValueError("limits must be >= 0 (0 = no limit)")
        if (max_in_flight or requests_per_minute) and client is None:
            raise ValueError("a Redis client is required when a limit is set")
        self._redis = client
        self.name = name
        self.max_in_flight = max_in_flight
        self.requests_per_minute = requests_per_minute
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self.lease_ttl = lease_ttl
        self.max_wait = max_wait
        self.poll = poll
        self.window = window
        base = f"{key_prefix}:limiter:{name}"
        self.in_flight_key = f"{base}:inflight"
        self.window_key = f"{base}:window"
        self._acquire_script: Any = client.register_script(_ACQUIRE) if client is not None else None
        self._renew_script: Any = client.register_script(_RENEW) if client is not None else None

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None, *, clock: Clock | None = None) -> Limiter:
        """The limiter for the configured backend; a no-op when no Redis is given or limits are 0."""
        backend = f"{settings.backend.value}:{settings.api_base or settings.backend.value}"
        name = hashlib.sha256(backend.encode()).hexdigest()[:16]
        if client is None:
            return cls(None, name=name, clock=clock)
        return cls(
            client,
            name=name,
            max_in_flight=settings.api_max_in_flight,
            requests_per_minute=settings.api_requests_per_minute,
            clock=clock,
            # A slot must outlive the longest single request before it lapses on its own.
            lease_ttl=max(60.0, settings.api_timeout * 2),
            max_wait=settings.api_retry_budget,
            key_prefix=settings.key_prefix,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.max_in_flight or self.requests_per_minute)

    def __repr__(self) -> str:
        return (f"Limiter(name={self.name!r}, max_in_flight={self.max_in_flight}, "
                f"requests_per_minute={self.requests_per_minute})")

    def try_acquire(self) -> tuple[Slot | None, float, str]:
        """One atomic attempt: a slot, or None, how long until one may be free, and which limit is full."""
        token = uuid.uuid4().hex
        now = self._clock.now()
        if not self.enabled:
            return Slot(None, token, now), 0.0, ""
        args = [
            repr(now), token, self.max_in_flight, self.requests_per_minute,
            repr(now + self.lease_ttl), repr(now - self.window),
            int(self.lease_ttl * 1000) + 1000, int(self.window * 1000) + 1000,
        ]
        try:
            granted, wait, reason = self._acquire_script(keys=[self.in_flight_key, self.window_key], args=args)
        except redis.RedisError as exc:
            raise StorageError(f"limiter {self.name}: Redis failed: {type(exc).__name__}") from exc
        if int(granted) == 1:
            return Slot(self, token, now), 0.0, ""
        why = reason.decode() if isinstance(reason, bytes) else str(reason)
        return None, max(0.0, float(wait)), why

    def acquire(self) -> Slot:
        """Wait (on the clock) for a slot; ``RateLimited`` if none comes within ``max_wait``."""
        started = self._clock.now()
        while True:
            slot, wait, why = self.try_acquire()
            if slot is not None:
                return slot
            waited = self._clock.now() - started
            if waited >= self.max_wait:
                raise RateLimited(f"limiter {self.name}: no request slot within {self.max_wait:.0f}s")
            # A full in-flight set frees up when a holder releases, which nothing announces: poll,
            # jittered so that waiting processes do not stampede. A full window frees at a known time.
            nap = wait if why == "rpm" else min(wait, self.poll * (0.5 + self._rng.random()))
            self._clock.sleep(min(max(nap, 0.001), self.max_wait - waited))

    def _renew(self, token: str) -> bool:
        if not self.max_in_flight:
            return True
        try:
            held = self._renew_script(
                keys=[self.in_flight_key],
                args=[token, repr(self._clock.now() + self.lease_ttl), int(self.lease_ttl * 1000) + 1000],
            )
        except redis.RedisError as exc:
            raise StorageError(f"limiter {self.name}: Redis failed: {type(exc).__name__}") from exc
        if not int(held):
            log.warning("limiter %s: a request slot lapsed before it was renewed", self.name)
        return bool(int(held))

    def _release(self, token: str) -> None:
        if not self.max_in_flight or self._redis is None:
            return
        try:
            self._redis.zrem(self.in_flight_key, token)
        except redis.RedisError as exc:
            # The lease lapses on its own; a failed release only delays the next request.
            log.warning("limiter %s: releasing a slot failed (%s); it lapses in %.0fs",
                        self.name, type(exc).__name__, self.lease_ttl)

    def in_flight(self) -> int:
        """Slots currently held (lapsed leases not yet swept included); for metrics and tests."""
        if self._redis is None or not self.max_in_flight:
            return 0
        return int(self._redis.zcount(self.in_flight_key, repr(self._clock.now()), "+inf"))
