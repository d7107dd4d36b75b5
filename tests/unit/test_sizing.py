"""The demand sizing policy (hearth.pool.sizing): exact cases and its promised properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hearth.pool.sizing import (
    SPARES_CEILING,
    AutoBuffer,
    BudgetVerdict,
    RateEstimate,
    poisson_quantile,
    rate,
    ready_seconds,
    recent_rate,
    size_pool,
    spares_for,
)

AUTO = AutoBuffer(target_wait_seconds=0.5, percentile=0.99)


def _cdf(mean: float, k: int) -> float:
    return sum(math.exp(-mean) * mean**i / math.factorial(i) for i in range(k + 1))


@pytest.mark.parametrize("mean", [0.01, 0.3, 1.0, 4.5, 20.0, 60.0])
@pytest.mark.parametrize("p", [0.5, 0.9, 0.99, 0.999])
def test_poisson_quantile_is_the_smallest_k_reaching_p(mean: float, p: float) -> None:
    k = poisson_quantile(mean, p)
    assert _cdf(mean, k) >= p - 1e-12
    assert k == 0 or _cdf(mean, k - 1) < p


def test_poisson_quantile_of_a_large_mean_is_near_the_normal_one() -> None:
    mean = 2_500.0
    k = poisson_quantile(mean, 0.99)
    assert abs(k - (mean + 2.326 * math.sqrt(mean))) < 3
    assert poisson_quantile(50_000.0, 0.99) == SPARES_CEILING  # the arithmetic is bounded


def test_spares_cover_the_arrivals_of_the_refill_window_beyond_the_wait_target() -> None:
    # 1 lease/s, 10.5 s to ready, 0.5 s of wait allowed: a 10 s window, Poisson(10) at p99 = 18.
    assert spares_for(1.0, 10.5, target_wait=0.5, percentile=0.99) == 18
    # A backend faster than the target needs no spare at all.
    assert spares_for(5.0, 0.4, target_wait=0.5, percentile=0.99) == 0
    assert spares_for(0.0, 30.0, target_wait=0.5, percentile=0.99) == 0


def test_spares_also_cover_the_wait_until_the_next_tick_asks_for_a_replacement() -> None:
    # A taken spare is replaced only at the next tick: with a 10 s heartbeat and containers ready in
    # 0.5 s, the window is 10 s, not 0 (bench/demand.py: without it two leases in three waited).
    assert spares_for(1.0, 0.5, target_wait=0.5, percentile=0.99) == 0
    assert spares_for(1.0, 0.5, target_wait=0.5, percentile=0.99, replenish_seconds=10.0) == 18
    assert spares_for(1.0, 0.5, target_wait=0.5, percentile=0.99, replenish_seconds=-3.0) == 0
    s = size_pool(min_ready=1, buffer=None, max_total=50, leased=0, rate=0.1, ready_seconds=4.0, auto=AUTO,
                  replenish_seconds=10.0)
    assert s.ready_target == spares_for(0.1, 4.0, target_wait=0.5, percentile=0.99, replenish_seconds=10.0) == 5
    assert "+ 10 s to the next tick" in s.why


def test_static_buffer_keeps_the_reconciles_rule() -> None:
    s = size_pool(min_ready=2, buffer=1, max_total=10, leased=4)
    assert s.ready_target == 5 and s.creates_allowed
    assert size_pool(min_ready=2, buffer=1, max_total=10, leased=0).ready_target == 2
    assert size_pool(min_ready=2, buffer=3, max_total=6, leased=4).ready_target == 2  # capped by max_total


def test_auto_explains_itself() -> None:
    s = size_pool(min_ready=0, buffer=None, max_total=50, leased=3, rate=0.5, ready_seconds=6.5, auto=AUTO)
    assert s.ready_target == spares_for(0.5, 6.5, target_wait=0.5, percentile=0.99) == 8
    assert "auto" in s.why and "30.00 leases/min" in s.why and "p99" in s.why
    assert s.rate == 0.5 and s.ready_seconds == 6.5 and s.spares_wanted == 8


def test_soft_budget_keeps_only_what_waiting_leases_need() -> None:
    over = BudgetVerdict(over=True, hard=False, reason="budget $5.00/day reached")
    s = size_pool(min_ready=3, buffer=2, max_total=10, leased=2, waiting=1, budget=over)
    assert s.ready_target == 1 and s.creates_allowed and "budget $5.00/day" in s.why


def test_hard_budget_creates_nothing() -> None:
    over = BudgetVerdict(over=True, hard=True, reason="budget $5.00/day reached")
    s = size_pool(min_ready=3, buffer=None, max_total=10, leased=2, waiting=4, rate=3.0, ready_seconds=9.0,
                  auto=AUTO, budget=over)
    assert s.ready_target == 0 and not s.creates_allowed


def test_rate_estimate_follows_a_steady_stream_and_decays_after() -> None:
    est, tau = RateEstimate(), 60.0
    for i in range(1, 3601):  # 2 leases/s for 30 min
        est = est.observe(i * 0.5, tau)
    assert est.at_time(1800.0, tau) == pytest.approx(2.0, rel=0.05)
    assert est.at_time(1800.0 + 5 * tau, tau) < 0.02


def test_ready_seconds_is_a_high_quantile_of_recent_samples() -> None:
    samples = [2.0, 3.0, 2.5, 6.0, 2.2, 2.8, 3.1, 2.4, 2.6, 2.9]
    assert ready_seconds(samples, quantile=0.9, default=1.0) == 3.1
    assert ready_seconds(samples, quantile=1.0, default=1.0) == 6.0
    assert ready_seconds([], default=7.0) == 7.0


def test_rate_takes_the_faster_reaction_and_the_slower_memory() -> None:
    fast, slow = RateEstimate(), RateEstimate()
    for i in range(30):  # a burst of 30 leases in 3 s
        fast, slow = fast.observe(i * 0.1, 10.0), slow.observe(i * 0.1, 600.0)
    assert rate(fast, slow, 3.0, fast_tau=10.0, slow_tau=600.0) == fast.at_time(3.0, 10.0) > 2.0
    assert rate(fast, slow, 200.0, fast_tau=10.0, slow_tau=600.0) == slow.at_time(200.0, 600.0) > 0.03


def test_the_last_intervals_rate_shows_a_step_at_the_first_tick() -> None:
    # 10 leases in the 10 s since the last fold: 1/s now, where a 20 s estimate still says 0.5/s.
    assert recent_rate(10, 100.0, 110.0, window=10.0) == 1.0
    # An on-demand reconcile 0.05 s after a tick: one lease is 0.1/s over the window, not 20/s.
    assert recent_rate(1, 110.0, 110.05, window=10.0) == pytest.approx(0.1)
    assert recent_rate(0, 0.0, 50.0, window=10.0) == 0.0 == recent_rate(-3, 0.0, 50.0, window=10.0)
    with pytest.raises(ValueError, match="window"):
        recent_rate(1, 0.0, 1.0, window=0.0)
    fast = RateEstimate().observe(110.0, 20.0, 10)
    assert rate(fast, RateEstimate(), 110.0, fast_tau=20.0, slow_tau=900.0, recent=1.0) == 1.0
    assert rate(fast, RateEstimate(), 110.0, fast_tau=20.0, slow_tau=900.0) == 0.5


# --- properties ----------------------------------------------------------------------------------

sizes = st.integers(min_value=0, max_value=60)
rates = st.floats(min_value=0.0, max_value=50.0, allow_nan=False)
ready_times = st.floats(min_value=0.0, max_value=120.0, allow_nan=False)
autos = st.builds(AutoBuffer, target_wait_seconds=st.floats(min_value=0.0, max_value=10.0),
                  percentile=st.floats(min_value=0.5, max_value=0.999))
buffers = st.one_of(st.none(), st.integers(min_value=0, max_value=20))


@settings(max_examples=300, deadline=None)
@given(min_ready=sizes, extra=sizes, leased=sizes, waiting=sizes, buffer=buffers, rate=rates, ready=ready_times,
       auto=autos)
def test_never_above_max_total_never_below_min_ready(min_ready: int, extra: int, leased: int, waiting: int,
                                                     buffer: int | None, rate: float, ready: float,
                                                     auto: AutoBuffer) -> None:
    max_total = max(1, min_ready + extra)
    s = size_pool(min_ready=min_ready, buffer=buffer, max_total=max_total, leased=leased, waiting=waiting,
                  rate=rate, ready_seconds=ready, auto=auto)
    assert s.ready_target + leased <= max(max_total, leased)
    assert s.ready_target >= min(min_ready, max(0, max_total - leased))
    assert s.creates_allowed


@settings(max_examples=300, deadline=None)
@given(min_ready=sizes, leased=sizes, r1=rates, r2=rates, ready=ready_times, auto=autos)
def test_monotone_in_the_rate(min_ready: int, leased: int, r1: float, r2: float, ready: float,
                              auto: AutoBuffer) -> None:
    lo, hi = sorted((r1, r2))
    kw = dict(min_ready=min_ready, buffer=None, max_total=200, leased=leased, ready_seconds=ready, auto=auto)
    assert size_pool(rate=lo, **kw).ready_target <= size_pool(rate=hi, **kw).ready_target  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(rate=rates, t1=ready_times, t2=ready_times, auto=autos)
def test_monotone_in_the_ready_time(rate: float, t1: float, t2: float, auto: AutoBuffer) -> None:
    lo, hi = sorted((t1, t2))
    a = spares_for(rate, lo, target_wait=auto.target_wait_seconds, percentile=auto.percentile)
    assert a <= spares_for(rate, hi, target_wait=auto.target_wait_seconds, percentile=auto.percentile)


@settings(max_examples=300, deadline=None)
@given(min_ready=sizes, leased=sizes, waiting=sizes, buffer=buffers, rate=rates, ready=ready_times,
       auto=autos, hard=st.booleans())
def test_respects_the_budget(min_ready: int, leased: int, waiting: int, buffer: int | None, rate: float,
                             ready: float, auto: AutoBuffer, hard: bool) -> None:
    over = BudgetVerdict(over=True, hard=hard, reason="over")
    s = size_pool(min_ready=min_ready, buffer=buffer, max_total=100, leased=leased, waiting=waiting, rate=rate,
                  ready_seconds=ready, auto=auto, budget=over)
    assert s.ready_target <= (0 if hard else waiting)
    assert s.creates_allowed is (not hard)


@settings(max_examples=200, deadline=None)
@given(rate=rates, ready=ready_times, i1=st.floats(min_value=0.0, max_value=120.0),
       i2=st.floats(min_value=0.0, max_value=120.0), auto=autos, min_ready=sizes, leased=sizes)
def test_monotone_in_the_replenish_interval(rate: float, ready: float, i1: float, i2: float, auto: AutoBuffer,
                                            min_ready: int, leased: int) -> None:
    lo, hi = sorted((i1, i2))
    kw = dict(min_ready=min_ready, buffer=None, max_total=200, leased=leased, rate=rate, ready_seconds=ready,
              auto=auto)
    small = size_pool(replenish_seconds=lo, **kw)  # type: ignore[arg-type]
    large = size_pool(replenish_seconds=hi, **kw)  # type: ignore[arg-type]
    assert small.ready_target <= large.ready_target <= max(0, 200 - leased)
    assert large.ready_target >= min(min_ready, max(0, 200 - leased))


@settings(max_examples=200, deadline=None)
@given(new=st.integers(min_value=0, max_value=1000), since=st.floats(min_value=0.0, max_value=1e6),
       dt=st.floats(min_value=0.0, max_value=1e4), w1=st.floats(min_value=0.01, max_value=600.0),
       w2=st.floats(min_value=0.01, max_value=600.0), r1=rates, r2=rates)
def test_recent_rate_is_bounded_by_the_window_and_rate_monotone_in_it(
    new: int, since: float, dt: float, w1: float, w2: float, r1: float, r2: float,
) -> None:
    lo, hi = sorted((w1, w2))
    assert 0.0 <= recent_rate(new, since, since + dt, window=hi) <= recent_rate(new, since, since + dt, window=lo)
    assert recent_rate(new, since, since + dt, window=lo) <= new / lo + 1e-9
    small, large = sorted((r1, r2))
    fast, slow = RateEstimate(0.2, since), RateEstimate(0.1, since)
    kw = dict(fast_tau=20.0, slow_tau=900.0)
    assert rate(fast, slow, since + dt, recent=small, **kw) <= rate(fast, slow, since + dt, recent=large, **kw)
    assert rate(fast, slow, since + dt, recent=large, **kw) >= large
