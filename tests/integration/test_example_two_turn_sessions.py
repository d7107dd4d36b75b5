"""The README's two-turn sessions example (``examples/two_turn_sessions.py``) runs end to end.

As a user runs it: its own process, configured only by the environment, against a real Redis, a
real Celery worker process and the local API over a socket (no Responses endpoint there, so the
example's ``LocalModel`` writes the file as the model's code would and builds the response from the
``openai`` SDK's types). The official SDK checks the server side independently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from celery import Celery

from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import sdk, until

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "two_turn_sessions.py"
POOLS = """
version: 1
pools:
  analysts:
    min_ready: 2
    buffer: 0
    max_total: 4
    container: {expires_after_minutes: 20}
    lease: {session_idle_seconds: 3600, wait_seconds: 60}
"""
FIRST_20_PRIMES_SUM = 639


def test_the_two_turn_example_saves_after_the_response_and_restores_into_a_fresh_container(
    pools_env: PoolEnv, hearth_runtime: Runtime, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
    local_api: LocalAPI,
) -> None:
    pools_env.write_pools(POOLS)
    start_worker(pools_env.env, concurrency=2)
    until(lambda: len(hearth_runtime.store.records("analysts", State.READY)) >= 2,
          step=lambda: tick(hearth_runtime, lambda name, args: celery_app.send_task(name, args=args)),
          timeout=90.0, what="pool filled")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "OPENAI_"))}
    env.update(pools_env.env)
    run = subprocess.run([sys.executable, str(EXAMPLE)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    steps = {s["step"]: s for s in map(json.loads, run.stdout.splitlines())}

    first, second = steps["turn 1"], steps["turn 2"]
    assert first["complete"] and first["cited"] == [["primes.csv", "saved"]]  # saved by after_response
    assert first["saved"] == ["/mnt/data/primes.csv"]
    assert second["restored"] and second["restored_files"] == ["primes.csv"]
    assert second["container_id"] != first["container_id"]
    assert f"is {FIRST_20_PRIMES_SUM}." in second["answer"]  # the model read the restored bytes back
    assert steps["ended"]["retiring"]

    client = sdk(local_api)
    with pytest.raises(openai.NotFoundError):  # the first container really was gone on the server
        client.containers.retrieve(first["container_id"])
