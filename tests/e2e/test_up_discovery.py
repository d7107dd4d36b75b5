"""up.json discovery on its own: which ``hearth up`` counts as running, what other commands take from
it (Redis, API, pools file) and what never goes into it.

The "running hearth up" is a real process (a sleeping Python), so liveness is checked the way it is
in production: by pid and start time, after a real kill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from settings import Settings
from settings.discovery import UP_FILE, UpInfo, clear_up, read_up


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("HEARTH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def write_up(data_dir: Path, pid: int, **extra: object) -> Path:
    return UpInfo(pid=pid, redis_url="redis://127.0.0.1:6399/0", api_base="http://127.0.0.1:9/v1",
                  pools=str((data_dir.parent / "custom.yaml").resolve()), **extra).write(data_dir)  # type: ignore[arg-type]


def test_a_running_up_provides_redis_api_and_pools(tmp_path: Path, other_process: subprocess.Popen[bytes]) -> None:
    data_dir = tmp_path / ".hearth"
    write_up(data_dir, other_process.pid)
    s = Settings()
    assert s.resolved_redis_url == "redis://127.0.0.1:6399/0"
    assert s.resolved_api_base == "http://127.0.0.1:9/v1"
    assert s.resolved_pools == (tmp_path / "custom.yaml").resolve()


def test_explicit_pools_win_over_the_discovered_ones(
    tmp_path: Path, other_process: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_up(tmp_path / ".hearth", other_process.pid)
    assert Settings(pools=Path("mine.yaml")).resolved_pools == Path("mine.yaml")
    # Even when the explicit value equals the default: it was asked for.
    assert Settings(pools=Path("examples/pools.yaml")).resolved_pools == Path("examples/pools.yaml")
    monkeypatch.setenv("HEARTH_POOLS", "env.yaml")
    assert Settings().resolved_pools == Path("env.yaml")
    assert Settings().model_copy(update={"pools": Path("cli.yaml")}).resolved_pools == Path("cli.yaml")


def test_a_dead_up_is_ignored(tmp_path: Path, other_process: subprocess.Popen[bytes]) -> None:
    data_dir = tmp_path / ".hearth"
    write_up(data_dir, other_process.pid)
    other_process.kill()
    other_process.wait()
    assert (data_dir / UP_FILE).exists() and read_up(data_dir) is None
    s = Settings()
    assert s.resolved_redis_url is None
    assert s.resolved_pools == Path("examples/pools.yaml")
    assert s.resolved_api_base == "http://127.0.0.1:8650/v1"


def test_a_reused_pid_is_not_taken_for_the_up_that_wrote_the_file(
    tmp_path: Path, other_process: subprocess.Popen[bytes]
) -> None:
    data_dir = tmp_path / ".hearth"
    write_up(data_dir, other_process.pid, started=12345.0)  # the pid is alive, but started at another time
    assert read_up(data_dir) is None
    write_up(data_dir, other_process.pid)
    info = read_up(data_dir)
    assert info is not None and info.pid == other_process.pid and info.started is not None


def test_a_redis_password_is_never_written(tmp_path: Path) -> None:
    data_dir = tmp_path / ".hearth"
    for url in ("redis://:s3cret-pw@127.0.0.1:6379/0", "redis://user:s3cret-pw@host:6379/0",
                "redis://host:6379/0?password=s3cret-pw"):
        UpInfo(pid=os.getpid(), redis_url=url, api_base=None).write(data_dir)
        text = (data_dir / UP_FILE).read_text()
        assert "s3cret-pw" not in text
        assert json.loads(text)["redis_url"] is None
    UpInfo(pid=os.getpid(), redis_url="redis://user@host:6379/0", api_base=None).write(data_dir)
    assert json.loads((data_dir / UP_FILE).read_text())["redis_url"] == "redis://user@host:6379/0"


def test_clear_up_removes_only_its_own_file(tmp_path: Path, other_process: subprocess.Popen[bytes]) -> None:
    data_dir = tmp_path / ".hearth"
    write_up(data_dir, other_process.pid)
    clear_up(data_dir, os.getpid())  # another, live up's file: kept
    assert read_up(data_dir) is not None
    clear_up(data_dir, other_process.pid)
    assert not (data_dir / UP_FILE).exists()


def test_a_corrupt_file_means_no_up(tmp_path: Path) -> None:
    data_dir = tmp_path / ".hearth"
    data_dir.mkdir()
    for text in ("", "{", "[]", '{"pid": "x"}', '{"redis_url": "redis://h/0"}', '{"pid": 1, "started": "x"}'):
        (data_dir / UP_FILE).write_text(text)
        assert read_up(data_dir) is None, text
