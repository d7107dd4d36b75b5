"""``hearth up`` end to end, as a user runs it: one process, nothing configured but a pools file.

Everything is real and separate: ``hearth up`` is a subprocess (embedded redis-server, local API,
a Celery worker and the heartbeat as its children); ``hearth status|lease|release`` are further
subprocesses that find Redis and the API through ``<data_dir>/up.json`` alone; the official
``openai`` SDK looks inside the containers; psutil checks that Ctrl-C leaves nothing running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.e2e.helpers import (
    HEARTH,
    INPUTS,
    clean_env,
    descendants,
    hearth,
    hearth_json,
    port_open,
    still_alive,
    stop_tree,
    write_pool_files,
)
from tests.fixtures.localapi import LocalAPI
from tests.helpers import until

API_KEY = "sk-e2e-up-0123456789"


def mounted_name(path: str) -> str:
    """``/mnt/data/<32 hex>-sales.csv`` -> ``sales.csv`` (uploads are mounted under a content-hash prefix)."""
    return re.sub(r"^[0-9a-f]{32}-", "", path.rsplit("/", 1)[-1])


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    cwd: Path
    env: dict[str, str]  # what another terminal with "the same settings" has
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive_or_fail(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"hearth up exited with {self.proc.returncode}:\n{self.output()[-4000:]}")

    def status(self) -> dict[str, Any] | None:
        self.alive_or_fail()
        done = hearth(["status", "--json"], self.env, self.cwd)
        if done.returncode != 0:  # up.json not written yet
            return None
        data: dict[str, Any] = json.loads(done.stdout)
        return data


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port someone else already listens on: `hearth up` must pick another one and say so."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


@pytest.fixture
def up(tmp_path: Path, busy_port: int) -> Iterator[Up]:
    write_pool_files(tmp_path)
    env = clean_env(
        HEARTH_HEARTBEAT_INTERVAL="1",
        HEARTH_LOCAL_PORT=str(busy_port),
        HEARTH_STORAGE_URL=(tmp_path / "harvest").as_uri(),
        HEARTH_API_KEY=API_KEY,
    )
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*HEARTH, "up", "--pools", "pools.yaml", "--stop-timeout", "15"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    # Other commands get the pools file the usual way; Redis and the API they must discover.
    handle = Up(proc, tmp_path, {**env, "HEARTH_POOLS": "pools.yaml"}, log)
    try:
        yield handle
    finally:
        stop_tree(proc)  # a no-op when the test got as far as stopping it


def test_up_fills_pools_with_inputs_harvests_a_lease_and_stops_clean(up: Up, busy_port: int) -> None:
    def filled() -> dict[str, Any] | None:
        data = up.status()
        if data is None:
            return None
        pool = data["pools"]["alpha"]
        return data if pool["desired"] == 2 and pool["ready"] == 2 else None

    data = until(filled, timeout=60, what="pool alpha ready 2", pause=0.5)
    api_base: str = data["api_base"]
    redis = urlsplit(data["redis_url"])
    api = urlsplit(api_base)
    assert api.port != busy_port and f"port {busy_port} is busy" in up.output()
    assert redis.hostname == "127.0.0.1" and redis.port

    # Inside every warm container: the pool's inputs, byte for byte (the SDK, with the configured key).
    client = openai.OpenAI(base_url=api_base, api_key=API_KEY, max_retries=0)
    running = [c for c in client.containers.list(limit=100) if c.name.startswith("hearth-alpha-")
               and c.status == "running"]
    assert len(running) == 2
    for container in running:
        files = {mounted_name(f.path): f for f in client.containers.files.list(container.id)}
        assert set(files) == set(INPUTS)
        for name, data_bytes in INPUTS.items():
            got = client.containers.files.content.retrieve(files[name].id, container_id=container.id).read()
            assert got == data_bytes

    # Lease, let "the model's code" write a report, release: the report is harvested to storage.
    lease = hearth_json(["lease", "alpha"], up.env, up.cwd)
    assert lease["container_id"] in {c.id for c in running}
    report = b"quarterly total: 617\n" * 100
    r = httpx.post(
        f"{api_base}/containers/{lease['container_id']}/files",
        headers={"Authorization": f"Bearer {API_KEY}", "X-Hearth-File-Source": "assistant",
                 "X-Hearth-File-Path": "/mnt/data/out/report.txt"},
        files={"file": ("report.txt", report)},
        timeout=30,
    )
    r.raise_for_status()
    done = hearth(["release", lease["container_id"], "--lease", lease["lease_id"]], up.env, up.cwd)
    assert done.returncode == 0, done.stderr

    harvest = up.cwd / "harvest"

    def harvested() -> list[Path]:
        up.alive_or_fail()
        return [p for p in harvest.rglob("report.txt") if p.is_file()] if harvest.exists() else []

    found = until(harvested, timeout=30, what="report.txt harvested", pause=0.5)
    assert len(found) == 1 and lease["container_id"] in str(found[0])
    assert found[0].read_bytes() == report

    # The plain (not a terminal) status: a line per refresh period and every transition of the leased
    # record, however fast it went (the feed is the records' own transition stream, not a sampling).
    until(lambda: "alpha desired 2 ready 2 leased 0" in up.output(), timeout=20, what="a status line", pause=0.5)
    until(lambda: f"{lease['name']} gone" in up.output(), timeout=20, what="the leased record forgotten",
          pause=0.5)
    out = up.output()
    # Each pool's burn rate, priced from the live containers: two READY containers cost something.
    burns = [float(b) for b in re.findall(r"alpha desired 2 ready 2 leased 0 \S+ \d+ \S+ \d+ \$/h ([\d.]+)", out)]
    assert burns and burns[-1] > 0, out[-4000:]
    moves = ["CREATING -> SEEDING", "SEEDING -> READY", "READY -> LEASED", "LEASED -> HARVESTING"]
    at = [out.index(f"alpha: {lease['name']} {m}") for m in moves]
    assert at == sorted(at), out[-4000:]
    assert "processes: worker pid" in out and "restarts 0" in out

    # Ctrl-C: every child (worker, heartbeat, redis-server) exits, both ports close, up.json goes.
    children = descendants(up.proc.pid)
    assert {"redis-server"} <= {p.name() for p in children} and len(children) >= 3
    assert port_open("127.0.0.1", redis.port) and port_open("127.0.0.1", api.port or 0)
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(60) == 0, up.output()[-4000:]
    assert still_alive(children) == []
    assert not port_open("127.0.0.1", redis.port)
    assert not port_open("127.0.0.1", api.port or 0)
    assert not (up.cwd / ".hearth" / "up.json").exists()


def test_a_killed_worker_is_restarted_counted_and_works_again(up: Up) -> None:
    def filled() -> dict[str, Any] | None:
        data = up.status()
        return data if data and data["pools"]["alpha"]["ready"] == 2 else None

    until(filled, timeout=60, what="pool alpha ready 2", pause=0.5)
    worker = next(p for p in descendants(up.proc.pid) if " worker " in f" {' '.join(p.cmdline())} ")
    os.killpg(worker.pid, signal.SIGKILL)  # a crash: the worker and anything in its group

    # hearth up lives on, says so, and starts a new worker after the first backoff.
    until(lambda: "worker restarted: pid" in up.output() and up.alive_or_fail() is None, timeout=30,
          what="the worker restarted", pause=0.5)
    out = up.output()
    assert f"worker (pid {worker.pid}) exited with code -9" in out and "restart 1 in 1 s" in out
    until(lambda: "restarts 1" in up.output().rsplit("worker restarted", 1)[1], timeout=20,
          what="a status line counting the restart", pause=0.5)
    new = [p for p in descendants(up.proc.pid) if " worker " in f" {' '.join(p.cmdline())} "]
    assert new and worker.pid not in {p.pid for p in new}

    # The new worker does the work: a lease and release retire the container and the pool refills.
    lease = hearth_json(["lease", "alpha"], up.env, up.cwd)
    done = hearth(["release", lease["container_id"], "--lease", lease["lease_id"]], up.env, up.cwd)
    assert done.returncode == 0, done.stderr
    until(lambda: f"{lease['name']} gone" in up.output() and filled(), timeout=60,
          what="the released container retired and the pool full again", pause=0.5)

    children = descendants(up.proc.pid)
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0, up.output()[-4000:]
    assert still_alive(children) == []
    assert not (up.cwd / ".hearth" / "up.json").exists()


def test_configured_redis_and_api_are_used_instead_of_embedded_ones(
    tmp_path: Path, redis_url: str, local_api: LocalAPI
) -> None:
    write_pool_files(tmp_path)
    env = clean_env(HEARTH_HEARTBEAT_INTERVAL="1", HEARTH_REDIS_URL=redis_url, HEARTH_API_BASE=local_api.base_url,
                    HEARTH_POOLS="pools.yaml")
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*HEARTH, "up"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    handle = Up(proc, tmp_path, env, log)
    try:
        def filled() -> dict[str, Any] | None:
            data = handle.status()
            return data if data and data["pools"]["alpha"]["ready"] == 2 else None

        data = until(filled, timeout=60, what="pool alpha ready 2 on the configured API", pause=0.5)
        assert data["redis_url"] == redis_url and data["api_base"] == local_api.base_url
        children = descendants(proc.pid)
        assert "redis-server" not in {p.name() for p in children}  # no embedded Redis
        assert len(children) == 2  # just the worker and the heartbeat: the API is the fixture's
        client = openai.OpenAI(base_url=local_api.base_url, api_key="unused", max_retries=0)
        assert len([c for c in client.containers.list(limit=100) if c.status == "running"]) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert still_alive(children) == []
    finally:
        stop_tree(proc)
