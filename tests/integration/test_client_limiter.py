"""The Redis-shared limiter: real redis-server, real OS processes, a ManualClock where time matters."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest
import redis

from hearth.api.client import ContainersClient
from hearth.api.limiter import Limiter
from hearth.api.models import CreateContainerRequest
from hearth.clock import ManualClock, SystemClock
from hearth.errors import RateLimited
from settings.config import Settings
from tests.fixtures.localapi import LocalAPI

COUNTER = "test:inflight"
OBSERVED = "test:observed"
STAMPS = "test:stamps"


def hammer(url: str, n: int, max_in_flight: int, rpm: int, window: float, threads: int = 1) -> None:
    """Child process: ``threads`` workers take a slot, count concurrent holders in Redis, hold, release."""
    r = redis.Redis.from_url(url)
    limiter = Limiter(r, name="shared", max_in_flight=max_in_flight, requests_per_minute=rpm, window=window,
                      clock=SystemClock(), poll=0.002, lease_ttl=30)

    def work() -> None:
        for _ in range(n):
            with limiter.acquire() as slot:
                now_holding = r.incr(COUNTER)
                r.rpush(OBSERVED, now_holding)
                r.rpush(STAMPS, repr(slot.acquired_at))
                time.sleep(0.003)  # hold the slot so that holders overlap
                r.decr(COUNTER)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    r.close()


def run_children(url: str, count: int, **kw: float | int) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=hammer, args=(url,), kwargs=kw) for _ in range(count)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_two_processes_never_exceed_the_in_flight_limit(redis_url: str, redis_client: redis.Redis) -> None:
    # 2 processes x 3 threads = 6 contenders for 3 slots.
    run_children(redis_url, 2, n=25, max_in_flight=3, rpm=0, window=60.0, threads=3)
    observed = [int(x) for x in redis_client.lrange(OBSERVED, 0, -1)]
    assert len(observed) == 150
    assert max(observed) == 3  # the limit was reached (the test really contended) and never exceeded
    assert redis_client.zcard("hearth:limiter:shared:inflight") == 0  # every slot was released


def test_two_processes_squeezed_through_one_slot(redis_url: str, redis_client: redis.Redis) -> None:
    run_children(redis_url, 2, n=40, max_in_flight=1, rpm=0, window=60.0)
    observed = [int(x) for x in redis_client.lrange(OBSERVED, 0, -1)]
    assert len(observed) == 80 and max(observed) == 1
    assert redis_client.zcard("hearth:limiter:shared:inflight") == 0  # every slot was released


def test_the_rate_window_holds_across_processes(redis_url: str, redis_client: redis.Redis) -> None:
    rpm, window = 5, 1.0
    run_children(redis_url, 2, n=6, max_in_flight=0, rpm=rpm, window=window)
    stamps = sorted(float(x) for x in redis_client.lrange(STAMPS, 0, -1))
    assert len(stamps) == 12
    # In any window, at most ``rpm`` grants: the (i+rpm)-th grant is at least a window after the i-th.
    assert all(stamps[i + rpm] - stamps[i] >= window - 1e-6 for i in range(len(stamps) - rpm))


def test_the_window_waits_exactly_until_the_oldest_request_leaves_it(redis_client: redis.Redis) -> None:
    slept: list[float] = []

    class Recording(ManualClock):
        def sleep(self, seconds: float) -> None:
            slept.append(seconds)
            super().sleep(seconds)

    clock = Recording(1000.0)
    limiter = Limiter(redis_client, name="w", requests_per_minute=3, clock=clock)
    for _ in range(3):
        limiter.acquire().release()
        clock.advance(10)
    assert slept == []
    slot = limiter.acquire()  # at t=1030; the first grant (t=1000) leaves the window at 1060
    assert slept == [pytest.approx(30.0)] and slot.acquired_at == pytest.approx(1060.0)


def test_a_crashed_holder_s_slot_lapses(redis_url: str, redis_client: redis.Redis) -> None:
    clock = ManualClock(5000.0)
    ctx = mp.get_context("fork")
    child = ctx.Process(target=_take_and_die, args=(redis_url, 5000.0))
    child.start()
    child.join(60)
    assert child.exitcode == 17
    limiter = Limiter(redis_client, name="crash", max_in_flight=1, clock=clock, lease_ttl=30, max_wait=10, poll=1)
    assert limiter.in_flight() == 1
    with pytest.raises(RateLimited):
        limiter.acquire()  # still held: the lease has 30 s, we wait at most 10
    clock.advance(25)  # now past the dead holder's lease
    with limiter.acquire():
        assert limiter.in_flight() == 1


def _take_and_die(url: str, now: float) -> None:
    import os

    limiter = Limiter(redis.Redis.from_url(url), name="crash", max_in_flight=1, clock=ManualClock(now), lease_ttl=30)
    limiter.acquire()
    os._exit(17)  # no release, no cleanup: as a killed worker


def test_renew_keeps_a_long_transfer_s_slot(redis_client: redis.Redis) -> None:
    clock = ManualClock(0.0)
    limiter = Limiter(redis_client, name="renew", max_in_flight=1, clock=clock, lease_ttl=30, max_wait=5)
    slot = limiter.acquire()
    for _ in range(5):
        clock.advance(20)
        assert slot.renew()
    with pytest.raises(RateLimited):
        limiter.acquire()
    slot.release()
    limiter.acquire().release()


def test_zero_limits_disable_it(redis_client: redis.Redis) -> None:
    limiter = Limiter(redis_client, name="off")
    assert not limiter.enabled
    for _ in range(100):
        limiter.acquire()
    assert redis_client.keys("hearth:limiter:off*") == []
    assert not Limiter(None).enabled
    with pytest.raises(ValueError):
        Limiter(None, max_in_flight=2)


def test_the_client_takes_and_returns_slots(local_api: LocalAPI, redis_client: redis.Redis) -> None:
    settings = Settings(backend="local", api_base=local_api.base_url, api_max_in_flight=2,
                        api_requests_per_minute=1000, key_prefix="lim")
    with ContainersClient.from_settings(settings, redis=redis_client) as client:
        c = client.create_container(CreateContainerRequest(name="limited"))
        for _ in range(4):
            client.retrieve_container(c.id)
        assert list(client.list_containers()) != []
    windows = redis_client.keys("lim:limiter:*:window")
    assert len(windows) == 1 and redis_client.zcard(windows[0]) == 6  # one grant per request
    inflight = redis_client.keys("lim:limiter:*:inflight")
    assert all(redis_client.zcard(k) == 0 for k in inflight)  # all released
