"""Time as a constructor parameter.

Container expiry, lease deadlines and retry backoff all depend on "now". Passing a ``Clock``
instead of calling ``time.time()`` lets tests (and the local API's dev clock) move time forward
without sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time in seconds since the epoch, and a way to wait."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that only moves when told to; ``sleep`` advances it instead of blocking."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now()})"


class OffsetClock:
    """The real clock shifted by an adjustable offset (the local API's ``/_dev/clock``)."""

    def __init__(self, base: Clock | None = None, offset: float = 0.0) -> None:
        self._base = base or SystemClock()
        self._offset = offset
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset

    def now(self) -> float:
        return self._base.now() + self.offset

    def sleep(self, seconds: float) -> None:
        self._base.sleep(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def __repr__(self) -> str:
        return f"OffsetClock(offset={self.offset})"
