"""Progress on long work: ``hearth fill POOL`` waits for a pool to fill (exit 0) or times out (exit 1);
``hearth harvest`` draws a byte bar on a terminal.

Real parts: a redis-server, the local API over a socket, a Celery worker process that runs the
``hearth.reconcile`` the command sends and the provisions that follow, and ``hearth`` as a process
(on a real pseudo-terminal for the bars).
"""

from __future__ import annotations

import json
import os
import pty
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hearth.api.models import CreateContainerRequest
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tests.e2e.helpers import HEARTH, clean_env, hearth, write_pool_files
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def words(text: str) -> str:
    """Text with rich's line wrapping undone (stderr wraps at 80 columns off a terminal)."""
    return " ".join(text.split())


@pytest.fixture
def env(tmp_path: Path, local_api: LocalAPI, redis_url: str) -> dict[str, str]:
    pools = write_pool_files(tmp_path)  # pool alpha: min_ready 2
    return clean_env(
        HEARTH_BACKEND="local",
        HEARTH_API_BASE=local_api.base_url,
        HEARTH_REDIS_URL=redis_url,
        HEARTH_POOLS=str(pools),
        HEARTH_STORAGE_URL=(tmp_path / "harvest").as_uri(),
        HEARTH_DATA_DIR=str(tmp_path / "data"),
    )


def on_tty(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 90.0) -> tuple[int, str]:
    """Run ``hearth`` with stdout on a pseudo-terminal (so it is a TTY); its exit code and what it drew."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*HEARTH, *args], env={**env, "COLUMNS": "120"}, cwd=cwd, stdout=follower,
                            stderr=subprocess.PIPE)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    code = proc.wait(timeout)
    assert proc.stderr is not None
    proc.stderr.close()
    # what a reader sees: colours and cursor moves stripped
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_fill_waits_until_the_pool_is_full(
    env: dict[str, str], tmp_path: Path, start_worker: Callable[..., WorkerProcess], redis_url: str
) -> None:
    start_worker(env, concurrency=2)
    done = hearth(["fill", "alpha", "--json", "--timeout", "90"], env, tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["pool"] == "alpha" and doc["full"] is True
    assert doc["ready"] == doc["desired"] == 2
    rt = Runtime.from_settings(Settings(redis_url=redis_url, api_base=env["HEARTH_API_BASE"],
                                        pools=env["HEARTH_POOLS"]))
    try:
        assert len(rt.store.records("alpha", State.READY)) == 2  # really there, not just reported
    finally:
        rt.close()

    # Already full: the bar on a terminal says so and exits 0 at once; without a TTY, plain text.
    code, drawn = on_tty(["fill", "alpha"], env, tmp_path)
    assert code == 0 and "full: 2/2 ready" in drawn
    plain = hearth(["fill", "alpha"], env, tmp_path)
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout and "2/2 ready" in plain.stdout


def test_fill_times_out_with_exit_1_when_creates_fail(
    env: dict[str, str], tmp_path: Path, start_worker: Callable[..., WorkerProcess], local_api: LocalAPI
) -> None:
    local_api.set_faults({"endpoints": {"containers.create": {"error_rate": 1.0}}})
    start_worker(env, concurrency=2)
    done = hearth(["fill", "alpha", "--json", "--timeout", "2"], env, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["full"] is False and doc["ready"] == 0 and doc["desired"] == 2
    assert "timed out" in words(done.stderr) and "ready 0/2" in words(done.stderr)

    # The bar on a terminal ends the same way, and plain lines without one.
    code, drawn = on_tty(["fill", "alpha", "--timeout", "1"], env, tmp_path)
    assert code == 1 and "alpha ready" in drawn and "0/2" in drawn
    plain = hearth(["fill", "alpha", "--timeout", "1"], env, tmp_path)
    assert plain.returncode == 1 and plain.stdout.startswith("alpha: ready 0/2")


def test_fill_of_an_unknown_pool_is_a_configuration_error(env: dict[str, str], tmp_path: Path) -> None:
    done = hearth(["fill", "nope", "--json", "--timeout", "1"], env, tmp_path)
    assert done.returncode == 2 and "no pool named 'nope'" in words(done.stderr)


def test_harvest_draws_a_byte_bar_on_a_terminal(env: dict[str, str], tmp_path: Path, local_api: LocalAPI) -> None:
    rt = Runtime.from_settings(Settings(redis_url=env["HEARTH_REDIS_URL"], api_base=env["HEARTH_API_BASE"],
                                        pools=env["HEARTH_POOLS"]))
    try:
        cid = rt.client.create_container(CreateContainerRequest(name="progress-harvest")).id
    finally:
        rt.close()
    big = random.Random(7).randbytes(3 * 2**20)
    local_api.write_assistant_file(cid, "/mnt/data/model.bin", big)
    local_api.write_assistant_file(cid, "/mnt/data/notes.txt", b"fine")
    out = tmp_path / "out"

    code, drawn = on_tty(["harvest", cid, "--to", out.as_uri()], env, tmp_path)
    assert code == 0, drawn
    assert "2/2 files" in drawn and "3.1 MB" in drawn  # the bar: files and bytes of the totals
    assert "harvested 2 files" in drawn
    assert [p.read_bytes() == big for p in out.rglob("model.bin")] == [True]

    # --json stays one clean JSON document (no bar), the files already there
    done = hearth(["harvest", cid, "--to", out.as_uri(), "--json"], env, tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["already"] == 2
