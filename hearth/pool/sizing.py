"""How many spare containers a pool keeps: demand against a latency target, within sizes and a budget.

A warm pool trades money for latency. A static ``buffer`` is either too small for a spike or paid
for all night. ``buffer: auto`` sizes the spares from what was observed instead:

* the lease **arrival rate** of the pool (a decaying estimate, :class:`RateEstimate`), and
* the **time to make a container ready** (create to READY, :func:`ready_seconds`),

so that a lease arriving while replacements are being made still finds a READY container with the
asked probability. A lease takes a spare; its replacement is asked for at the next reconcile (the
heartbeat's tick, up to ``replenish_seconds`` later: the heartbeat interval; a lease that finds
the pool empty asks at once) and is READY ``T`` seconds after that. A lease waits only when more
leases arrive within that window than there are spares. With Poisson arrivals at rate ``r``, a
lease may wait up to ``target_wait`` at no loss, so the spares must cover the arrivals of a window
``W = replenish + T - target_wait``: ``spares = Q(r * W, percentile)``, the Poisson quantile.
That is monotone in the rate, in ``T`` and in the interval. (``bench/demand.py`` measured what
leaving the interval out costs: with a 10 s tick and containers ready in under a second, ``W``
came out near 0, the pool kept no spare and two leases in three of a day's trace waited.)

The result is clamped into ``min_ready .. max_total`` and the budget (:class:`BudgetVerdict`):
over a soft budget the pool keeps no idle spares beyond what waiting leases need; over a hard one
it creates nothing. Leased containers are never cut short: sizing only says how many *READY* ones
to keep.

Everything here is pure (no clock, no Redis): the heartbeat and ``bench/demand.py`` call the same
functions, and the properties are proved with hypothesis (``tests/unit/test_sizing.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Spares are never sized above this, whatever the estimate says: a runaway rate must not turn
# into thousands of creates; max_total is the real cap, this only bounds the arithmetic.
SPARES_CEILING = 10_000


# --- demand estimates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateEstimate:
    """An exponentially decaying event rate (events/s) as of ``at`` (epoch s).

    Each event adds ``1/tau``; between events the rate decays by ``exp(-dt/tau)``. For a steady
    Poisson stream the expected value is the true rate, and after a change it follows within about
    ``tau``. Two estimates with different ``tau`` (fast and slow) together react quickly to a rise
    and forget a spike slowly (:func:`rate`).
    """

    rate: float = 0.0
    at: float = 0.0

    def at_time(self, now: float, tau: float) -> float:
        """The rate decayed to ``now`` (no new events)."""
        if now <= self.at:
            return self.rate
        return self.rate * math.exp(-(now - self.at) / tau)

    def observe(self, now: float, tau: float, events: int = 1) -> RateEstimate:
        """The estimate after ``events`` events at ``now``."""
        return RateEstimate(rate=self.at_time(now, tau) + events / tau, at=max(now, self.at))


def ready_seconds(samples: Sequence[float], *, quantile: float = 0.9, default: float) -> float:
    """The time to size with from recent create-to-READY samples: a high quantile, not the mean.

    Sizing must cover the slow replacements too; ``default`` until something was measured.
    """
    if not samples:
        return default
    ordered = sorted(max(0.0, float(s)) for s in samples)
    index = min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))
    return ordered[index]


def recent_rate(new: int, since: float, now: float, *, window: float) -> float:
    """Leases/s of the ``new`` leases counted since the estimate was last folded at ``since``.

    Averaged over at least ``window`` s (the heartbeat interval), so an on-demand reconcile a moment
    after a tick does not turn one lease into a huge rate.
    """
    if window <= 0:
        raise ValueError("window must be positive")
    return max(0, new) / max(now - since, window)


def rate(fast: RateEstimate, slow: RateEstimate, now: float, *, fast_tau: float, slow_tau: float,
         recent: float = 0.0) -> float:
    """Leases/s to size with: the largest of a fast and a slow estimate and the last interval's rate.

    A step in demand shows in ``recent`` (:func:`recent_rate`) at the first tick after it and in
    the fast estimate within seconds; after a spike the slow one keeps spares a while, so a second
    burst shortly after is also served warm. (``bench/demand.py``: a 10x step met about 1 cold
    lease in 100 with the two estimates alone, where the spike-sized static buffer met none; the
    last interval's rate halves that for 6% more container-minutes.)
    """
    return max(fast.at_time(now, fast_tau), slow.at_time(now, slow_tau), max(0.0, recent))


# --- the policy ----------------------------------------------------------------------------------


def poisson_quantile(mean: float, p: float) -> int:
    """The smallest ``k`` with ``P(N <= k) >= p`` for ``N ~ Poisson(mean)``."""
    if not 0.0 < p < 1.0:
        raise ValueError("percentile must be strictly between 0 and 1")
    if mean <= 0.0:
        return 0
    # Start where the mass below is negligible (< 1e-20), so large means cost O(sqrt(mean)) steps.
    k = max(0, math.floor(mean - 10.0 * math.sqrt(mean) - 10.0))
    log_mean = math.log(mean)
    cumulative = 0.0
    while k < SPARES_CEILING:
        cumulative += math.exp(k * log_mean - mean - math.lgamma(k + 1))
        if cumulative >= p:
            return k
        k += 1
    return SPARES_CEILING


def spares_for(rate: float, ready_seconds: float, *, target_wait: float, percentile: float,
               replenish_seconds: float = 0.0) -> int:
    """Spares that serve a lease within ``target_wait`` with probability ``percentile``.

    ``replenish_seconds``: how long a taken spare may wait before its replacement is even asked
    for (the heartbeat interval); 0 when replacements start the moment a spare is taken.
    """
    window = max(0.0, max(0.0, replenish_seconds) + ready_seconds - target_wait)
    return poisson_quantile(max(0.0, rate) * window, percentile)


@dataclass(frozen=True)
class AutoBuffer:
    """``buffer: auto``: serve leases within ``target_wait_seconds`` at ``percentile``."""

    target_wait_seconds: float = 0.5
    percentile: float = 0.99


@dataclass(frozen=True)
class BudgetVerdict:
    """Whether a pool's spending allows spares (and creates), and why not."""

    over: bool = False
    hard: bool = False
    reason: str | None = None

    @property
    def creates_allowed(self) -> bool:
        return not (self.over and self.hard)


@dataclass(frozen=True)
class Sizing:
    """How many READY containers a pool keeps now, and why (shown by ``hearth plan``/``status``)."""

    min_ready: int
    ready_target: int
    creates_allowed: bool
    why: str
    rate: float | None = None
    ready_seconds: float | None = None
    spares_wanted: int | None = None


def size_pool(
    *,
    min_ready: int,
    buffer: int | None,
    max_total: int,
    leased: int,
    waiting: int = 0,
    rate: float = 0.0,
    ready_seconds: float = 0.0,
    auto: AutoBuffer | None = None,
    budget: BudgetVerdict = BudgetVerdict(),
    replenish_seconds: float = 0.0,
) -> Sizing:
    """The READY target of a pool, within ``max_total`` and the budget.

    ``buffer`` is the static buffer (READY = ``max(min_ready, leased + buffer)``, as the reconcile
    always had it), or ``None`` with ``auto`` for demand sizing (READY = ``max(min_ready, spares)``:
    the spares are the idle containers that absorb arrivals while replacements are made).
    ``waiting`` is the number of lease callers waiting for a container right now: a budget never
    starves them. ``replenish_seconds``: see :func:`spares_for` (the heartbeat interval).
    """
    if min(min_ready, max_total, leased, waiting) < 0:
        raise ValueError("sizes and counts must not be negative")
    room = max(0, max_total - leased)  # READY containers that fit beside the leased ones
    spares_wanted: int | None = None
    if buffer is None:
        if auto is None:
            raise ValueError("buffer None means auto: pass the AutoBuffer target")
        spares_wanted = spares_for(rate, ready_seconds, target_wait=auto.target_wait_seconds,
                                   percentile=auto.percentile, replenish_seconds=replenish_seconds)
        spares = spares_wanted
        refill = f" + {replenish_seconds:g} s to the next tick" if replenish_seconds > 0 else ""
        why = (f"auto: {rate * 60:.2f} leases/min x ({ready_seconds:.1f} s to ready{refill}) -> {spares} spare(s) "
               f"for p{auto.percentile * 100:g} wait <= {auto.target_wait_seconds:g} s")
    else:
        # The static rule the reconcile has always used: the buffer scales with use.
        spares = leased + buffer
        why = f"static buffer {buffer} above {leased} leased"
    if budget.over:
        # No idle spares beyond what waiting leases need; a hard budget creates nothing at all.
        target = min(waiting, room) if budget.creates_allowed else 0
        why = f"{budget.reason or 'over budget'}: keeping {target} ready (waiting leases only)"
        return Sizing(min_ready=min(min_ready, target), ready_target=target,
                      creates_allowed=budget.creates_allowed, why=why, rate=rate if auto else None,
                      ready_seconds=ready_seconds if auto else None, spares_wanted=spares_wanted)
    target = min(max(min_ready, spares, waiting), room)
    if target < max(min_ready, spares):
        why += f", capped at max_total {max_total} ({leased} leased)"
    return Sizing(min_ready=min(min_ready, target), ready_target=target, creates_allowed=True,
                  why=why, rate=rate if auto else None, ready_seconds=ready_seconds if auto else None,
                  spares_wanted=spares_wanted)
