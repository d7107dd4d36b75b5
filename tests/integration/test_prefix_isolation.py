"""Two deployments on one Redis database, apart by ``HEARTH_KEY_PREFIX`` alone, do not touch each other's work.

The failure this guards against (issue 13): the broker's queues had fixed names, so one deployment's
worker took the other's ``hearth.provision``, found no record under its own prefix and answered
"nothing to do", while the other's record stayed CREATING. Here both deployments have a pool of the
same name on the same local API (they differ in ``HEARTH_NAME_PREFIX`` too, as two deployments on one
API account must, or each would see the other's containers as orphans). Each fills to its own spec;
each provision task reaches only its own deployment's worker (the task ids each one sent appear in its
own worker's log and never in the other's); and every key in the database, broker keys and task
results included, starts with one of the two prefixes, and a broadcast
(Celery's remote control, a pub/sub fanout) reaches only its own deployment's worker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from hearth.health import live_workers
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tasks.app import create_app
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.helpers import sdk, until

POOLS = """
version: 1
pools:
  alpha:
    min_ready: {min_ready}
    buffer: 0
    max_total: {min_ready}
    container: {{expires_after_minutes: 10}}
"""
TASK_ID = re.compile(r"hearth\.provision\[([0-9a-f-]{36})\]")


@dataclass
class Deployment:
    prefix: str
    env: dict[str, str]
    runtime: Runtime
    app: Celery
    sent: list[str]  # ids of every task this deployment enqueued

    def enqueue(self, name: str, args: list[object]) -> None:
        self.sent.append(self.app.send_task(name, args=args).id)

    def ready(self) -> list[str]:
        return [r.container_id or "" for r in self.runtime.store.records("alpha", State.READY)]


@pytest.fixture
def deployments(tmp_path: Path, redis_url: str, local_api: LocalAPI) -> Iterator[list[Deployment]]:
    made: list[Deployment] = []
    for prefix, min_ready in (("dep-a", 2), ("dep-b", 3)):
        root = tmp_path / prefix
        root.mkdir()
        (root / "pools.yaml").write_text(POOLS.format(min_ready=min_ready))
        env = {
            "HEARTH_BACKEND": "local",
            "HEARTH_API_BASE": local_api.base_url,
            "HEARTH_REDIS_URL": redis_url,
            "HEARTH_KEY_PREFIX": prefix,
            "HEARTH_NAME_PREFIX": prefix,
            "HEARTH_POOLS": str(root / "pools.yaml"),
            "HEARTH_STORAGE_URL": (root / "harvest").as_uri(),
            "HEARTH_DATA_DIR": str(root / "data"),
        }
        settings = Settings(
            backend="local", api_base=local_api.base_url, redis_url=redis_url, key_prefix=prefix,
            name_prefix=prefix, pools=root / "pools.yaml", storage_url=(root / "harvest").as_uri(),
            data_dir=root / "data",
        )
        made.append(Deployment(prefix, env, Runtime.from_settings(settings), create_app(settings), []))
    yield made
    for d in made:
        d.runtime.close()
        d.app.close()


def test_two_prefixes_on_one_database_each_do_their_own_work_and_write_only_their_own_keys(
    deployments: list[Deployment], start_worker: Callable[..., WorkerProcess], redis_client: redis.Redis,
    local_api: LocalAPI,
) -> None:
    a, b = deployments
    workers = {}
    for d in deployments:
        workers[d.prefix] = start_worker(d.env, wait=False)
    for d in deployments:
        workers[d.prefix].wait_ready(d.app)  # a ping under its own prefix reaches its own worker

    def step() -> None:
        for d in deployments:
            tick(d.runtime, d.enqueue)

    until(lambda: len(a.ready()) == 2 and len(b.ready()) == 3, step=step, timeout=120,
          what="both deployments full under their own prefixes")

    # Each one's containers carry its own name prefix: its own worker created them from its own record.
    names = {c.id: c.name for c in sdk(local_api).containers.list(limit=100)}
    assert {names[cid].split("-alpha-")[0] for cid in a.ready()} == {"dep-a"}
    assert {names[cid].split("-alpha-")[0] for cid in b.ready()} == {"dep-b"}
    assert len(names) == 5  # nothing was created twice or for nobody

    # Every provision reached its own deployment's worker, none the other's.
    received = {prefix: set(TASK_ID.findall(w.log.read_text())) for prefix, w in workers.items()}
    for d, other in ((a, b), (b, a)):
        provisions = received[d.prefix] & set(d.sent)
        assert provisions, f"{d.prefix}'s worker ran none of its provisions"
        assert not received[other.prefix] & set(d.sent), f"{other.prefix}'s worker took {d.prefix}'s tasks"

    # The broker's fanout (remote control; events go the same way) is under the prefix too: a broadcast
    # ping of one deployment is answered by its own worker only. Before the scan, so its keys count.
    for d in deployments:
        [own] = [w["hostname"] for w in live_workers(redis_client, d.prefix)]  # its worker's health key
        answers = d.app.control.ping(timeout=3)
        assert [name for answer in answers for name in answer] == [own], answers

    # Nothing Hearth or Celery wrote lies outside the two prefixes (queues, unacked, bindings, results, health).
    keys = sorted(k.decode() for k in redis_client.scan_iter(count=1000))
    stray = [k for k in keys if not k.startswith(("dep-a:", "dep-b:"))]
    assert not stray, f"keys outside both prefixes: {stray}"
    for prefix in ("dep-a", "dep-b"):
        mine = [k for k in keys if k.startswith(prefix + ":")]
        assert any(k.startswith(f"{prefix}:celery:celery-task-meta-") for k in mine)  # results under the prefix
        assert f"{prefix}:celery:_kombu.binding.hearth" in mine  # the broker's bindings too
        assert any(k.startswith(f"{prefix}:health:worker:") for k in mine)
