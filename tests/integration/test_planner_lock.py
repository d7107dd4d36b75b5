"""Ticks are serialised by a Redis lock, and a tick that lost its lock (or its leader lease) writes
no intents: two overlapping planners never fill one gap twice. Real Redis; tasks are recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hearth.api.client import ContainersClient
from hearth.planner import Applier, Planner, tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings

POOLS = "version: 1\npools:\n  p: {min_ready: 3, max_total: 3}\n"


@pytest.fixture
def runtime(tmp_path: Path, redis_url: str) -> Iterator[Runtime]:
    (tmp_path / "pools.yaml").write_text(POOLS)
    settings = Settings(pools=tmp_path / "pools.yaml", redis_url=redis_url, _env_file=None)  # type: ignore[call-arg]
    # Planning and applying make no API calls: an unreachable client proves it.
    rt = Runtime(settings, redis_client=redis.Redis.from_url(redis_url), client=ContainersClient("http://127.0.0.1:1/v1"))
    yield rt
    rt.close()


def test_a_tick_that_lost_its_lock_writes_no_intents(runtime: Runtime) -> None:
    sent: list[tuple[str, list[Any]]] = []
    plans = Planner(runtime).plan()
    applier = Applier(runtime, lambda name, args: sent.append((name, args)), still_current=lambda: False)
    assert applier.apply(plans) == []
    assert runtime.store.records("p") == [] and sent == []

    current = Applier(runtime, lambda name, args: sent.append((name, args)), still_current=lambda: True)
    current.apply(plans)
    assert len(runtime.store.records("p", State.CREATING)) == 3
    assert [name for name, _ in sent] == ["hearth.provision"] * 3


def test_ticks_are_serialised_by_the_lock_and_a_stale_leader_provisions_nothing(runtime: Runtime) -> None:
    sent: list[str] = []
    key = runtime.store.key("lock", "tick")
    runtime.redis.set(key, "someone-else", px=60_000)
    assert tick(runtime, lambda name, args: sent.append(name)) is None  # another tick holds the lock
    runtime.redis.delete(key)

    assert tick(runtime, lambda name, args: sent.append(name), still_leader=lambda: False) == []
    assert sent == [] and runtime.store.records("p") == []

    applied = tick(runtime, lambda name, args: sent.append(name), still_leader=lambda: True)
    assert applied is not None and sent == ["hearth.provision"] * 3
    # The gap is filled (intents count as in progress): the next tick provisions nothing more.
    assert tick(runtime, lambda name, args: sent.append(name)) == []
    assert len(sent) == 3
