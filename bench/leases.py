"""Benchmark: lease + release latency against a plain Redis GET round trip, on the same redis-server.

A lease is one Lua script (pick the READY container with the most life left, mark it LEASED with a
fencing token) and a release another (check lease id and token, put it back). This measures what
an app pays for them: an embedded redis-server (``worker.redis_server.RedisServer``), a pool of
``--pool-size`` READY records written directly with ``PoolStore``, then ``--leases`` rounds of
``Leases.try_lease`` + ``Leases.release(reuse=True)`` (so the pool never drains), each timed. The
baseline is the floor of any Redis-backed lease: a plain ``GET`` round trip with the same client,
timed the same way, interleaved in blocks so machine load hits both alike. Prints p50 / p99 of each
and the ratios. Never fails CI.

Run: ``.venv/bin/python bench/leases.py [--leases 2000] [--pool-size 200]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis

from hearth.clock import SystemClock
from hearth.pool.leases import Leases
from hearth.pool.model import State, make_name
from hearth.pool.store import PoolStore
from worker.redis_server import RedisServer

POOL = "bench"
BLOCK = 100  # rounds per block; blocks of leases and GETs alternate


def fill(store: PoolStore, size: int) -> None:
    """``size`` READY records with staggered deadlines, as provisioning would leave them."""
    now = store.clock.now()
    for i in range(size):
        name = make_name("hearth", POOL)
        store.write_intent(POOL, name, inputs_digest="d", expires_minutes=20)
        store.transition(name, State.CREATING, State.SEEDING, container_id=f"cntr_{i:06d}", deadline=now + 600 + i)
        store.transition(name, State.SEEDING, State.READY)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leases", type=int, default=2000, help="Lease+release rounds (and GETs). Default 2000.")
    ap.add_argument("--pool-size", type=int, default=200, help="READY records in the pool. Default 200.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="hearth-bench-leases-") as tmp, \
            RedisServer(Path(tmp), persist=False) as server:
        client = redis.Redis.from_url(server.url)
        store = PoolStore(client, SystemClock(), prefix="bench")
        leases = Leases(store)
        fill(store, args.pool_size)
        client.set("bench:plain", "x" * 64)

        lease_s: list[float] = []
        take_s: list[float] = []
        get_s: list[float] = []
        clock = time.perf_counter
        # Warm both paths (script load, connection) before timing.
        for _ in range(20):
            got = leases.try_lease(POOL, ttl=60)
            assert got is not None
            leases.release(got.container_id or got.name, got.lease_id, token=got.token, reuse=True)
            client.get("bench:plain")
        while len(lease_s) < args.leases:
            for _ in range(min(BLOCK, args.leases - len(lease_s))):
                t0 = clock()
                got = leases.try_lease(POOL, ttl=60, min_remaining=60)
                t1 = clock()
                assert got is not None, "pool drained: releases are not putting containers back"
                leases.release(got.container_id or got.name, got.lease_id, token=got.token, reuse=True)
                t2 = clock()
                take_s.append(t1 - t0)
                lease_s.append(t2 - t0)
            for _ in range(BLOCK):
                t0 = clock()
                client.get("bench:plain")
                get_s.append(clock() - t0)
        counts = store.counts(POOL)
        assert counts.get(State.READY, 0) == args.pool_size and not counts.get(State.LEASED), counts
        client.close()

    def ms(x: float) -> str:
        return f"{x * 1000:7.3f} ms"

    print(f"leases: {len(lease_s)} lease+release rounds on a pool of {args.pool_size} READY records")
    print(f"  lease only      p50 {ms(pct(take_s, 0.5))}  p99 {ms(pct(take_s, 0.99))}")
    print(f"  lease+release   p50 {ms(pct(lease_s, 0.5))}  p99 {ms(pct(lease_s, 0.99))}  "
          f"mean {ms(statistics.fmean(lease_s))}")
    print(f"  redis GET       p50 {ms(pct(get_s, 0.5))}  p99 {ms(pct(get_s, 0.99))}  (baseline, {len(get_s)} GETs)")
    print(f"ratio lease+release / GET: p50 {pct(lease_s, 0.5) / pct(get_s, 0.5):.1f}x  "
          f"p99 {pct(lease_s, 0.99) / pct(get_s, 0.99):.1f}x")
    print(f"ratio lease only / GET:    p50 {pct(take_s, 0.5) / pct(get_s, 0.5):.1f}x")


if __name__ == "__main__":
    main()
