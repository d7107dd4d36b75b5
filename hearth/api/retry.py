"""When and how long to wait before trying a failed API call again.

Capped exponential backoff with full jitter (delay drawn uniformly from ``0..min(cap, base*2^n)``)
spreads many workers hitting one organisation's limits; a server's ``Retry-After`` wins over the
drawn delay because the server knows its own pace. Every call is bounded twice: by a number of
retries and by a total time budget, measured and slept on the injected clock so tests never wait.

``call`` also knows that not every failure is safe to repeat blindly: an *ambiguous* failure (the
request may have taken effect: a transport error or a 5xx) first goes through ``recover``, which
can look for what the earlier try did (a container by name, an uploaded file) and adopt it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from hearth.clock import Clock
from hearth.errors import HearthError, RateLimited, ServerError, TransportError

if TYPE_CHECKING:
    from settings.config import Settings

log = logging.getLogger("hearth.api.retry")

T = TypeVar("T")


def is_ambiguous(err: HearthError) -> bool:
    """True when a failed request may nevertheless have taken effect on the server."""
    return isinstance(err, TransportError | ServerError)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds and pace of retries. ``max_retries`` counts retries, not the first try."""

    max_retries: int = 6
    budget: float = 120.0
    base: float = 0.5
    cap: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.budget <= 0 or self.base <= 0 or self.cap <= 0:
            raise ValueError("RetryPolicy wants max_retries >= 0 and positive budget, base and cap")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_retries=settings.api_max_retries,
            budget=settings.api_retry_budget,
            base=settings.api_backoff_base,
            cap=settings.api_backoff_cap,
        )

    @classmethod
    def never(cls) -> RetryPolicy:
        return cls(max_retries=0)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter delay before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.cap, self.base * (2.0 ** min(retry, 62)))
        return rng.uniform(0.0, ceiling)

    def delay(self, retry: int, err: HearthError, rng: random.Random) -> float:
        """How long to wait after ``err`` before retry number ``retry``."""
        if isinstance(err, RateLimited) and err.retry_after is not None:
            # The server set the pace; waiting less only earns another 429.
            return err.retry_after
        return self.backoff(retry, rng)

    def call(
        self,
        fn: Callable[[], T],
        *,
        clock: Clock,
        rng: random.Random,
        what: str = "call",
        recover: Callable[[HearthError], T | None] | None = None,
        retryable: Callable[[HearthError], bool] | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds, fails permanently, or the retry bounds are reached.

        ``recover`` runs after an ambiguous failure, before the retry: if it returns a value, that
        value is the result (the earlier try took effect). ``retryable`` narrows which temporary
        errors are retried (default: ``err.temporary``). The last error is raised when giving up.
        """
        started = clock.now()
        retry = 0
        while True:
            try:
                return fn()
            except HearthError as err:
                if not (retryable(err) if retryable else err.temporary):
                    raise
                if recover is not None and is_ambiguous(err):
                    found = recover(err)
                    if found is not None:
                        log.info("%s: adopted the result of an earlier try after %s", what, type(err).__name__)
                        return found
                if retry >= self.max_retries:
                    log.warning("%s: giving up after %d retries: %s", what, retry, err)
                    raise
                wait = self.delay(retry, err, rng)
                spent = clock.now() - started
                if spent + wait > self.budget:
                    log.warning("%s: giving up, retry budget %.1fs spent (%.1fs, next wait %.1fs): %s",
                                what, self.budget, spent, wait, err)
                    raise
                log.info("%s: %s, retry %d in %.2fs", what, type(err).__name__, retry + 1, wait)
                clock.sleep(wait)
                retry += 1

