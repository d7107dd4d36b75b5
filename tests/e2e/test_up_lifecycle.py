"""``hearth up`` as other commands and the operating system see it: the pools file it was given is
found through up.json, and a ``kill -9`` of the supervisor leaves nothing running.

Real processes throughout: ``hearth up`` is a subprocess with an embedded redis-server, the local API
in its thread, a worker and a heartbeat; further ``hearth`` subprocesses run with the same settings
but no HEARTH_POOLS; psutil watches the children after the supervisor is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from tests.e2e.helpers import (
    HEARTH,
    POOLS,
    clean_env,
    descendants,
    hearth,
    hearth_json,
    port_open,
    still_alive,
    stop_tree,
    write_pool_files,
)
from tests.helpers import until

API_KEY = "sk-e2e-lifecycle-0123456789"
# A pools file other than the default, in a folder of its own: its inputs resolve next to it.
CUSTOM = POOLS.replace("alpha:", "gamma:").replace("min_ready: 2", "min_ready: 1").replace(
    "path: inputs/*.csv", "path: ../inputs/*.csv").replace("path: inputs/helper.py", "path: ../inputs/helper.py")


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    cwd: Path
    env: dict[str, str]  # "the same settings" as `hearth up`: no HEARTH_POOLS anywhere
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"hearth up exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
        done = hearth(["status", "--json"], self.env, self.cwd)
        if done.returncode != 0:  # up.json not written yet
            return None
        data: dict[str, Any] = json.loads(done.stdout)
        return data


def start_up(tmp_path: Path, pools_arg: str) -> Running:
    env = clean_env(
        HEARTH_HEARTBEAT_INTERVAL="1",
        HEARTH_LOCAL_PORT="0",
        HEARTH_STORAGE_URL=(tmp_path / "harvest").as_uri(),
        HEARTH_API_KEY=API_KEY,
    )
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*HEARTH, "up", "--pools", pools_arg, "--stop-timeout", "10"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return Running(proc, tmp_path, env, log)


@pytest.fixture
def custom_up(tmp_path: Path) -> Iterator[Running]:
    write_pool_files(tmp_path)
    (tmp_path / "pools.yaml").unlink()  # only the custom file exists: nothing else could be picked up
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "custom.yaml").write_text(CUSTOM)
    running = start_up(tmp_path, "conf/custom.yaml")
    try:
        yield running
    finally:
        stop_tree(running.proc)


@pytest.fixture
def plain_up(tmp_path: Path) -> Iterator[Running]:
    write_pool_files(tmp_path)
    running = start_up(tmp_path, "pools.yaml")
    try:
        yield running
    finally:
        stop_tree(running.proc)


def test_other_commands_use_the_pools_file_hearth_up_was_given(custom_up: Running) -> None:
    assert "HEARTH_POOLS" not in custom_up.env

    def filled() -> dict[str, Any] | None:
        data = custom_up.status()
        return data if data and data["pools"].get("gamma", {}).get("ready") == 1 else None

    data = until(filled, timeout=60, what="pool gamma ready 1 seen by `hearth status` without HEARTH_POOLS", pause=0.5)
    assert set(data["pools"]) == {"gamma"}  # the custom file's pools, not the default's

    # up.json names the file (absolute, so any working directory works) and holds no secret.
    up_json = (custom_up.cwd / ".hearth" / "up.json").read_text()
    assert json.loads(up_json)["pools"] == str((custom_up.cwd / "conf" / "custom.yaml").resolve())
    assert API_KEY not in up_json

    # plan and lease (which needs the pool's spec) find it too, from another working directory.
    elsewhere = custom_up.cwd / "conf"
    env = {**custom_up.env, "HEARTH_DATA_DIR": str(custom_up.cwd / ".hearth")}
    plan = hearth_json(["plan"], env, elsewhere)
    assert "gamma" in json.dumps(plan) and "alpha" not in json.dumps(plan)
    lease = hearth_json(["lease", "gamma"], env, elsewhere)
    assert lease["name"].startswith("hearth-gamma-")
    done = hearth(["release", lease["container_id"], "--lease", lease["lease_id"]], env, elsewhere)
    assert done.returncode == 0, done.stderr

    # An explicit HEARTH_POOLS still wins over the discovered one.
    (custom_up.cwd / "conf" / "other.yaml").write_text(CUSTOM.replace("gamma:", "delta:"))
    other = hearth_json(["status"], {**custom_up.env, "HEARTH_POOLS": "conf/other.yaml"}, custom_up.cwd)
    assert other["pools"]["delta"]["desired"] == 1
    assert other["pools"]["gamma"]["desired"] == 0  # still has records in Redis, but not in this file

    custom_up.proc.send_signal(signal.SIGINT)
    assert custom_up.proc.wait(60) == 0
    assert not (custom_up.cwd / ".hearth" / "up.json").exists()


def test_kill_9_of_hearth_up_leaves_no_process_and_no_open_port(plain_up: Running) -> None:
    data = until(lambda: (d := plain_up.status()) and d["heartbeat"] and d, timeout=60,
                 what="hearth up serving with a heartbeat", pause=0.5)
    redis_port = urlsplit(data["redis_url"]).port
    api_port = urlsplit(data["api_base"]).port
    assert redis_port and api_port
    children = descendants(plain_up.proc.pid)
    names = " ".join(" ".join(p.cmdline()) for p in children)
    assert "redis-server" in {p.name() for p in children}
    assert " worker " in f" {names} " and " heartbeat" in names

    os.kill(plain_up.proc.pid, signal.SIGKILL)
    assert plain_up.proc.wait(30) == -signal.SIGKILL

    # The worker, the heartbeat and redis-server notice their parent's death and stop on their own.
    leftover = still_alive(children, timeout=40)
    for p in leftover:  # stop_tree cannot find them once orphaned: do not leak them into other tests
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert leftover == [], [" ".join(p.cmdline()) for p in leftover]
    assert not port_open("127.0.0.1", redis_port)
    assert not port_open("127.0.0.1", api_port)

    # The stale up.json (its pid is dead) is ignored: commands say there is no Redis instead of hanging.
    assert (plain_up.cwd / ".hearth" / "up.json").exists()
    done = hearth(["status", "--json"], {**plain_up.env, "HEARTH_POOLS": "pools.yaml"}, plain_up.cwd)
    assert done.returncode != 0 and "HEARTH_REDIS_URL" in done.stdout + done.stderr

