"""``hearth check`` against a real deployment: a redis-server, a real Celery worker process, the heartbeat.

Healthy is exit 0; no worker, a killed worker (once its health key's TTL has run out), no heartbeat, an
evicting Redis, an unreachable Redis are exit 1 with the reason; a worker that rode out a Redis restart
is healthy again after it; ``--strict`` fails a Redis that does not persist (the suite's Redis writes
nothing to disk); a Redis with CONFIG disabled is checked from INFO; ``--json`` has the documented keys.
The command runs as a process, as a probe would run it, where the exit status is the point; elsewhere
in this process (the same Typer command, without an interpreter start each time).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from typer.testing import CliRunner

from hearth.health import worker_key
from hearth.runtime import Runtime
from tests.fixtures.celery import REPO, WorkerProcess
from tests.fixtures.pools import PoolEnv
from tests.helpers import until
from worker import cli
from worker.heartbeat import Heartbeat
from worker.redis_server import RedisServer, find_redis_server, free_port

# Short health TTLs so a killed worker is seen dead in seconds; no test sleeps for them.
FAST_HEALTH = {"HEARTH_WORKER_HEALTH_INTERVAL": "0.5", "HEARTH_WORKER_HEALTH_TTL": "2"}
cli._load()  # register the commands, as ``main()`` does

JSON_KEYS = {"healthy", "strict", "prefix", "redis", "embedded_redis", "checks", "reasons", "workers", "heartbeat",
             "redis_settings", "note"}


def hearth_check(env: dict[str, str], *args: str, process: bool = False) -> tuple[int, dict[str, Any]]:
    """``hearth check --json``: as a process (what a probe runs), or in this process (the same command, faster)."""
    if process:
        done = subprocess.run([sys.executable, "-m", "worker.cli", "check", "--json", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode in (0, 1), f"hearth check failed to run ({done.returncode}):\n{done.stderr}"
        return done.returncode, json.loads(done.stdout)
    result = CliRunner().invoke(cli.app, ["check", "--json", *args], env=env)
    assert result.exit_code in (0, 1), f"hearth check failed to run ({result.exit_code}):\n{result.output}"
    return result.exit_code, json.loads(result.stdout)


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in report["checks"]}


@pytest.fixture
def env(pools_env: PoolEnv, hearth_runtime: Runtime) -> dict[str, str]:
    """Every process's environment: the test's Redis and an empty pools file (the heartbeat ticks on nothing)."""
    pools_env.write_pools("version: 1\npools: {}\n")

    base = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "OPENAI_", "SENTRY_"))}
    return {**base, **pools_env.env, **FAST_HEALTH}


@pytest.fixture
def heartbeat(hearth_runtime: Runtime, celery_app: Celery) -> Iterator[Heartbeat]:
    """A heartbeat replica that has ticked once as leader (lease and health key written)."""
    beat = Heartbeat(hearth_runtime, celery_app, identity="hb-test")
    beat.tick()
    yield beat
    beat.stop()


@pytest.fixture
def evicting_redis(redis_client: redis.Redis) -> Iterator[None]:
    """The suite's Redis set to evict for one test, set back after it."""
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")


