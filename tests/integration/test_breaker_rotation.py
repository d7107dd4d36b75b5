"""The create breaker end to end, and rotation of containers whose inputs changed.

Breaker: every create fails on the server; real worker processes retry the provisions until the
pool's breaker opens; then no create reaches the server while it is open, ``hearth status`` says so
and why, and once the faults are gone and the cool-down has passed a single probe closes it and the
pool fills. The workers run on the system clock, so after the time jump the probe runs in this
process, whose Runtime's clock has passed the cool-down (``inline_enqueue``).

Rotation: a pool is full, one input file changes, and the ticks replace every READY container with
one that holds the new bytes, never having more than ``max_total`` containers meanwhile.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from celery import Celery

from hearth.clock import OffsetClock
from hearth.planner import Planner, tick
from hearth.pool.model import State
from hearth.pool.reconcile import Forget, Provision
from hearth.pool.store import BreakerState
from hearth.runtime import Runtime
from tests.e2e.helpers import clean_env, hearth
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import advance_both, celery_enqueue, count_requests, inline_enqueue, remote_names, sdk, until

BREAKER_POOLS = """
version: 1
pools:
  delta:
    min_ready: 2
    max_total: 3
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
"""

ROTATION_POOLS = """
version: 1
pools:
  delta:
    min_ready: 2
    max_total: 3
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
    inputs:
      - path: inputs/table.csv
        as: table.csv
"""


def test_repeated_create_failures_open_the_breaker_then_a_probe_closes_it_and_the_pool_fills(
    pools_env: PoolEnv, hearth_runtime: Runtime, hearth_clock: OffsetClock, local_api: LocalAPI,
    start_worker: Callable[..., WorkerProcess], celery_app: Celery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = hearth_runtime
    pools_env.write_pools(BREAKER_POOLS)
    requests = count_requests(local_api, monkeypatch)
    local_api.set_faults({"endpoints": {"containers.create": {"error_rate": 1.0}}})
    # One HTTP try per create, so each task attempt is one create failure for the breaker.
    worker = start_worker(pools_env.with_(HEARTH_API_MAX_RETRIES="0"), concurrency=2)
    send = celery_enqueue(celery_app)

    until(lambda: rt.store.breaker_state("delta").state is BreakerState.OPEN,
          step=lambda: tick(rt, send), timeout=40, what="breaker open")
    time.sleep(1.0)  # a create that passed the breaker just before it opened finishes failing
    creates, failures = requests["containers.create"], rt.store.breaker_state("delta").failures
    assert creates >= 5 and failures >= 5
    for _ in range(10):  # ticks and the workers' own retries go on while it is open
        tick(rt, send)
        time.sleep(0.3)
    assert requests["containers.create"] == creates
    assert rt.store.breaker_state("delta").failures == failures
    assert remote_names(sdk(local_api), "hearth-delta-") == {}

    done = hearth(["status", "--json"], clean_env(**pools_env.env), cwd=pools_env.root)
    assert done.returncode == 0, done.stderr
    pool = json.loads(done.stdout)["pools"]["delta"]
    assert pool["breaker"] == "open"
    assert pool["breaker_reason"] and "Server" in pool["breaker_reason"], pool
    assert pool["ready"] == 0

    worker.stop()
    local_api.set_faults(None)
    # Past the cool-down (300 s) and the create timeout (600 s): the old intents are dead.
    advance_both(local_api, hearth_clock, 601)
    planner = Planner(rt)
    (plan,) = planner.plan(remote=planner.remote())
    assert plan.breaker == "half-open"
    assert [a.count for a in plan.actions if isinstance(a, Provision)] == [1]  # one probe only
    assert len([a for a in plan.actions if isinstance(a, Forget)]) == 2

    step = lambda: tick(rt, inline_enqueue(rt), remote=Planner(rt).remote())  # noqa: E731
    step()
    assert rt.store.breaker_state("delta").state is BreakerState.CLOSED
    assert len(rt.store.records("delta", State.READY)) == 1
    until(lambda: len(rt.store.records("delta", State.READY)) == 2, step=step, timeout=30, what="pool full")
    ready = {r.container_id for r in rt.store.records("delta", State.READY)}
    assert set(remote_names(sdk(local_api), "hearth-delta-")) == ready


def test_changed_input_file_rotates_ready_containers_within_max_total(
    pools_env: PoolEnv, hearth_runtime: Runtime, local_api: LocalAPI,
    start_worker: Callable[..., WorkerProcess], celery_app: Celery,
) -> None:
    rt = hearth_runtime
    old, new = b"k,v\nold,1\n", b"k,v\nnew,2\nnew,3\n"
    path = pools_env.write_input("inputs/table.csv", old)
    pools_env.write_pools(ROTATION_POOLS)
    start_worker(pools_env.env, concurrency=3)
    send = celery_enqueue(celery_app)
    client = sdk(local_api)

    def contents() -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for r in rt.store.records("delta", State.READY):
            assert r.container_id is not None
            files = [f for f in client.containers.files.list(r.container_id) if f.path.endswith("table.csv")]
            assert len(files) == 1, files
            out[r.container_id] = client.containers.files.content.retrieve(
                files[0].id, container_id=r.container_id).read()
        return out

    until(lambda: len(rt.store.records("delta", State.READY)) == 2, step=lambda: tick(rt, send),
          timeout=40, what="pool full")
    before = contents()
    assert set(before.values()) == {old}

    time.sleep(0.05)  # a distinct mtime even on coarse file systems
    path.write_bytes(new)
    highest = 0

    def step() -> None:
        nonlocal highest
        tick(rt, send)
        on_server = len(remote_names(client, "hearth-delta-"))
        records = [r for r in rt.store.records("delta") if r.state is not State.GONE]
        highest = max(highest, on_server, len(records))

    def rotated() -> bool:
        ready = rt.store.records("delta", State.READY)
        return (len(ready) == 2 and not {r.container_id for r in ready} & set(before)
                and len(rt.store.records("delta")) == 2)

    until(rotated, step=step, timeout=40, what="rotation")
    after = contents()
    assert set(after.values()) == {new}
    assert not set(after) & set(before)
    assert set(remote_names(client, "hearth-delta-")) == set(after)  # the stale ones were deleted
    assert highest <= 3

