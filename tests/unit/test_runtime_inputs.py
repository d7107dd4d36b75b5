"""The runtime notices changed inputs (local files and storage URLs) and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from hearth.api.client import ContainersClient
from hearth.runtime import Runtime
from settings import Settings

POOLS = """
version: 1
pools:
  p:
    inputs:
      - path: local.csv
      - url: {url}
        as: remote.csv
"""


def make_runtime(tmp_path: Path) -> Runtime:
    (tmp_path / "local.csv").write_text("a\n1\n")
    (tmp_path / "remote.csv").write_text("b\n2\n")
    (tmp_path / "pools.yaml").write_text(POOLS.format(url=(tmp_path / "remote.csv").as_uri()))
    settings = Settings(pools=tmp_path / "pools.yaml", _env_file=None)  # type: ignore[call-arg]
    # Neither client is used by inputs(): nothing connects.
    return Runtime(settings, redis_client=redis.Redis(port=1), client=ContainersClient("http://127.0.0.1:1/v1"))


def test_a_changed_storage_url_input_changes_the_digest(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path)
    spec = rt.pool("p")
    items, first = rt.inputs(spec)
    assert sorted(i.dest_name or "" for i in items) == ["local.csv", "remote.csv"]
    assert rt.inputs(spec)[1] == first  # nothing changed: same digest

    (tmp_path / "remote.csv").write_text("b\n2\n3\n")
    assert rt.inputs(spec)[1] != first


def test_a_changed_local_input_changes_the_digest(tmp_path: Path) -> None:
    rt = make_runtime(tmp_path)
    spec = rt.pool("p")
    first = rt.inputs(spec)[1]
    (tmp_path / "local.csv").write_text("a\n9\n")  # same size, new content and mtime
    st = (tmp_path / "local.csv").stat()
    os.utime(tmp_path / "local.csv", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert rt.inputs(spec)[1] != first


def test_breaker_and_create_timeout_come_from_settings(tmp_path: Path) -> None:
    from hearth.planner import Planner
    from hearth.pool.store import BreakerPolicy

    (tmp_path / "pools.yaml").write_text("version: 1\npools:\n  p: {}\n")
    settings = Settings(pools=tmp_path / "pools.yaml", breaker_threshold=2, breaker_window=30, breaker_cooldown=7,
                        create_timeout=45, _env_file=None)  # type: ignore[call-arg]
    rt = Runtime(settings, redis_client=redis.Redis(port=1), client=ContainersClient("http://127.0.0.1:1/v1"))
    assert rt.store.breaker_policy == BreakerPolicy(threshold=2, window=30, cooldown=7)
    desired = Planner(rt).desired(rt.pool("p"), 0.0, digest="")
    assert desired.create_timeout == 45
