"""Pools fill to spec with their inputs inside; expired containers are replaced; two heartbeats
create no more than one; a worker killed mid-provision leaves no orphan.

Real parts throughout: a redis-server, Celery workers as separate processes, the local API over a
socket, and the official ``openai`` SDK to look at what really exists on the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from celery import Celery

from hearth.planner import Planner, tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import sdk, until
from worker.heartbeat import Heartbeat

POOLS = """
version: 1
pools:
  alpha:
    min_ready: {min_ready}
    buffer: 0
    max_total: {max_total}
    container: {{expires_after_minutes: 10}}
    keepalive: {{margin_seconds: 60}}
    inputs:
      - path: inputs/*.csv
      - path: inputs/helper.py
        as: helper.py
"""


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    return {"HEARTH_ORPHAN_GRACE": "5"}


def write_pools(env: PoolEnv, *, min_ready: int, max_total: int) -> None:
    env.write_pools(POOLS.format(min_ready=min_ready, max_total=max_total))


@pytest.fixture
def runtime(pools_env: PoolEnv, hearth_runtime: Runtime) -> Runtime:
    """The shared Runtime (tests/fixtures/pools.py), with this module's input files."""
    pools_env.write_input("inputs/a.csv", b"x,y\n1,2\n")
    pools_env.write_input("inputs/b.csv", b"x,y\n" + b"3,4\n" * 500)
    pools_env.write_input("inputs/helper.py", b"print('hello from hearth')\n")
    return hearth_runtime



def ours(client: openai.OpenAI) -> list[Any]:
    return [c for c in client.containers.list(limit=100) if c.name.startswith("hearth-alpha-")]



def ready(rt: Runtime) -> list[str]:
    return [r.container_id or "" for r in rt.store.records("alpha", State.READY)]


def test_pool_fills_to_min_ready_with_inputs_inside(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, local_api: LocalAPI,
) -> None:
    write_pools(pools_env, min_ready=3, max_total=5)
    start_worker(pools_env.env, concurrency=4)

    def step() -> None:
        tick(runtime, lambda name, args: celery_app.send_task(name, args=args))

    until(lambda: len(ready(runtime)) == 3, step=step, timeout=90.0)

    client = sdk(local_api)
    remote = ours(client)
    assert sorted(c.id for c in remote) == sorted(ready(runtime))  # nothing more was created
    for container_id in ready(runtime):
        files = {f.path.rsplit("-", 1)[-1] if "-" in f.path.rsplit("/", 1)[-1] else f.path.rsplit("/", 1)[-1]: f
                 for f in client.containers.files.list(container_id)}
        assert set(files) == {"a.csv", "b.csv", "helper.py"}
        helper = client.containers.files.content.retrieve(files["helper.py"].id, container_id=container_id)
        assert helper.read() == b"print('hello from hearth')\n"
        assert files["b.csv"].bytes == len("x,y\n" + "3,4\n" * 500)


def test_clock_jump_expires_containers_and_next_ticks_replace_them(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, local_api: LocalAPI,
) -> None:
    write_pools(pools_env, min_ready=2, max_total=4)
    start_worker(pools_env.env, concurrency=4)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(ready(runtime)) == 2, step=lambda: tick(runtime, send), timeout=90.0)
    before = set(ready(runtime))

    local_api.advance_clock(11 * 60)  # past expires_after: the server expires both
    client = sdk(local_api)
    assert {client.containers.retrieve(cid).status for cid in before} == {"expired"}

    def step() -> None:
        tick(runtime, send, remote=Planner(runtime).remote())  # the heartbeat's periodic listing

    until(lambda: len(ready(runtime)) == 2 and not (set(ready(runtime)) & before), step=step, timeout=90.0)
    after = set(ready(runtime))
    assert {client.containers.retrieve(cid).status for cid in after} == {"running"}
    # The expired ones were retired (deleted), not left behind.
    until(lambda: {c.id for c in ours(client)} == after, step=step, timeout=90.0)


def test_two_heartbeats_create_no_more_than_one(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, local_api: LocalAPI,
) -> None:
    write_pools(pools_env, min_ready=3, max_total=3)
    start_worker(pools_env.env, concurrency=4)
    other = Runtime.from_settings(Settings())
    beats = [Heartbeat(runtime, celery_app, identity="a"), Heartbeat(other, celery_app, identity="b")]
    stop = threading.Event()

    def run(beat: Heartbeat) -> None:
        while not stop.is_set():
            beat.tick()
            time.sleep(0.05)

    threads = [threading.Thread(target=run, args=(b,)) for b in beats]
    for t in threads:
        t.start()
    try:
        until(lambda: len(ready(runtime)) == 3, timeout=90.0)
        time.sleep(2)  # keep both ticking a while after the pool is full
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for b in beats:
            b.stop()
        other.close()
    assert sum(1 for b in beats if b.ticks > 0) == 1  # only the leader ever planned
    assert len(ours(sdk(local_api))) == 3


def test_worker_killed_mid_provision_leaves_no_orphan(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, local_api: LocalAPI,
) -> None:
    write_pools(pools_env, min_ready=2, max_total=3)
    # The listing that verifies the copies is slow, so the kill lands after the creates (which carry
    # the staged inputs as file_ids) and before any container is READY.
    local_api.set_faults({"endpoints": {"files.list": {"latency_ms": 1500}}})
    # The dead worker's unacked provisions come back 10 s after delivery plus one sweep (tasks.app).
    env = pools_env.with_(HEARTH_TASK_VISIBILITY_TIMEOUT="10")
    worker = start_worker(env, concurrency=4)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    client = sdk(local_api)
    until(lambda: len(ours(client)) >= 1, step=lambda: tick(runtime, send), timeout=60)
    worker.kill()
    assert len(ready(runtime)) < 2  # it died in the middle
    local_api.set_faults(None)

    start_worker(env, concurrency=4)

    def step() -> None:
        tick(runtime, send, remote=Planner(runtime).remote())

    until(lambda: len(ready(runtime)) == 2, step=step, timeout=120)
    time.sleep(6)  # past the orphan grace (5 s), with more ticks
    until(lambda: {c.id for c in ours(client)} == set(ready(runtime)), step=step, timeout=60)
    records = runtime.store.records("alpha")
    assert all(r.state in (State.READY,) for r in records), [r.state for r in records]
