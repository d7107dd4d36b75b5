"""Retry policy math on a ManualClock: backoff bounds, Retry-After, count and time budgets, adoption."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from hearth.api.retry import RetryPolicy
from hearth.errors import BadRequest, HearthError, RateLimited, ServerError, TransportError
from settings.config import Settings
from tests.helpers import RecordingClock


def failing(errors: list[HearthError], result: str = "ok") -> tuple[list[int], Callable[[], str]]:
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return calls, fn


def test_full_jitter_stays_under_the_capped_exponential() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0)
    rng = random.Random(1)
    for retry, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (50, 4.0), (5000, 4.0)]:
        draws = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        # Full jitter: the draws spread over the whole range, not just near the ceiling.
        assert min(draws) < ceiling * 0.2 and max(draws) > ceiling * 0.8


def test_temporary_errors_are_retried_with_sleeps_on_the_clock() -> None:
    clock = RecordingClock()
    calls, fn = failing([ServerError("500"), TransportError("reset"), ServerError("503")])
    assert RetryPolicy(base=1, cap=10).call(fn, clock=clock, rng=random.Random(2)) == "ok"
    assert calls[0] == 4
    assert len(clock.sleeps) == 3
    assert all(0 <= s <= c for s, c in zip(clock.sleeps, [1, 2, 4], strict=True))


def test_retry_after_sets_the_pace() -> None:
    clock = RecordingClock()
    _, fn = failing([RateLimited("429", retry_after=7.0), RateLimited("429", retry_after=2.5)])
    RetryPolicy(base=0.1, cap=0.2).call(fn, clock=clock, rng=random.Random(3))
    assert clock.sleeps == [7.0, 2.5]


def test_permanent_errors_are_not_retried() -> None:
    clock = RecordingClock()
    calls, fn = failing([BadRequest("400")])
    with pytest.raises(BadRequest):
        RetryPolicy().call(fn, clock=clock, rng=random.Random())
    assert calls[0] == 1 and clock.sleeps == []


def test_bounded_by_count() -> None:
    clock = RecordingClock()
    calls, fn = failing([ServerError(str(i)) for i in range(10)])
    with pytest.raises(ServerError, match=r"^3$"):
        RetryPolicy(max_retries=3).call(fn, clock=clock, rng=random.Random())
    assert calls[0] == 4


def test_bounded_by_total_time() -> None:
    clock = RecordingClock()
    calls, fn = failing([RateLimited("429", retry_after=4.0) for _ in range(10)])
    with pytest.raises(RateLimited):
        RetryPolicy(max_retries=100, budget=10.0).call(fn, clock=clock, rng=random.Random())
    # 4 + 4 fit in 10 s; a third wait would end past the budget, so it gives up instead of sleeping.
    assert clock.sleeps == [4.0, 4.0]
    assert calls[0] == 3


def test_ambiguous_failure_is_recovered_instead_of_repeated() -> None:
    clock = RecordingClock()
    calls, fn = failing([TransportError("dropped")])
    seen: list[HearthError] = []

    def recover(err: HearthError) -> str:
        seen.append(err)
        return "adopted"

    assert RetryPolicy().call(fn, clock=clock, rng=random.Random(), recover=recover) == "adopted"
    assert calls[0] == 1 and len(seen) == 1 and clock.sleeps == []


def test_recover_is_not_asked_after_an_unambiguous_429() -> None:
    clock = RecordingClock()
    calls, fn = failing([RateLimited("429", retry_after=1)])
    asked: list[HearthError] = []

    def recover(err: HearthError) -> str | None:
        asked.append(err)
        return None

    RetryPolicy().call(fn, clock=clock, rng=random.Random(), recover=recover)
    assert asked == [] and calls[0] == 2


def test_policy_from_settings() -> None:
    s = Settings(api_max_retries=2, api_retry_budget=9.0, api_backoff_base=0.25, api_backoff_cap=3.0)
    assert RetryPolicy.from_settings(s) == RetryPolicy(max_retries=2, budget=9.0, base=0.25, cap=3.0)
