"""examples/fastapi_app.py served for real: a uvicorn process on a free port, driven over HTTP.

Behind it: a redis-server, a Celery worker process and the local API over a socket; the service's
``AsyncOpenAI`` client talks to that API, and the test reads the server with the official SDK. A
request's upload is listed by the container it leased, that container is released (its files
harvested to storage, then retired on the server); a conversation key keeps its container across
requests until it is ended; and the lifespan opens the pools at start-up and closes them at shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from celery import Celery

from hearth.files.inputs import restore_name
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from tests.fixtures.celery import REPO, WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import sdk, until

POOLS = """
version: 1
pools:
  web:
    min_ready: 1
    buffer: 0
    max_total: 3
    container: {expires_after_minutes: 20}
    lease: {ttl_seconds: 600, wait_seconds: 60}
    outputs: {source: any}
"""


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    return {"HEARTH_ORPHAN_GRACE": "600"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``uvicorn examples.fastapi_app:create_app --factory`` in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.fastapi_app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"uvicorn exited early:\n{self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        until(up, timeout=60.0, what="the example service answering")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode


@pytest.fixture
def service(
    hearth_runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    tmp_path: Path,
) -> Iterator[Service]:
    """The worker, a pool ``web`` with one READY container, and the example served by uvicorn."""
    pools_env.write_pools(POOLS)
    start_worker(pools_env.env, concurrency=3)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(hearth_runtime.store.records("web", State.READY)) >= 1, step=lambda: tick(hearth_runtime, send),
          timeout=120.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "OPENAI_", "SENTRY_"))}
    env.update(pools_env.env)
    svc = Service(env, tmp_path / "uvicorn.log")
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def deleted(client: openai.OpenAI, container_id: str) -> bool:
    try:
        client.containers.retrieve(container_id)
    except openai.NotFoundError:
        return True
    return False


def test_a_request_leases_a_container_lists_its_upload_and_releases_it(
    service: Service, hearth_runtime: Runtime, pools_env: PoolEnv, local_api: LocalAPI,
) -> None:
    body = b"region,total\nnorth,12\nsouth,30\n"
    r = httpx.post(f"{service.url}/files", data={"pool": "web"}, files={"file": ("totals.csv", body)}, timeout=120)
    assert r.status_code == 200, r.text
    answer = r.json()
    cid = answer["container_id"]
    assert answer["released"] is True
    listed = [f for f in answer["files"] if restore_name(f["path"]) == "totals.csv"]
    assert len(listed) == 1 and listed[0]["bytes"] == len(body) and listed[0]["source"] == "user"
    client = sdk(local_api)

    # Released: harvested to storage, then retired on the server.
    until(lambda: [p for p in pools_env.harvest_dir.rglob("*totals.csv") if p.is_file()], timeout=90.0)
    saved = next(p for p in pools_env.harvest_dir.rglob("*totals.csv") if p.is_file())
    assert saved.read_bytes() == body
    until(lambda: deleted(client, cid), timeout=90.0)
    assert hearth_runtime.store.by_container_id(cid) is None

    # Shutdown closes the pools: the lifespan's exit ran before uvicorn finished. (uvicorn re-raises
    # the SIGTERM it handled once it has shut down, so -SIGTERM is its clean exit.)
    assert service.stop() in (0, -signal.SIGTERM)
    log = service.log.read_text()
    assert log.index("hearth example: pools open") < log.index("hearth example: pools closed") \
        < log.index("Application shutdown complete")


def test_a_conversation_keeps_its_container_across_requests_until_it_ends(
    service: Service, hearth_runtime: Runtime, local_api: LocalAPI,
) -> None:
    client = sdk(local_api)
    form = {"pool": "web", "conversation": "conv-9d1e"}
    first = httpx.post(f"{service.url}/files", data=form, files={"file": ("a.txt", b"first\n")}, timeout=120)
    assert first.status_code == 200, first.text
    second = httpx.post(f"{service.url}/files", data=form, files={"file": ("b.txt", b"second\n")}, timeout=120)
    assert second.status_code == 200, second.text
    one, two = first.json(), second.json()
    assert one["container_id"] == two["container_id"] and one["released"] is False
    names = sorted(restore_name(f["path"]) for f in two["files"])
    assert names == ["a.txt", "b.txt"]  # the conversation's container kept the first request's file
    record = hearth_runtime.store.by_container_id(one["container_id"])
    assert record is not None and record.state is State.LEASED and record.session_key_hash == one["session_id"]

    ended = httpx.post(f"{service.url}/conversations/conv-9d1e/end", timeout=120)
    assert ended.status_code == 200, ended.text
    assert ended.json()["retiring"] is True and ended.json()["harvested_files"] == 2
    until(lambda: deleted(client, one["container_id"]), timeout=90.0)
