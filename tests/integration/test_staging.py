"""Pool inputs staged once in the Files API and copied into containers at create (``file_ids``).

Real parts: a redis-server, a Celery worker process, the local API over a socket (which counts the
requests it serves, ``/_dev/requests``, and whose ``file_ids`` copy can be switched off,
``/_dev/switches``), and the official ``openai`` SDK as the independent view of the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import openai
import pytest
from celery import Celery

from hearth.clock import OffsetClock
from hearth.files.staging import stage_key
from hearth.operations import Operations
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from tests.e2e.helpers import clean_env, hearth
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import celery_enqueue, sdk, until

SHARED = b"id,value\n" + b"1,2\n" * 2000
HELPER = b"print('staged once')\n"

POOLS = """
version: 1
pools:
  alpha:
    min_ready: {alpha}
    max_total: 12
    container: {{expires_after_minutes: 10}}
    keepalive: {{margin_seconds: 60}}
    inputs:
      - path: inputs/shared.csv
      - path: inputs/helper.py
        as: tool.py
  beta:
    min_ready: {beta}
    max_total: 12
    container: {{expires_after_minutes: 10}}
    keepalive: {{margin_seconds: 60}}
    inputs:
      - path: inputs/shared.csv
      - path: inputs/helper.py
        as: tool.py