def test_a_healthy_deployment_exits_0_and_its_json_names_every_part(
    env: dict[str, str], heartbeat: Heartbeat, start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker(env)

    code, report = hearth_check(env, process=True)

    assert code == 0, report["reasons"]
    assert set(report) == JSON_KEYS
    assert report["healthy"] is True and report["prefix"] == "hearth" and report["embedded_redis"] is False
    assert verdicts(report) == {"redis": "ok", "eviction": "ok", "persistence": "warn", "workers": "ok",
                                "heartbeat": "ok", "deployments": "ok"}
    [body] = report["workers"]
    assert body["pid"] == worker.proc.pid
    assert body["hostname"].startswith("w0@") and body["host"] and body["time"] > 0
    assert set(body["queues"]) == {"hearth", "hearth.keepalive", "hearth.saves"}
    assert report["heartbeat"]["leader"] == "hb-test" and report["heartbeat"]["last_tick"] is not None
    assert report["redis_settings"]["maxmemory_policy"] == "noeviction"
    assert "one Hearth deployment per key prefix" in report["note"]

    # The suite's Redis persists nothing: a warning, which --strict turns into a failure.
    code, strict = hearth_check(env, "--strict")
    assert code == 1 and strict["healthy"] is False
    assert [r.split(":")[0] for r in strict["reasons"]] == ["persistence"]


def test_an_evicting_redis_fails_with_the_reason(
    env: dict[str, str], heartbeat: Heartbeat, start_worker: Callable[..., WorkerProcess], evicting_redis: None,
) -> None:
    start_worker(env)

    code, report = hearth_check(env)

    assert code == 1
    assert verdicts(report)["eviction"] == "fail" and verdicts(report)["workers"] == "ok"
    [reason] = report["reasons"]
    assert "maxmemory-policy is allkeys-lru" in reason and "noeviction" in reason


def test_without_a_worker_or_a_heartbeat_the_check_fails_naming_each(env: dict[str, str], heartbeat: Heartbeat) -> None:
    code, report = hearth_check(env)
    assert code == 1 and verdicts(report)["workers"] == "fail" and verdicts(report)["heartbeat"] == "ok"
    assert report["workers"] == []

    code, report = hearth_check(env, "--workers", "0")
    assert code == 0, report["reasons"]

    heartbeat.stop()  # steps down: the lease is released
    code, report = hearth_check(env, "--workers", "0")
    assert code == 1 and verdicts(report)["heartbeat"] == "fail"
    assert report["heartbeat"]["leader"] is None


def test_a_killed_worker_fails_the_check_once_its_key_expires_and_a_stopped_one_at_once(
    env: dict[str, str], heartbeat: Heartbeat, start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    killed = start_worker(env)
    stopped = start_worker({**env, "HEARTH_WORKER_HEALTH_TTL": "120"})  # outlives the test: only a delete removes it
    # start_worker's readiness ping may be answered by the first worker: wait for both keys.
    code, report = until(lambda: (r := hearth_check(env, "--workers", "2"))[0] == 0 and r, timeout=60,
                         what="both workers' health keys", pause=0.5)
    hostnames = {w["pid"]: w["hostname"] for w in report["workers"]}

    stopped.stop()  # a clean shutdown deletes its key
    assert redis_client.exists(worker_key("hearth", hostnames[stopped.proc.pid])) == 0
    code, report = hearth_check(env, "--workers", "2")
    assert code == 1 and [w["pid"] for w in report["workers"]] == [killed.proc.pid]

    killed.kill()  # SIGKILL: nothing deletes the key, its TTL (2 s) ends it
    until(lambda: hearth_check(env)[0] == 1, timeout=30, what="the killed worker's key to expire", pause=0.5)
    code, report = hearth_check(env)
    assert report["workers"] == [] and "0 alive" in report["reasons"][0]


def test_an_unreachable_redis_fails(env: dict[str, str]) -> None:
    code, report = hearth_check({**env, "HEARTH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "--timeout", "1",
                                process=True)
    assert code == 1
    assert verdicts(report) == {"redis": "fail"} and "cannot reach" in report["reasons"][0]


def test_hearth_worker_on_threads_is_counted_under_its_own_hostname(
    env: dict[str, str], heartbeat: Heartbeat, tmp_path: Path,
) -> None:
    """The real ``hearth worker`` command (threads pool, ``--hostname``), not only ``celery worker``."""
    log = (tmp_path / "hearth-worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--pool", "threads", "--hostname", "hw@%h"],
                            env={**env, "HEARTH_WORKER_HEALTH_TTL": "120"},  # only a delete ends it in this test
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code, report = until(lambda: (r := hearth_check(env))[0] == 0 and r, timeout=60, pause=0.5,
                             what="hearth worker's health key")
        assert [w["hostname"] for w in report["workers"]] == [f"hw@{socket.gethostname()}"]
        assert report["workers"][0]["pid"] == proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
    code, report = hearth_check(env)
    assert code == 1 and report["workers"] == []  # its clean shutdown deleted the key


@pytest.fixture
def no_config_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server with CONFIG disabled, as many managed services run it."""
    port = free_port()
    proc = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path), "--rename-command", "CONFIG", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port)
    try:
        until(lambda: _pings(client), timeout=20, what="redis-server without CONFIG", pause=0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_redis_without_config_is_checked_from_info(env: dict[str, str], no_config_redis: str) -> None:
    code, report = hearth_check({**env, "HEARTH_REDIS_URL": no_config_redis}, "--workers", "0", "--no-heartbeat")
    assert code == 0, report["reasons"]
    assert verdicts(report)["eviction"] == "ok"  # INFO memory still says noeviction
    assert verdicts(report)["persistence"] == "warn"  # no AOF, and the snapshot schedule is hidden
    assert report["redis_settings"]["save"] is None


def test_a_worker_that_rides_out_a_redis_restart_is_healthy_again_after_it(
    env: dict[str, str], tmp_path: Path,
) -> None:
    """The health step restarts with Celery's consumer: a probe must not kill a worker that reconnected."""
    server = RedisServer(tmp_path / "own-redis", persist=False).start()  # not the suite's: this one restarts
    own = {**env, "HEARTH_REDIS_URL": server.url}
    worker = WorkerProcess(own, tmp_path / "restart-worker.log", name="rr")
    try:
        code, report = until(lambda: (r := hearth_check(own, "--no-heartbeat"))[0] == 0 and r, timeout=60,
                             pause=0.5, what="the worker's health key")
        [pid] = [w["pid"] for w in report["workers"]]
        server.stop()
        code, report = hearth_check(own, "--no-heartbeat", "--timeout", "1")
        assert code == 1 and verdicts(report) == {"redis": "fail"}
        server.start()  # same port, empty: only a worker that wrote again shows up
        code, report = until(lambda: (r := hearth_check(own, "--no-heartbeat"))[0] == 0 and r, timeout=60,
                             pause=0.5, what="the health key after the restart")
        assert [w["pid"] for w in report["workers"]] == [pid] and worker.proc.poll() is None
    finally:
        worker.stop()
        server.stop()
