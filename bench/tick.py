"""A steady heartbeat tick at 10,000 and 40,000 containers: CPU ms per tick, Redis commands, actions.

Builds the pools directly in a real Redis (a throwaway ``redis-server``, or ``--redis-url``): 20
pools of READY containers with deadlines spread over a 20-minute expiry, a few leased, records
written through the same Lua scripts the workers use (so every index and counter is what
production has). Then runs steady ticks of the planner (plan + apply, enqueue recorded, no API
calls) with ``time.process_time`` around each, and the same with the old full-read path
(``Planner(full_read=True)``: every record of every pool read and metered) in the same run::

    .venv/bin/python bench/tick.py                    # 10,000 and 40,000
    .venv/bin/python bench/tick.py --containers 2000  # quicker

Printed per size: CPU ms per tick (median of ``--ticks``), round trips per tick (what the client
sends: a command or a whole pipeline), Redis commands per tick (INFO commandstats delta: the
commands scripts run inside count too), records read, actions by kind,
and the ratio full-read / indexed. The refreshes a tick asks for are then done as a worker would
(the deadline moves; not measured), so the next tick sees a steady pool, not a growing backlog.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hearth.api.client import ContainersClient
from hearth.clock import ManualClock
from hearth.planner import Applier, Planner
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from worker.redis_server import RedisServer

POOLS = 20
T0 = 1_800_000_000.0
EXPIRES = 20 * 60.0


def pools_yaml(per_pool: int) -> str:
    lines = ["version: 1", "pools:"]
    for i in range(POOLS):
        # At its target once built: READY = min_ready, the leased ones beside them (buffer 0).
        lines.append(f"  p{i:02d}: {{min_ready: {per_pool - leased(per_pool)}, buffer: 0, max_total: {per_pool + 50}, "
                     "keepalive: {margin_seconds: 180}}")
    return "\n".join(lines) + "\n"


LEASED_SHARE = 0.05


def leased(per_pool: int) -> int:
    return int(per_pool * LEASED_SHARE)


def build(rt: Runtime, per_pool: int, rng: random.Random) -> None:
    """Write ``per_pool`` READY containers in each pool through the store's scripts, deadlines
    spread over the expiry; lease ``LEASED_SHARE`` of them."""
    store, clock = rt.store, rt.clock
    assert isinstance(clock, ManualClock)
    for p in range(POOLS):
        pool = f"p{p:02d}"
        store.recount(pool)
        digest = rt.inputs(rt.pool(pool))[1]
        for i in range(per_pool):
            name = f"hearth-{pool}-{i:09d}"
            store.write_intent(pool, name, inputs_digest=digest)
            store.transition(name, State.CREATING, State.READY, container_id=f"cntr_{pool}_{i}",
                             bound_at=clock.now() - rng.uniform(0, 3600),
                             deadline=clock.now() + 200 + rng.uniform(0, EXPIRES - 200))
        for _ in range(leased(per_pool)):
            rt.leases.try_lease(pool, ttl=3600)


class RoundTrips:
    """Counts what the client sends (one send = one round trip: a command, or a whole pipeline)."""

    def __init__(self) -> None:
        self.sent = 0
        original = redis.connection.Connection.send_packed_command

        def counting(conn: Any, *args: Any, **kw: Any) -> None:
            self.sent += 1
            original(conn, *args, **kw)

        redis.connection.Connection.send_packed_command = counting  # type: ignore[method-assign]


TRIPS = RoundTrips()


def commands(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.startswith("cmdstat_info"))


def run_ticks(rt: Runtime, ticks: int, *, full_read: bool) -> dict[str, Any]:
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    sent: list[str] = []
    cpu: list[float] = []
    cmds: list[int] = []
    read: list[int] = []
    trips: list[int] = []
    kinds: Counter[str] = Counter()
    for _ in range(ticks):
        clock.advance(10.0)  # one heartbeat interval
        before = commands(rt.redis)
        sends = TRIPS.sent
        t = time.process_time()
        plans = Planner(rt, commit=True, full_read=full_read).plan()
        done = Applier(rt, lambda name, args: sent.append(name)).apply(plans)
        cpu.append((time.process_time() - t) * 1000)
        trips.append(TRIPS.sent - sends)
        cmds.append(commands(rt.redis) - before - 1)
        read.append(sum(p.read for p in plans))
        kinds.update(a["kind"] for a in done)
        for a in done:  # what the workers' refresh tasks do (outside the tick, not measured)
            if a["kind"] == "refresh":
                rt.store.update(a["name"], (State.READY, State.LEASED), deadline=clock.now() + EXPIRES)
                rt.redis.delete(rt.store.key("pending", "refresh", a["name"]))
    return {"cpu_ms": statistics.median(cpu), "commands": statistics.median(cmds), "read": statistics.median(read),
            "trips": statistics.median(trips),
            "actions": {k: round(n / ticks, 1) for k, n in kinds.items()}, "ticks": ticks}


def bench(size: int, ticks: int, redis_url: str, rng: random.Random) -> None:
    per_pool = size // POOLS
    with tempfile.TemporaryDirectory() as tmp:
        pools = Path(tmp) / "pools.yaml"
        pools.write_text(pools_yaml(per_pool))
        settings = Settings(pools=pools, redis_url=redis_url, key_prefix=f"bench{size}",  # type: ignore[call-arg]
                            _env_file=None)
        client = redis.Redis.from_url(redis_url)
        rt = Runtime(settings, redis_client=client, client=ContainersClient("http://127.0.0.1:1/v1"),
                     clock=ManualClock(T0))
        try:
            started = time.monotonic()
            build(rt, per_pool, rng)
            print(f"built {size} containers in {POOLS} pools in {time.monotonic() - started:.0f} s", flush=True)
            run_ticks(rt, 2, full_read=False)  # warm: the counters' first bill, scripts loaded
            indexed = run_ticks(rt, ticks, full_read=False)
            full = run_ticks(rt, max(2, ticks // 2), full_read=True)
            again = run_ticks(rt, ticks, full_read=False)  # after the baseline: same figures
            ms = statistics.median([indexed["cpu_ms"], again["cpu_ms"]])
            print(f"{size:>6} containers  indexed: {ms:7.1f} ms CPU/tick, {indexed['trips']:.0f} round trips, "
                  f"{indexed['commands']:.0f} Redis commands, {indexed['read']:.0f} records read, "
                  f"actions/tick {indexed['actions']}")
            print(f"{'':>6}             full read: {full['cpu_ms']:7.1f} ms CPU/tick, {full['trips']:.0f} round trips, "
                  f"{full['commands']:.0f} Redis commands, {full['read']:.0f} records read, "
                  f"actions/tick {full['actions']}")
            print(f"{'':>6}             ratio full/indexed: {full['cpu_ms'] / ms:.1f}x", flush=True)
        finally:
            for key in client.scan_iter(f"bench{size}:*", count=10_000):
                client.delete(key)
            rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, nargs="*", default=[10_000, 40_000])
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--redis-url", default=None, help="an existing Redis (default: a throwaway redis-server)")
    args = parser.parse_args()
    rng = random.Random(7)
    if args.redis_url:
        for size in args.containers:
            bench(size, args.ticks, args.redis_url, rng)
        return
    with tempfile.TemporaryDirectory() as data, RedisServer(Path(data), persist=False) as server:
        for size in args.containers:
            bench(size, args.ticks, server.url, rng)


if __name__ == "__main__":
    main()
