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

``--async --concurrency 32``: the application API under concurrency, in one process, both faces
in the same run: ``HearthPools.lease`` from 32 threads, then ``AsyncHearthPools.lease`` from 32
coroutines of one event loop, then one caller alone (the baseline), on a pool of ``--pool-size``
(default here 1,000) READY records seeded directly in Redis. Each caller loops lease (timed: the
whole app path, pool rules, lease script, counters, metrics) then gives the container back for
reuse with the lease layer of its own face (not timed, so the pool never drains and no task is
sent). Prints p50 / p99 of a lease, leases/s (cycles of lease + give-back over the wall time) for
each, and the ratios to the single caller.

Run: ``.venv/bin/python bench/leases.py --async --concurrency 32 [--leases 200]`` (``--leases`` per caller)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

import redis
import redis.asyncio

from hearth.clock import SystemClock
from hearth.pool.leases import Leases
from hearth.pool.model import State, make_name
from hearth.pool.store import PoolStore
from hearth.runtime import Runtime
from settings import Settings
from tasks.app import create_app
from tasks.async_pools import AsyncHearthPools
from tasks.pools import HearthPools
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


POOLS_FILE = f"""
version: 1
pools:
  {POOL}:
    min_ready: 0
    buffer: 0
    max_total: 100000
    container: {{expires_after_minutes: 20}}
    lease: {{ttl_seconds: 600, wait_seconds: 0, min_remaining_on_claim_seconds: 60}}
"""


def threaded(pools: HearthPools, callers: int, rounds: int) -> tuple[list[float], float, float]:
    """``callers`` threads, each ``rounds`` times: lease (timed), give back for reuse (untimed)."""
    samples: list[list[float]] = [[] for _ in range(callers)]
    barrier = threading.Barrier(callers + 1)
    clock = time.perf_counter

    def caller(mine: list[float]) -> None:
        barrier.wait()
        for _ in range(rounds):
            t0 = clock()
            got = pools.lease(POOL)
            mine.append(clock() - t0)
            pools.rt.leases.release(got.container_id, got.lease_id, token=got.token, reuse=True)

    threads = [threading.Thread(target=caller, args=(samples[i],)) for i in range(callers)]
    for t in threads:
        t.start()
    barrier.wait()
    started, cpu = clock(), time.process_time()
    for t in threads:
        t.join()
    return [x for mine in samples for x in mine], clock() - started, time.process_time() - cpu


async def coroutines(pools: AsyncHearthPools, callers: int, rounds: int) -> tuple[list[float], float, float]:
    """``callers`` coroutines of this loop, each as a thread of ``threaded``."""
    samples: list[float] = []
    clock = time.perf_counter
    go = asyncio.Event()

    async def caller() -> None:
        await go.wait()
        for _ in range(rounds):
            t0 = clock()
            got = await pools.lease(POOL)
            samples.append(clock() - t0)
            await pools.leases.release(got.container_id, got.lease_id, token=got.token, reuse=True)

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await asyncio.sleep(0)
    started, cpu = clock(), time.process_time()
    go.set()
    await asyncio.gather(*tasks)
    return samples, clock() - started, time.process_time() - cpu


def concurrency(args: argparse.Namespace) -> None:
    size = args.pool_size or 1000
    rounds = args.leases or 200
    n = args.concurrency
    with tempfile.TemporaryDirectory(prefix="hearth-bench-leases-") as tmp, \
            RedisServer(Path(tmp), persist=False) as server:
        pools_file = Path(tmp) / "pools.yaml"
        pools_file.write_text(POOLS_FILE)
        settings = Settings(redis_url=server.url, pools=pools_file, key_prefix="bench", data_dir=Path(tmp) / "data")
        rt = Runtime.from_settings(settings)
        celery = create_app(settings)  # never sends here: the pool is never empty and give-backs are reuse
        fill(rt.store, size)
        sync_pools = HearthPools(rt, celery)
        # Warm both faces (scripts loaded, connections open) before timing.
        threaded(sync_pools, n, 5)
        solo = threaded(sync_pools, 1, rounds * 2)
        sync = threaded(sync_pools, n, rounds)

        async def run_async(coalesce: bool) -> tuple[list[float], float, float]:
            client = redis.asyncio.Redis.from_url(server.url, max_connections=n + 8)
            pools = AsyncHearthPools(rt, client, celery, coalesce=coalesce)
            try:
                await coroutines(pools, n, 5)
                return await coroutines(pools, n, rounds)
            finally:
                await client.aclose()

        plain = asyncio.run(run_async(False))
        coalesced = asyncio.run(run_async(True))
        counts = rt.store.counts(POOL)
        assert counts.get(State.READY, 0) == size and not counts.get(State.LEASED), counts
        rt.close()
        celery.close()

    def ms(x: float) -> str:
        return f"{x * 1000:6.2f} ms"

    solo50, solo99 = pct(solo[0], 0.5), pct(solo[0], 0.99)
    print(f"app leases on a pool of {size} READY records, {n} concurrent callers x {rounds} leases, one process")
    rows = [("one caller (baseline)", solo), (f"HearthPools, {n} threads", sync),
            (f"AsyncHearthPools, {n} coroutines", coalesced),
            ("  same, coalesce=False", plain)]
    for label, (samples, wall, cpu) in rows:
        print(f"  {label:34s} p50 {ms(pct(samples, 0.5))}  p99 {ms(pct(samples, 0.99))}  "
              f"{len(samples) / wall:6.0f} leases/s  CPU {cpu / len(samples) * 1e6:5.0f} us/lease")
    for label, (samples, _, _) in rows[1:]:
        print(f"ratio {label.strip()} / one caller: p50 {pct(samples, 0.5) / solo50:.1f}x "
              f"p99 {pct(samples, 0.99) / solo99:.1f}x")
    print(f"coroutines / threads: p99 {pct(coalesced[0], 0.99) / pct(sync[0], 0.99):.2f}x, "
          f"leases/s {len(coalesced[0]) / coalesced[1] / (len(sync[0]) / sync[1]):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--leases", type=int, default=None,
                    help="Lease+release rounds (and GETs), default 2000; with --async, per caller, default 200.")
    ap.add_argument("--pool-size", type=int, default=None,
                    help="READY records in the pool. Default 200; with --async 1000.")
    ap.add_argument("--async", dest="use_async", action="store_true",
                    help="Compare HearthPools on threads with AsyncHearthPools on coroutines (--concurrency).")
    ap.add_argument("--concurrency", type=int, default=32, help="Concurrent callers with --async. Default 32.")
    args = ap.parse_args()
    if args.use_async:
        concurrency(args)
        return
    args.leases = args.leases or 2000
    args.pool_size = args.pool_size or 200

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
