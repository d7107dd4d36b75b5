"""Sessions end to end: the same key keeps its container; a lost container comes back with its files.

Real parts: a redis-server, a Celery worker process (provision, harvest, retire), the local API over
a socket, and the ``openai`` SDK to read what the containers really hold. The test's Runtime runs on
an ``OffsetClock`` moved together with the server's clock, so "20 minutes later" is seen alike by
Hearth and the backend.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from celery import Celery
from typer.testing import CliRunner

from hearth.clock import OffsetClock
from hearth.files.manifest import MANIFEST_KEY, Manifest
from hearth.files.storage import StorageTarget
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from hearth.sessions import Sessions, restore_name, session_hash
from settings import Settings
from tasks.app import broker_key_prefix
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import advance_both, sdk, until

POOLS = """
version: 1
pools:
  alpha:
    min_ready: 2
    buffer: 0
    max_total: 6
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
    lease: {session_idle_seconds: 3600, wait_seconds: 60}
    inputs:
      - path: inputs/a.csv
      - path: inputs/helper.py
"""

KEY = "conversation-secret-7f3a"


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    return {"HEARTH_ORPHAN_GRACE": "600"}


@pytest.fixture
def runtime(pools_env: PoolEnv, hearth_runtime: Runtime) -> Runtime:
    """The shared Runtime (tests/fixtures/pools.py), with this module's pools file and inputs."""
    pools_env.write_input("inputs/a.csv", b"x,y\n1,2\n")
    pools_env.write_input("inputs/helper.py", b"print('hi')\n")
    pools_env.write_pools(POOLS)
    return hearth_runtime


@pytest.fixture
def send(celery_app: Celery) -> Callable[[str, list[Any]], None]:
    return lambda name, args: celery_app.send_task(name, args=args)


@pytest.fixture
def filled(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    send: Callable[[str, list[Any]], None],
) -> Runtime:
    """A worker running and pool ``alpha`` holding two READY containers."""
    start_worker(pools_env.env, concurrency=3)
    until(lambda: len(runtime.store.records("alpha", State.READY)) >= 2, step=lambda: tick(runtime, send), timeout=90.0)
    return runtime




def contents(client: openai.OpenAI, container_id: str) -> dict[str, bytes]:
    """Every file of a container by its restore name, read through the SDK."""
    out: dict[str, bytes] = {}
    for f in client.containers.files.list(container_id):
        name = restore_name(f.path)
        assert name not in out, f"two files named {name} in {container_id}"
        out[name] = client.containers.files.content.retrieve(f.id, container_id=container_id).read()
    return out



def test_a_bind_counts_as_pool_demand_and_a_same_key_turn_does_not(
    filled: Runtime, send: Callable[[str, list[Any]], None],
) -> None:
    # A bind takes a READY container, as a pool lease does: `buffer: auto` must see it in the rate
    # and `hearth cost` count it as a lease served. A same-key turn takes no container.
    rt = filled
    demand_key = rt.costs.demand.key("alpha")

    def counted() -> int:
        return int(rt.redis.hget(demand_key, "leases") or 0)

    def served() -> int:
        now = rt.clock.now()  # the last two hours: report reads one bucket per hour since `since`
        return sum(r.leases for r in rt.costs.report(["alpha"], now - 7200.0, now))

    sessions = Sessions(rt, send)
    before, served_before = counted(), served()
    sessions.lease("alpha", KEY)
    assert counted() == before + 1 and served() == served_before + 1
    for _ in range(3):
        sessions.lease("alpha", KEY)
    assert counted() == before + 1
    sessions.lease("alpha", "another-conversation")
    assert counted() == before + 2 and served() == served_before + 2
    # The heartbeat folds them into the estimate like any other lease.
    assert rt.costs.demand.view("alpha", rt.clock.now(), commit=True).rate > 0


