"""The processes report what they do: ``hearth worker`` serves Prometheus metrics of its API calls.

A real ``hearth worker`` subprocess (threads and prefork pools) against a real redis-server and the
local API over a socket fills a small pool; its metrics port is then scraped over HTTP. The client's
observer hook is also checked directly: one ``api_call`` per HTTP request, named by endpoint, with
the HTTP status or ``"error"`` when no answer came.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from hearth.api.client import ContainersClient, endpoint_name
from hearth.api.models import CreateContainerRequest
from hearth.api.retry import RetryPolicy
from hearth.errors import NotFound, TransportError
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tests.fixtures.localapi import LocalAPI

REPO = Path(__file__).resolve().parents[2]

POOLS = """
version: 1
pools:
  obs:
    min_ready: 2
    buffer: 0
    max_total: 2
    container: {expires_after_minutes: 10}
    inputs:
      - path: inputs/data.csv
"""


class Recorder:
    """An Observer that keeps its ``api_call``s (the other methods are not reached by the client)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | str]] = []

    def api_call(self, endpoint: str, status: int | str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append((endpoint, status))

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the client hook -------------------------------------------------------------------------


def test_endpoint_names_carry_no_ids() -> None:
    assert endpoint_name("POST", "containers") == "containers.create"
    assert endpoint_name("GET", "containers") == "containers.list"
    assert endpoint_name("GET", "containers/cntr_9") == "containers.retrieve"
    assert endpoint_name("DELETE", "containers/cntr_9") == "containers.delete"
    assert endpoint_name("POST", "containers/cntr_9/files") == "containers.files.create"
    assert endpoint_name("GET", "containers/cntr_9/files/cfile_1/content") == "containers.files.content"
    assert endpoint_name("POST", "files") == "files.create"
    assert endpoint_name("DELETE", "files/file-abc") == "files.delete"


def test_client_reports_every_request_with_status(local_api: LocalAPI) -> None:
    rec = Recorder()
    with ContainersClient(local_api.base_url, dialect="local", observer=rec) as client:
        c = client.create_container(CreateContainerRequest(name="obs-hook"))
        client.upload_file(c.id, Path(__file__))
        list(client.list_files(c.id))
        client.delete_container(c.id)
        with pytest.raises(NotFound):
            client.retrieve_container(c.id)
    assert rec.calls == [
        ("containers.create", 200),
        ("containers.files.create", 200),
        ("containers.files.list", 200),
        ("containers.delete", 200),
        ("containers.retrieve", 404),
    ]


def test_client_reports_transport_errors_as_error() -> None:
    rec = Recorder()
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    client = ContainersClient(dead, dialect="local", observer=rec, retry=RetryPolicy.never())
    with client, pytest.raises(TransportError):
        client.retrieve_container("cntr_x")
    assert rec.calls == [("containers.retrieve", "error")]


# --- the worker process ----------------------------------------------------------------------


@pytest.fixture
def worker_env(tmp_path: Path, local_api: LocalAPI, redis_url: str) -> dict[str, str]:
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "pools.yaml").write_text(POOLS)
    return {
        "HEARTH_BACKEND": "local",
        "HEARTH_API_BASE": local_api.base_url,
        "HEARTH_REDIS_URL": redis_url,
        "HEARTH_POOLS": str(tmp_path / "pools.yaml"),
        "HEARTH_DATA_DIR": str(tmp_path / "data"),
        "HEARTH_METRICS_PORT": str(free_port()),
    }


@pytest.fixture
def hearth_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start ``hearth worker`` (as the Procfile does) with a given pool; stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(pool: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "OPENAI_", "SENTRY_"))}
        env.update(worker_env)
        env.update({"HEARTH_WORKER_POOL": pool, "HEARTH_WORKER_CONCURRENCY": "2"})
        log = (tmp_path / "worker.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"], cwd=REPO, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def wait_ready(proc: subprocess.Popen[bytes], app: Celery, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hearth worker exited early:\n{log.read_text()[-4000:]}")
        try:
            app.send_task("hearth.ping").get(timeout=2)
            return
        except Exception:  # not up yet
            continue
    raise AssertionError(f"hearth worker not ready:\n{log.read_text()[-4000:]}")


def api_calls(port: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hearth_api_calls_total":
                key = (sample.labels["endpoint"], sample.labels["status"])
                out[key] = out.get(key, 0.0) + sample.value
    return out


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_serves_api_call_metrics(
    pool: str, worker_env: dict[str, str], hearth_worker: Callable[[str], subprocess.Popen[bytes]],
    celery_app: Celery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc = hearth_worker(pool)
    wait_ready(proc, celery_app, tmp_path / "worker.log")
    for key, value in worker_env.items():
        if key != "HEARTH_METRICS_PORT":  # the test process serves no metrics
            monkeypatch.setenv(key, value)
    rt = Runtime.from_settings(Settings())
    send: Callable[[str, list[Any]], Any] = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    try:
        deadline = time.monotonic() + 60
        while len(rt.store.records("obs", State.READY)) < 2:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-4000:]
            tick(rt, send)
            time.sleep(0.2)
    finally:
        rt.close()

    calls = api_calls(worker_env["HEARTH_METRICS_PORT"])
    # Two containers made, their one input staged once and copied in at create, each copy verified
    # by a listing: all counted by the worker, by endpoint.
    assert calls.get(("containers.create", "200"), 0) >= 2, calls
    assert calls.get(("files.create", "200"), 0) >= 1, calls
    assert calls.get(("containers.files.list", "200"), 0) >= 2, calls
    assert all("cntr" not in endpoint for endpoint, _ in calls)  # no per-container series