"""

CONTAINER_ENDPOINTS = ("containers.create", "containers.retrieve", "containers.delete", "files.create",
                       "files.list", "files.retrieve", "files.delete", "files.content")


def write_pools(env: PoolEnv, *, alpha: int, beta: int = 0) -> None:
    path = env.write_pools(POOLS.format(alpha=alpha, beta=beta))
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 2))  # every Runtime's mtime check sees the edit


@pytest.fixture
def runtime(pools_env: PoolEnv, hearth_runtime: Runtime) -> Runtime:
    pools_env.write_input("inputs/shared.csv", SHARED)
    pools_env.write_input("inputs/helper.py", HELPER)
    return hearth_runtime


def ready(rt: Runtime, pool: str) -> list[str]:
    return [r.container_id or "" for r in rt.store.records(pool, State.READY)]


def holds_inputs(client: openai.OpenAI, container_id: str) -> dict[str, str]:
    """name -> path of the container's user files, after checking their bytes are the inputs'."""
    files = {f.path.rsplit("/", 1)[-1]: f for f in client.containers.files.list(container_id) if f.source == "user"}
    by_name = {n.rsplit("-", 1)[-1] if n.endswith(("shared.csv", "tool.py")) else n: f for n, f in files.items()}
    assert set(by_name) == {"shared.csv", "tool.py"}, sorted(files)
    for name, data in (("shared.csv", SHARED), ("tool.py", HELPER)):
        got = client.containers.files.content.retrieve(by_name[name].id, container_id=container_id).read()
        assert got == data
    return {n: f.path for n, f in by_name.items()}


def fill(rt: Runtime, celery_app: Celery, want: dict[str, int], timeout: float = 120.0) -> None:
    send = celery_enqueue(celery_app)
    until(lambda: all(len(ready(rt, p)) >= n for p, n in want.items()), step=lambda: tick(rt, send),
          timeout=timeout, what=f"pools ready {want}")


def test_twenty_containers_in_two_pools_share_one_upload_per_input_and_cost_two_requests_each(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI,
) -> None:
    write_pools(pools_env, alpha=10, beta=10)
    start_worker(pools_env.env, concurrency=4)
    local_api.request_counts(reset=True)
    fill(runtime, celery_app, {"alpha": 10, "beta": 10})
    counts = local_api.request_counts()

    # One upload per input for all 20 containers of both pools, nothing streamed into any container.
    assert counts.get("uploads.create") == 2, counts
    assert counts.get("files.create", 0) == 0, counts
    per_container = sum(counts.get(e, 0) for e in CONTAINER_ENDPOINTS)
    assert counts["containers.create"] == 20, counts
    assert per_container == 2 * 20, counts  # create with file_ids + one listing; no retrieve
    assert counts.get("containers.retrieve", 0) == 0, counts

    client = sdk(local_api)
    staged = {f.filename: f for f in client.files.list(purpose="user_data")}
    assert set(staged) == {"shared.csv", "tool.py"}  # the staged files keep their destination names
    for cid in ready(runtime, "alpha") + ready(runtime, "beta"):
        paths = holds_inputs(client, cid)
        assert paths == {"shared.csv": "/mnt/data/shared.csv", "tool.py": "/mnt/data/tool.py"}
    assert runtime.staging.fallback("alpha", runtime.inputs(runtime.pool("alpha"))[1]) is None


def test_a_staged_file_deleted_server_side_is_staged_again_once_for_all_provisions(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI,
) -> None:
    write_pools(pools_env, alpha=1)
    start_worker(pools_env.env, concurrency=4)
    fill(runtime, celery_app, {"alpha": 1})
    client = sdk(local_api)
    items, _ = runtime.inputs(runtime.pool("alpha"))
    shared = next(i for i in items if i.dest_name == "shared.csv")
    before = runtime.staging.get(stage_key(shared))
    assert before is not None
    client.files.delete(before.file_id)  # someone deletes it behind Hearth's back

    local_api.request_counts(reset=True)
    write_pools(pools_env, alpha=6)
    fill(runtime, celery_app, {"alpha": 6})
    counts = local_api.request_counts()

    after = runtime.staging.get(stage_key(shared))
    assert after is not None and after.file_id != before.file_id
    assert counts.get("uploads.create") == 1, counts  # four concurrent provisions, one restage
    assert client.files.retrieve(after.file_id).filename == "shared.csv"
    for cid in ready(runtime, "alpha"):
        holds_inputs(client, cid)


@pytest.mark.parametrize("mode", ["ignore", "reject"])
def test_a_backend_that_does_not_copy_file_ids_falls_back_to_streaming_for_that_pool(
    mode: str, runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
    celery_app: Celery, local_api: LocalAPI,
) -> None:
    local_api.set_switches(file_ids=mode)  # ignore: accepted, not copied; reject: 400 for file_ids
    write_pools(pools_env, alpha=3)
    worker = start_worker(pools_env.env, concurrency=2)
    fill(runtime, celery_app, {"alpha": 3})

    client = sdk(local_api)
    for cid in ready(runtime, "alpha"):
        paths = holds_inputs(client, cid)
        assert all(p != f"/mnt/data/{n}" for n, p in paths.items()), paths  # streamed: /mnt/data/<hex>-<name>
    digest = runtime.inputs(runtime.pool("alpha"))[1]
    why = runtime.staging.fallback("alpha", digest)
    assert why is not None and "file_ids" in why
    status = json.loads(_hearth_ok(pools_env, "status", "--json"))
    assert status["pools"]["alpha"]["inputs"]["mode"] == "streamed"
    assert "file_ids" in status["pools"]["alpha"]["inputs"]["reason"]
    assert status["pools"]["alpha"]["breaker"] == "closed"  # a fallback, never a failed pool
    text = _hearth_ok(pools_env, "status")
    assert "alpha: inputs streamed into each container" in text
    log = worker.log.read_text()
    assert log.count("pool.inputs_streamed") == 1, log[-3000:]


def test_staged_files_no_pool_uses_are_deleted_after_the_grace(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI, hearth_clock: OffsetClock,
) -> None:
    write_pools(pools_env, alpha=1)
    start_worker(pools_env.env, concurrency=2)
    fill(runtime, celery_app, {"alpha": 1})
    items, _ = runtime.inputs(runtime.pool("alpha"))
    old = runtime.staging.get(stage_key(next(i for i in items if i.dest_name == "shared.csv")))
    assert old is not None

    pools_env.write_input("inputs/shared.csv", SHARED + b"9,9\n")  # a changed input: a new staged file
    until(lambda: runtime.inputs(runtime.pool("alpha"))[1] != items and
          {r.inputs_digest for r in runtime.store.records("alpha", State.READY)}
          == {runtime.inputs(runtime.pool("alpha"))[1]},
          step=lambda: tick(runtime, celery_enqueue(celery_app)), timeout=120.0, what="rotated to the new input")
    client = sdk(local_api)
    ops = Operations(runtime)

    first = ops.gc_staged()
    assert [f["file_id"] for f in first["unused"]] == [old.file_id]  # only the replaced one
    assert first["deleted"] == []  # within the grace
    status = json.loads(_hearth_ok(pools_env, "status", "--json"))
    assert [f["file_id"] for f in status["staged"]["unused"]] == [old.file_id]
    assert status["staged"]["in_use"] == 2
    assert client.files.retrieve(old.file_id).id == old.file_id

    hearth_clock.advance(runtime.settings.staged_grace + 1)
    second = ops.gc_staged()
    assert [f["file_id"] for f in second["deleted"]] == [old.file_id]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(old.file_id)
    assert {f.filename for f in client.files.list(purpose="user_data")} == {"shared.csv", "tool.py"}
    assert ops.gc_staged()["unused"] == []
    report = json.loads(_hearth_ok(pools_env, "gc", "--json"))
    assert report["staged"]["in_use"] == 2 and report["staged"]["deleted"] == []


def test_an_input_the_files_api_refuses_pauses_that_pool_naming_it_keeps_its_containers_and_others_go_on(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI,
) -> None:
    pools_env.write_input("inputs/other.csv", b"small\n")
    write_pools(pools_env, alpha=1)
    start_worker(pools_env.env, concurrency=2)
    fill(runtime, celery_app, {"alpha": 1})
    live = ready(runtime, "alpha")

    local_api.set_switches(files_max_bytes=len(SHARED) + 100)
    pools_env.write_input("inputs/shared.csv", SHARED * 2)  # now too large for the Files API
    path = pools_env.write_pools(POOLS.format(alpha=1, beta=0) + """
  gamma:
    min_ready: 2
    max_total: 3
    container: {expires_after_minutes: 10}
    inputs:
      - path: inputs/other.csv
""")
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 2))
    send = celery_enqueue(celery_app)
    until(lambda: runtime.store.breaker_state("alpha").permanent and len(ready(runtime, "gamma")) == 2,
          step=lambda: tick(runtime, send), timeout=120.0, what="alpha paused, gamma filled")

    breaker = runtime.store.breaker_state("alpha")
    assert "shared.csv" in (breaker.reason or "") and "refused" in (breaker.reason or ""), breaker.reason
    for _ in range(3):
        tick(runtime, send)
    assert ready(runtime, "alpha") == live  # the live container stays, kept alive, not rotated away
    assert sdk(local_api).containers.retrieve(live[0]).status == "running"
    status = json.loads(_hearth_ok(pools_env, "status", "--json"))
    assert "shared.csv" in status["pools"]["alpha"]["breaker_reason"]


def _hearth_ok(env: PoolEnv, *args: str) -> str:
    done = hearth(list(args), clean_env(**env.env), cwd=env.root)
    assert done.returncode == 0, done.stderr
    return done.stdout