def test_same_key_same_container_and_the_key_never_reaches_redis(
    filled: Runtime, send: Callable[[str, list[Any]], None], celery_app: Celery,
) -> None:
    sessions = Sessions(filled, send)
    first = sessions.lease("alpha", KEY)
    again = [sessions.lease("alpha", KEY) for _ in range(3)]
    other = sessions.lease("alpha", "another-conversation")

    assert first.created and not first.restored
    assert {a.container_id for a in again} == {first.container_id}
    assert not any(a.created or a.restored for a in again)
    assert other.container_id != first.container_id
    assert first.session_id == session_hash(KEY) != other.session_id
    record = filled.store.by_container_id(first.container_id)
    assert record is not None and record.state is State.LEASED and record.session_key_hash == first.session_id

    # By task name, as an app that only speaks Celery would: the same container, the hash only.
    via_task = celery_app.send_task("hearth.session_lease", args=["alpha", KEY]).get(timeout=60)
    assert via_task["container_id"] == first.container_id
    assert KEY not in repr(via_task)

    # The broker holds a task's message (its args) until the worker acknowledges it, after the
    # result is stored: wait for that, to show nothing keeps the key once the task is done.
    deadline = time.monotonic() + 30
    unacked = broker_key_prefix(filled.settings) + "unacked"
    while filled.redis.hlen(unacked) and time.monotonic() < deadline:
        time.sleep(0.1)
    dump: list[Any] = []
    for k in filled.redis.scan_iter("*"):
        dump.append(k)
        kind = filled.redis.type(k)
        if kind == b"string":
            dump.append(filled.redis.get(k) or b"")
        elif kind == b"hash":
            dump.extend(v for pair in filled.redis.hgetall(k).items() for v in pair)
        elif kind == b"list":
            dump.extend(filled.redis.lrange(k, 0, -1))
        elif kind == b"zset":
            dump.extend(filled.redis.zrange(k, 0, -1))
        elif kind == b"set":
            dump.extend(filled.redis.smembers(k))
    assert dump and not any(KEY.encode() in item for item in dump)


def test_expired_container_is_replaced_with_every_file_back_byte_for_byte(
    filled: Runtime, send: Callable[[str, list[Any]], None], celery_app: Celery, local_api: LocalAPI,
    hearth_clock: OffsetClock,
) -> None:
    sessions = Sessions(filled, send)
    client = sdk(local_api)
    first = sessions.lease("alpha", KEY)
    chart = os.urandom(300_000)
    local_api.write_assistant_file(first.container_id, "/mnt/data/chart.png", chart)
    local_api.write_assistant_file(first.container_id, "/mnt/data/out/table.csv", b"q,v\n1,9\n")
    client.containers.files.create(first.container_id, file=("notes.txt", b"the app's upload\n"))
    before = contents(client, first.container_id)
    assert set(before) == {"a.csv", "helper.py", "chart.png", "table.csv", "notes.txt"}

    # What the heartbeat/lease does between turns: the session harvest task, on the worker.
    done = celery_app.send_task("hearth.session_harvest", args=[first.session_id]).get(timeout=60)
    assert done["harvested"] and done["files"] == 3  # the inputs are not harvested: the pool has them

    advance_both(local_api, hearth_clock, 11 * 60)  # past expires_after: the backend expires the container
    assert client.containers.retrieve(first.container_id).status == "expired"
    until(lambda: len(filled.store.records("alpha", State.READY)) >= 1, step=lambda: tick(filled, send), timeout=90.0)

    second = sessions.lease("alpha", KEY)
    assert second.container_id != first.container_id
    assert second.restored and not second.created
    assert sorted(second.restored_files) == ["chart.png", "notes.txt", "table.csv"]
    after = contents(client, second.container_id)
    assert after == before  # byte for byte, inputs once, every session file back under its name

    # The next turn gets the restored container, without restoring again.
    third = sessions.lease("alpha", KEY)
    assert third.container_id == second.container_id and not third.restored


def test_two_concurrent_first_leases_for_one_key_end_with_one_container(
    filled: Runtime, send: Callable[[str, list[Any]], None], hearth_clock: OffsetClock,
) -> None:
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)
    runtimes = [Runtime.from_settings(Settings(), clock=hearth_clock) for _ in range(3)]

    def go(rt: Runtime) -> None:
        try:
            barrier.wait(10)
            results.append(Sessions(rt, send).lease("alpha", KEY).container_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(rt,)) for rt in runtimes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for rt in runtimes:
        rt.close()
    assert not errors, errors
    assert len(results) == 3 and len(set(results)) == 1
    leased = filled.store.records("alpha", State.LEASED)
    assert [r.container_id for r in leased] == [results[0]]


