"""Harvests of one container never overlap, and every harvest of it lands in one root.

Real parts: a redis-server (the harvest lock), the local API over a socket (slow downloads through
its fault injection), a local directory as storage. The container's record is written straight into
the store (no worker needed: Operations runs in the test process).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.api.models import CreateContainerRequest
from hearth.clock import OffsetClock
from hearth.errors import Busy
from hearth.files.manifest import MANIFEST_KEY, Manifest
from hearth.files.paths import TEMP_MARKER
from hearth.operations import Operations, harvest_lock
from hearth.pool.model import State
from hearth.runtime import Runtime
from settings import Settings
from tests.fixtures.localapi import LocalAPI

POOLS = """
version: 1
pools:
  alpha:
    min_ready: 0
    max_total: 2
"""


@pytest.fixture
def runtime(tmp_path: Path, local_api: LocalAPI, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    (tmp_path / "pools.yaml").write_text(POOLS)
    env = {
        "HEARTH_BACKEND": "local", "HEARTH_API_BASE": local_api.base_url, "HEARTH_REDIS_URL": redis_url,
        "HEARTH_POOLS": str(tmp_path / "pools.yaml"), "HEARTH_STORAGE_URL": (tmp_path / "harvest").as_uri(),
        "HEARTH_DATA_DIR": str(tmp_path / "data"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rt = Runtime.from_settings(Settings(), clock=OffsetClock())
    yield rt
    rt.close()


def leased_container(rt: Runtime, local_api: LocalAPI) -> str:
    cid = rt.client.create_container(CreateContainerRequest(name="hearth-alpha-conc0001")).id
    rt.store.write_intent("alpha", "hearth-alpha-conc0001")
    rt.store.transition("hearth-alpha-conc0001", State.CREATING, State.READY, container_id=cid)
    return cid


def manifests(root: Path) -> list[Path]:
    return sorted(root.rglob(MANIFEST_KEY))


def test_two_concurrent_harvests_of_one_container_end_with_every_file_recorded(
    runtime: Runtime, local_api: LocalAPI, tmp_path: Path,
) -> None:
    cid = leased_container(runtime, local_api)
    written = {"/mnt/data/big.bin": os.urandom(3 * 2**20)}
    written |= {f"/mnt/data/small-{i}.txt": f"file {i}\n".encode() for i in range(6)}
    for path, data in written.items():
        local_api.write_assistant_file(cid, path, data)
    local_api.set_faults({"endpoints": {"files.content": {"latency_ms": 300}}})

    reports = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def go() -> None:
        try:
            barrier.wait(10)
            reports.append(Operations(runtime).harvest(cid, wait=120))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    local_api.set_faults(None)

    assert not errors, errors
    assert len(reports) == 2 and all(r.failures == 0 and r.complete for r in reports)
    assert sum(r.files for r in reports) == len(written)  # each file copied once, by one of them
    [found] = manifests(tmp_path / "harvest")
    manifest = Manifest.from_json(found.read_bytes(), container_id=cid)
    assert {e.container_path for e in manifest.files.values()} == set(written)
    for e in manifest.files.values():
        assert (found.parent / e.storage_key).read_bytes() == written[e.container_path]
    assert not [p for p in (tmp_path / "harvest").rglob("*") if TEMP_MARKER in p.name]


def test_a_harvest_while_another_holds_the_lock_is_busy_and_temporary(runtime: Runtime, local_api: LocalAPI) -> None:
    cid = leased_container(runtime, local_api)
    with harvest_lock(runtime, cid):
        with pytest.raises(Busy) as caught:
            Operations(runtime).harvest(cid)
        assert caught.value.temporary
    assert Operations(runtime).harvest(cid).complete  # released: the next one runs


def test_a_harvest_after_midnight_reuses_the_first_root(
    runtime: Runtime, local_api: LocalAPI, tmp_path: Path,
) -> None:
    cid = leased_container(runtime, local_api)
    local_api.write_assistant_file(cid, "/mnt/data/report.csv", b"a,b\n1,2\n")
    first = Operations(runtime).harvest(cid)
    assert first.files == 1
    record = runtime.store.by_container_id(cid)
    assert record is not None and record.harvest_target == first.target

    assert isinstance(runtime.clock, OffsetClock)
    runtime.clock.advance(86400)  # the next UTC day: {date} would render differently now
    second = Operations(runtime).harvest(cid)
    assert second.files == 0 and second.already == 1
    assert second.target == first.target
    assert len(manifests(tmp_path / "harvest")) == 1
