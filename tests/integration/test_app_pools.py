"""The application's API, on both faces: ``HearthPools`` (threads) and ``AsyncHearthPools`` (asyncio).

Real parts: a redis-server, a Celery worker process (provision, reconcile, harvest, retire), the
local API over a socket, the official ``openai`` SDK to see what the server holds. Each test runs
twice (``face``): its body is one coroutine, calling either ``AsyncHearthPools`` itself, or
``HearthPools`` on threads (tests/fixtures/faces.py ``Threaded``), so the assertions are one text:
no container leased twice among 50 concurrent callers, an empty pool's waiting lease takes the
refill while the event loop keeps running, and a release harvests what the container held; and
for sessions (``pools.sessions()``: ``Sessions`` or ``AsyncSessions``), a key keeps its container,
``after_response`` saves the cited file, ``end_session`` retires and a later turn restores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio
from celery import Celery

from hearth.errors import PoolEmpty
from hearth.files.manifest import MANIFEST_KEY, Manifest
from hearth.files.storage import StorageTarget
from hearth.planner import tick
from hearth.pool.leases import Lease
from hearth.pool.model import State
from hearth.runtime import Runtime
from hearth.sessions import SessionRecord, session_hash
from tasks.async_pools import AsyncHearthPools
from tasks.pools import HearthPools
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.faces import Threaded
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import sdk, sdk_response, until

POOLS = """
version: 1
pools:
  alpha:
    min_ready: {ready}
    buffer: 0
    max_total: {total}
    container: {{expires_after_minutes: 20}}
    lease: {{ttl_seconds: 600, wait_seconds: 60}}
