"""A Celery worker SIGKILLed in the middle of a harvest loses nothing: the retried retire finishes the job.

Real parts: a redis-server, Celery workers as separate processes (the first one killed with SIGKILL,
a crash, not a shutdown), the local API over a socket (downloads slowed by injected latency so the
kill lands mid-harvest), storage on the local disk, and the official ``openai`` SDK to look at what
the server still holds. The killed worker's unacked ``hearth.retire`` comes back through kombu's
visibility-timeout sweep (``HEARTH_TASK_VISIBILITY_TIMEOUT``, see ``tasks.app.redelivery_options``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from celery import Celery

from hearth.files.paths import TEMP_MARKER
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tasks.pools import HearthPools
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import until

POOLS = """
version: 1
pools:
  gamma:
    min_ready: 1
    max_total: 1
    container: {expires_after_minutes: 20}
    lease: {ttl_seconds: 3600, wait_seconds: 30}
"""

MIB = 1024 * 1024
# Written in this order (the harvest copies oldest first): the big one in the middle, so the kill
# can land with files saved before it and files still to come after it.
FILES: dict[str, int] = {
    "/mnt/data/out/summary.txt": 2_000,
    "/mnt/data/out/table.csv": 300_000,
    "/mnt/data/out/big.bin": 32 * MIB,
    "/mnt/data/chart.png": 64_000,
    "/mnt/data/out/deep/notes.md": 10_000,
    "/mnt/data/out/model.pkl": 1 * MIB,
}


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    # The killed worker's unacked retire is redelivered 15 s after delivery (plus one 3 s sweep):
    # well past the few seconds the first worker harvests before the kill, so it never runs twice.
    return {"HEARTH_TASK_VISIBILITY_TIMEOUT": "15"}


@pytest.fixture
def runtime(pools_env: PoolEnv, hearth_runtime: Runtime) -> Runtime:
    """The shared Runtime (tests/fixtures/pools.py), with this module's pools file."""
    pools_env.write_pools(POOLS)
    return hearth_runtime



def manifest_of(root: Path, container_id: str) -> tuple[Path, dict[str, Any]] | None:
    """The container's harvest directory and its parsed manifest, once one exists."""
    for path in root.rglob("manifest.json"):
        if path.parent.name == container_id:
            return path.parent, json.loads(path.read_bytes())
    return None


# Killed with the big file still to copy, and with it already saved (then it must not be copied again).
@pytest.mark.parametrize("kill_after", [1, 3], ids=["before-big-file", "after-big-file"])
def test_worker_killed_mid_harvest_loses_nothing_after_the_retry(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI, kill_after: int,
) -> None:
    worker = start_worker(pools_env.env)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(runtime.store.records("gamma", State.READY)) == 1, step=lambda: tick(runtime, send), timeout=90.0)

    pools = HearthPools(runtime, celery_app)
    lease = pools.lease("gamma")
    rng = random.Random(5)
    written: dict[str, bytes] = {}
    file_ids: dict[str, str] = {}
    for path, size in FILES.items():
        written[path] = rng.randbytes(size)
        file_ids[path] = local_api.write_assistant_file(lease.container_id, path, written[path])["id"]

    # Every download waits 800 ms first: the harvest of six files takes seconds, room to kill it.
    local_api.set_faults({"endpoints": {"files.content": {"latency_ms": 800}}})
    released = pools.release(lease.container_id, lease.lease_id)
    assert released.state is State.HARVESTING

    root = pools_env.harvest_dir
    seen: dict[str, Any] = {}

    def partly_harvested() -> bool:
        found = manifest_of(root, lease.container_id)
        if found is None:
            return False
        seen["doc"] = found[1]
        return kill_after <= len(found[1]["files"]) < len(FILES)

    until(partly_harvested, timeout=60, pause=0.05)
    worker.kill()
    before = {e["file_id"]: e for e in seen["doc"]["files"]}
    left = [p.name for p in root.rglob("*") if TEMP_MARKER in p.name]
    print(f"killed with {len(before)} of {len(FILES)} files saved; temporaries left: {left}")
    # Still mid-job after the crash: the record waits in HARVESTING and the container still exists.
    found = manifest_of(root, lease.container_id)
    assert found is not None
    target, doc = found
    assert kill_after <= len(doc["files"]) < len(FILES)
    record = runtime.store.by_container_id(lease.container_id)
    assert record is not None and record.state is State.HARVESTING
    client = openai.OpenAI(base_url=local_api.base_url, api_key="unused", max_retries=0)
    assert client.containers.retrieve(lease.container_id).status == "running"

    local_api.set_faults(None)
    start_worker(pools_env.env)  # the redelivered retire runs here: harvest the rest, delete, forget
    until(lambda: runtime.store.get(lease.name) is None, timeout=120)

    found = manifest_of(root, lease.container_id)
    assert found is not None
    target, doc = found
    entries = doc["files"]
    # Each file exactly once, by path and by container-file id, and nothing left out or skipped.
    assert Counter(e["container_path"] for e in entries) == Counter(list(FILES))
    assert sorted(e["file_id"] for e in entries) == sorted(file_ids.values())
    assert doc["skipped"] == []
    for e in entries:
        data = (target / e["storage_key"]).read_bytes()
        assert data == written[e["container_path"]], e["container_path"]
        assert e["bytes"] == len(data) and e["sha256"] == hashlib.sha256(data).hexdigest()
        assert e["file_id"] == file_ids[e["container_path"]]
    # What the killed worker had recorded stands as it was (not copied a second time).
    after = {e["file_id"]: e for e in entries}
    assert all(after[fid] == entry for fid, entry in before.items())
    # No temporaries, no second copies under other names: exactly the manifest and its objects.
    stored = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert stored == {e["storage_key"] for e in entries} | {"manifest.json"}
    assert not [p for p in root.rglob("*") if TEMP_MARKER in p.name]

    # Retire completed after the harvest: the container is gone from the server, the record from Redis.
    assert lease.container_id not in {c.id for c in client.containers.list(limit=100)}
    with pytest.raises(openai.NotFoundError):
        client.containers.retrieve(lease.container_id)
    assert runtime.store.by_container_id(lease.container_id) is None
    assert runtime.store.records("gamma") == []


def test_visibility_timeout_setting_reaches_kombus_redis_channel(redis_url: str) -> None:
    """``HEARTH_TASK_VISIBILITY_TIMEOUT`` and the sweep options are what the broker channel really uses."""
    from tasks.app import create_app

    app = create_app(Settings(redis_url=redis_url, task_visibility_timeout=10))
    try:
        with app.connection_for_read() as conn:
            channel: Any = conn.default_channel
            assert channel.visibility_timeout == 10
            assert channel.unacked_restore_throttle == 1  # every sweep scans (kombu's default: 1 in 10)
            assert conn.transport_options["unacked_restore_interval"] == 2
            assert channel.qos.visibility_timeout == 10
    finally:
        app.close()