def test_ending_a_session_harvests_and_retires_and_a_later_lease_restores(
    filled: Runtime, send: Callable[[str, list[Any]], None], local_api: LocalAPI,
) -> None:
    sessions = Sessions(filled, send)
    client = sdk(local_api)
    got = sessions.lease("alpha", KEY)
    report = os.urandom(50_000)
    local_api.write_assistant_file(got.container_id, "/mnt/data/report.pdf", report)
    client.containers.files.create(got.container_id, file=("question.txt", b"why?\n"))

    ended = sessions.end_session(KEY)
    assert ended.found and ended.retiring and ended.harvested_files == 2

    def deleted() -> bool:
        try:
            client.containers.retrieve(got.container_id)
        except openai.NotFoundError:
            return True
        return False

    until(deleted, timeout=90.0)  # the worker's hearth.retire deleted it on the server
    assert filled.store.by_container_id(got.container_id) is None
    record = sessions.get(KEY)
    assert record is not None and record.ended and record.container_id is None
    target = StorageTarget.from_url(record.history[-1].target)
    raw = target.read_bytes(MANIFEST_KEY)
    assert raw is not None
    manifest = Manifest.from_json(raw, container_id=got.container_id)
    saved = {restore_name(e.container_path): e for e in manifest.files.values()}
    assert set(saved) == {"report.pdf", "question.txt"}
    with target.open_read(saved["report.pdf"].storage_key) as fh:
        assert fh.read() == report

    # The conversation comes back later: a fresh container with its files.
    until(lambda: len(filled.store.records("alpha", State.READY)) >= 1, step=lambda: tick(filled, send), timeout=90.0)
    back = sessions.lease("alpha", KEY)
    assert back.restored and back.container_id != got.container_id
    files = contents(client, back.container_id)
    assert files["report.pdf"] == report and files["question.txt"] == b"why?\n"


def test_cli_lease_session_and_session_end(
    filled: Runtime, send: Callable[[str, list[Any]], None], local_api: LocalAPI,
) -> None:
    import json

    from worker.cli import _load, app

    _load()
    runner = CliRunner()
    leased = runner.invoke(app, ["lease", "alpha", "--session", KEY, "--json"])
    assert leased.exit_code == 0, leased.output
    data = json.loads(leased.stdout)
    assert data["session_id"] == session_hash(KEY) and data["created"]
    assert KEY not in leased.stdout
    again = json.loads(runner.invoke(app, ["lease", "alpha", "--session", KEY, "--json"]).stdout)
    assert again["container_id"] == data["container_id"]

    ended = runner.invoke(app, ["session", "end", KEY, "--json"])
    assert ended.exit_code == 0, ended.output
    assert json.loads(ended.stdout)["retiring"] is True
    record = filled.store.by_container_id(data["container_id"])
    assert record is None or record.state in (State.HARVESTING, State.DELETING, State.GONE)


def test_idle_window_lapse_retires_and_the_next_turn_gets_the_files_back(
    filled: Runtime, send: Callable[[str, list[Any]], None], local_api: LocalAPI, pools_env: PoolEnv,
) -> None:
    pools = pools_env.pools_file
    pools.write_text(POOLS.replace("session_idle_seconds: 3600", "session_idle_seconds: 1"))
    sessions = Sessions(filled, send)
    client = sdk(local_api)
    got = sessions.lease("alpha", KEY)
    plot = os.urandom(20_000)
    local_api.write_assistant_file(got.container_id, "/mnt/data/plot.svg", plot)
    time.sleep(1.5)  # the session sits idle past its window

    def gone() -> bool:
        try:
            client.containers.retrieve(got.container_id)
        except openai.NotFoundError:
            return True
        return False

    until(gone, step=lambda: tick(filled, send), timeout=90.0)  # reclaim -> retire (the pool's harvest) -> deleted
    until(lambda: len(filled.store.records("alpha", State.READY)) >= 1, step=lambda: tick(filled, send), timeout=90.0)
    back = sessions.lease("alpha", KEY)
    assert back.restored and back.restored_files == ["plot.svg"]
    assert contents(client, back.container_id)["plot.svg"] == plot