"""


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    return {"HEARTH_ORPHAN_GRACE": "600"}


def fill(runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
         *, ready: int, total: int) -> None:
    pools_env.write_pools(POOLS.format(ready=ready, total=total))
    start_worker(pools_env.env, concurrency=3)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(runtime.store.records("alpha", State.READY)) >= ready, step=lambda: tick(runtime, send),
          timeout=120.0)


@pytest.fixture
def app_pools(
    face: str, hearth_runtime: Runtime, celery_app: Celery, aio: asyncio.Runner,
    async_redis: Callable[..., redis.asyncio.Redis], threads: ThreadPoolExecutor,
) -> Iterator[Any]:
    """The face under test, awaitable: ``AsyncHearthPools`` itself, or ``HearthPools`` on threads."""
    if face == "sync":
        yield Threaded(HearthPools(hearth_runtime, celery_app), threads)
        return
    pools = AsyncHearthPools(hearth_runtime, async_redis(max_connections=64), celery_app)
    yield pools
    aio.run(pools.aclose())


def harvested(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name) if p.is_file()]


def test_fifty_concurrent_callers_never_get_one_container_twice(
    app_pools: Any, hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, aio: asyncio.Runner,
) -> None:
    fill(hearth_runtime, pools_env, start_worker, celery_app, ready=8, total=8)

    async def main() -> list[Lease | None]:
        go = asyncio.Event()

        async def caller() -> Lease | None:
            await go.wait()
            try:
                return await app_pools.lease("alpha", wait=0)
            except PoolEmpty:
                return None

        callers = [asyncio.create_task(caller()) for _ in range(50)]
        go.set()  # all 50 are parked on the event: they start together
        return await asyncio.gather(*callers)

    results = aio.run(main())
    got = [lease for lease in results if lease is not None]
    # max_total 8: no refill can add a ninth, so exactly the eight are handed out, each once.
    assert len(got) == 8 and results.count(None) == 42
    assert len({lease.container_id for lease in got}) == 8
    assert len({lease.token for lease in got}) == 8
    leased = hearth_runtime.store.records("alpha", State.LEASED)
    assert {r.container_id for r in leased} == {lease.container_id for lease in got}
    assert {r.lease_id for r in leased} == {lease.lease_id for lease in got}


def test_an_empty_pools_waiting_lease_takes_the_refill_while_the_loop_runs_on(
    app_pools: Any, hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, aio: asyncio.Runner, local_api: LocalAPI,
) -> None:
    fill(hearth_runtime, pools_env, start_worker, celery_app, ready=1, total=2)
    first = aio.run(app_pools.lease("alpha"))
    assert hearth_runtime.store.records("alpha", State.READY) == []  # empty now; nobody ticks from here on

    async def main() -> tuple[Lease, int, int]:
        waiter = asyncio.create_task(app_pools.lease("alpha", wait=90))
        beats = pending = 0
        # Another coroutine of the same loop keeps working (Redis round trips) while the lease waits:
        # it could not if the wait blocked the loop.
        client = redis.asyncio.Redis.from_url(hearth_runtime.settings.resolved_redis_url or "")
        try:
            while not waiter.done():
                await client.ping()
                beats += 1
                pending += not waiter.done()
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()
        return await waiter, beats, pending

    got, beats, pending = aio.run(main())
    # The lease asked the worker for a reconcile, the worker created a container, the waiter took it.
    assert got.container_id != first.container_id
    assert beats >= 2 and pending >= 2
    record = hearth_runtime.store.by_container_id(got.container_id)
    assert record is not None and record.state is State.LEASED and record.lease_id == got.lease_id
    assert sdk(local_api).containers.retrieve(got.container_id).status == "running"


def test_leaving_the_leased_block_harvests_the_containers_files_and_retires_it(
    app_pools: Any, hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, aio: asyncio.Runner, local_api: LocalAPI,
) -> None:
    fill(hearth_runtime, pools_env, start_worker, celery_app, ready=1, total=1)
    client = sdk(local_api)

    async def main() -> Lease:
        async with app_pools.leased("alpha") as lease:
            record = hearth_runtime.store.by_container_id(lease.container_id)
            assert record is not None and record.state is State.LEASED
            local_api.write_assistant_file(lease.container_id, "/mnt/data/out/summary.txt", b"42 rows\n")
            await asyncio.to_thread(client.containers.files.create, lease.container_id,
                                    file=("question.txt", b"how many rows?\n"))
        return lease

    lease = aio.run(main())
    assert hearth_runtime.store.by_container_id(lease.container_id).state is not State.LEASED  # type: ignore[union-attr]
    until(lambda: harvested(pools_env.harvest_dir, "summary.txt"), timeout=90.0)
    assert harvested(pools_env.harvest_dir, "summary.txt")[0].read_bytes() == b"42 rows\n"

    def deleted() -> bool:
        try:
            client.containers.retrieve(lease.container_id)
        except openai.NotFoundError:
            return True
        return False

    until(deleted, timeout=90.0)  # harvested, then retired by the worker
    assert hearth_runtime.store.by_container_id(lease.container_id) is None


# --- sessions: a container per conversation key, on both faces -----------------------------------

KEY = "conversation-secret-51c2"


@pytest.fixture
def app_sessions(face: str, app_pools: Any, threads: ThreadPoolExecutor) -> Any:
    """``pools.sessions()`` of the face under test, awaitable (the sync ``Sessions`` on threads)."""
    if face == "sync":
        return Threaded(app_pools._target.sessions(), threads)
    return app_pools.sessions()


def stored_bytes(rec: SessionRecord, file_id: str) -> bytes | None:
    """What storage holds for one file of the session's current container (from its manifest)."""
    target = StorageTarget.from_url(rec.history[-1].target)
    raw = target.read_bytes(MANIFEST_KEY)
    manifest = None if raw is None else Manifest.from_json(raw, container_id=rec.history[-1].container_id)
    entry = manifest.files.get(file_id) if manifest is not None else None
    if entry is None:
        return None
    with target.open_read(entry.storage_key) as fh:
        return fh.read()


