"""One active heartbeat among replicas: a leader lease in Redis.

``SET key value NX PX ttl`` takes the lease; a Lua compare-and-renew / compare-and-delete keeps or
drops it only while the value is still ours, so a replica that paused past its lease cannot extend
or delete the new leader's. Expiry is the Redis server's clock (no skew between hosts): a standby
that keeps calling :meth:`LeaderLease.ensure` takes over within one ``ttl`` after the leader stops
renewing.

The injected clock guards the other side: the leader trusts its own leadership only until
``ttl * safety`` after its last successful renew by its own clock, so a process that stalled
(GC, suspended VM) stops acting before Redis hands the lease to someone else. Each acquisition
also gets an ``epoch`` from a counter, a fencing number for anything the leader writes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import redis

from hearth.clock import Clock
from hearth.errors import StateStoreError

_RENEW = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LeaderLease:
    """``ensure()`` every tick (well under ``ttl``); act only while it returns True."""

    def __init__(
        self,
        redis_client: redis.Redis,
        clock: Clock,
        name: str,
        ttl: float,
        identity: str,
        *,
        prefix: str = "hearth",
        safety: float = 0.8,
        token_factory: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if not 0 < safety <= 1:
            raise ValueError("safety must be in (0, 1]")
        self.redis = redis_client
        self.clock = clock
        self.name = name
        self.ttl = ttl
        self.identity = identity
        self.key = f"{prefix}:leader:{name}"
        self._epoch_key = f"{prefix}:leader:{name}:epoch"
        self._safety = safety
        self._token_factory = token_factory
        self._value: str | None = None
        self._valid_until = 0.0
        self.epoch: int | None = None
        self._renew = redis_client.register_script(_RENEW)
        self._release = redis_client.register_script(_RELEASE)

    def __repr__(self) -> str:
        return f"LeaderLease(name={self.name!r}, identity={self.identity!r}, leader={self.is_leader})"

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    @property
    def is_leader(self) -> bool:
        """Held, and renewed recently enough by our own clock to act on."""
        return self._value is not None and self.clock.now() < self._valid_until

    def _held(self, started: float) -> None:
        self._valid_until = started + self.ttl * self._safety

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (or keep it if we do)."""
        if self._value is not None and self.renew():
            return True
        value = f"{self.identity}:{self._token_factory()}"
        started = self.clock.now()
        try:
            if not self.redis.set(self.key, value, nx=True, px=self._ttl_ms):
                return False
            self.epoch = int(self.redis.incr(self._epoch_key))
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: leader acquire failed: {type(exc).__name__}") from exc
        self._value = value
        self._held(started)
        return True

    def renew(self) -> bool:
        """Extend our lease; False (and no longer leader) if it lapsed or someone else holds it."""
        if self._value is None:
            return False
        started = self.clock.now()
        try:
            ok = bool(self._renew(keys=[self.key], args=[self._value, self._ttl_ms]))
        except redis.RedisError as exc:
            # Unknown outcome: stop trusting the lease now rather than risk two leaders.
            self._valid_until = 0.0
            raise StateStoreError(f"redis: leader renew failed: {type(exc).__name__}") from exc
        if ok:
            self._held(started)
        else:
            self._value = None
            self.epoch = None
            self._valid_until = 0.0
        return ok

    def ensure(self) -> bool:
        """Renew if we lead, else try to take over: call once per tick."""
        return self.acquire()

    def release(self) -> bool:
        """Step down (on shutdown) so a standby takes over at once instead of after ``ttl``."""
        value, self._value, self._valid_until, self.epoch = self._value, None, 0.0, None
        if value is None:
            return False
        try:
            return bool(self._release(keys=[self.key], args=[value]))
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: leader release failed: {type(exc).__name__}") from exc

    def holder(self) -> str | None:
        """Identity of the current leader, if any (for ``hearth status``)."""
        try:
            raw = self.redis.get(self.key)
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: {type(exc).__name__}") from exc
        return None if raw is None else _text(raw).rsplit(":", 1)[0]
