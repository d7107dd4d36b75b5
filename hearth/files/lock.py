"""The per-container harvest lock: one harvest of a container at a time, whoever starts it.

Harvests of one container start from many places (a session lease, retire and recycle, the
``outputs.every`` schedule, ``hearth.harvest`` by name, ``hearth harvest``, a session's own inline
harvests). Two at once would race on ``manifest.json`` (a check-then-write that can lose entries)
and one's temporary-file sweep would delete the other's file in flight. So every harvest runs under
this lock: a Redis ``SET NX PX`` with a random token, renewed while the harvest makes progress (it
is renewed from the harvester's progress callback, so a live harvest keeps it however long it runs,
and a dead one's lock lapses after ``ttl``), released by compare-and-delete so a lapsed holder never
frees a lock someone else took since.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis

from hearth.clock import Clock
from hearth.errors import Busy, StateStoreError

HARVEST_LOCK_TTL = 20.0  # seconds a holder may go without progress before its lock lapses
TokenFactory = Callable[[], str]

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def random_token() -> str:
    """The default lock token: 96 random bits (constructors take a factory, so tests can pass their own)."""
    return os.urandom(12).hex()


class HarvestLock:
    """A lock on one Redis key. ``acquire(wait)`` raises ``Busy`` when another holder keeps it that long."""

    def __init__(
        self, client: redis.Redis, clock: Clock, key: str, *, ttl: float = HARVEST_LOCK_TTL,
        tokens: TokenFactory | None = None,
    ) -> None:
        self.redis = client
        self.clock = clock
        self.key = key
        self.ttl = ttl
        self.token = (tokens or random_token)()
        self.held = False
        self._renewed_at = 0.0

    def __repr__(self) -> str:
        return f"HarvestLock({self.key!r}, held={self.held})"  # never the token

    def _cmd(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except redis.RedisError as exc:
            raise StateStoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def acquire(self, wait: float = 0.0) -> None:
        give_up = self.clock.now() + wait
        delay = 0.05
        while not self._cmd(self.redis.set, self.key, self.token, nx=True, px=self._ttl_ms):
            if self.clock.now() >= give_up:
                raise Busy(f"{self.key.rsplit(':', 1)[-1]}: another harvest of this container is running")
            self.clock.sleep(delay)
            delay = min(delay * 2, 1.0)
        self.held = True
        self._renewed_at = self.clock.now()

    def renew(self, *, force: bool = False) -> bool:
        """Extend the lock (at most every ``ttl/4`` unless ``force``); False when it was lost meanwhile."""
        if not self.held:
            return False
        now = self.clock.now()
        if not force and now - self._renewed_at < self.ttl / 4:
            return True
        self._renewed_at = now
        self.held = bool(self._cmd(self.redis.eval, _RENEW, 1, self.key, self.token, self._ttl_ms))
        return self.held

    def release(self) -> None:
        if self.held:
            self.held = False
            self._cmd(self.redis.eval, _RELEASE, 1, self.key, self.token)

    def __enter__(self) -> HarvestLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A Redis failure here must not hide the harvest's own outcome: the lock lapses after ttl anyway.
        with contextlib.suppress(StateStoreError):
            self.release()