def test_a_key_keeps_its_container_and_concurrent_first_turns_of_a_key_bind_one(
    app_sessions: Any, hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, aio: asyncio.Runner,
) -> None:
    fill(hearth_runtime, pools_env, start_worker, celery_app, ready=3, total=3)

    async def main() -> tuple[Any, list[Any], Any, list[Any]]:
        first = await app_sessions.lease("alpha", KEY)
        again = [await app_sessions.lease("alpha", KEY) for _ in range(3)]
        other = await app_sessions.lease("alpha", "another-conversation")
        # Five turns of a new key at once: one binds under the session lock, the others wait and share it.
        racing = await asyncio.gather(*(app_sessions.lease("alpha", "third-conversation") for _ in range(5)))
        return first, again, other, racing

    first, again, other, racing = aio.run(main())
    assert first.created and not first.restored and first.session_id == session_hash(KEY)
    assert {a.container_id for a in again} == {first.container_id}
    assert not any(a.created or a.restored for a in again)
    assert other.container_id != first.container_id and other.session_id != first.session_id
    assert len({r.container_id for r in racing}) == 1 and sum(r.created for r in racing) == 1
    assert racing[0].container_id not in (first.container_id, other.container_id)
    record = hearth_runtime.store.by_container_id(first.container_id)
    assert record is not None and record.state is State.LEASED and record.session_key_hash == first.session_id
    leased = hearth_runtime.store.records("alpha", State.LEASED)
    assert len(leased) == 3  # one container per key, none taken twice
    rec = aio.run(app_sessions.get(KEY))
    assert rec is not None and rec.container_id == first.container_id


def test_after_response_saves_the_cited_file_and_end_retires_then_a_later_turn_restores(
    app_sessions: Any, hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, aio: asyncio.Runner, local_api: LocalAPI,
) -> None:
    fill(hearth_runtime, pools_env, start_worker, celery_app, ready=2, total=3)
    client = sdk(local_api)
    got = aio.run(app_sessions.lease("alpha", KEY))
    other = aio.run(app_sessions.lease("alpha", "another-conversation"))
    primes = b"p\n2\n3\n5\n7\n"
    cited = local_api.write_assistant_file(got.container_id, "/mnt/data/primes.csv", primes)
    foreign = local_api.write_assistant_file(other.container_id, "/mnt/data/secret.txt", b"not yours\n")
    response = sdk_response(got.container_id, [(got.container_id, cited["id"], "primes.csv"),
                                               (other.container_id, foreign["id"], "secret.txt")])

    done = aio.run(app_sessions.after_response(KEY, response))
    assert done.found and done.container_id == got.container_id and done.complete
    assert [(c["file_id"], c["status"]) for c in done.cited] == [(cited["id"], "saved")]
    assert [(r["container_id"], r["file_id"]) for r in done.refused] == [(other.container_id, foreign["id"])]
    rec = hearth_runtime.redis.get(hearth_runtime.store.key("session", session_hash(KEY)))
    assert rec is not None
    record = SessionRecord.model_validate_json(rec)
    assert stored_bytes(record, cited["id"]) == primes and stored_bytes(record, foreign["id"]) is None

    ended = aio.run(app_sessions.end_session(KEY))
    assert ended.found and ended.retiring and ended.container_id == got.container_id and ended.harvested_files >= 1

    def deleted() -> bool:
        try:
            client.containers.retrieve(got.container_id)
        except openai.NotFoundError:
            return True
        return False

    until(deleted, timeout=90.0)  # the worker's hearth.retire deleted it on the server
    after = aio.run(app_sessions.get(KEY))
    assert after is not None and after.ended and after.container_id is None

    # The conversation comes back: a fresh container (the lease asks the worker for it), files restored.
    back = aio.run(app_sessions.lease("alpha", KEY, wait=90))
    assert back.restored and back.container_id not in (got.container_id, other.container_id)
    assert back.restored_files == ["primes.csv"]
    names = {f.path.rsplit("/", 1)[-1]: f.id for f in client.containers.files.list(back.container_id)}
    restored = [fid for name, fid in names.items() if name.endswith("primes.csv")]
    assert len(restored) == 1
    content = client.containers.files.content.retrieve(restored[0], container_id=back.container_id).read()
    assert content == primes
