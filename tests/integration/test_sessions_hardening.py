"""Sessions hardening (c58900a) pinned down: colliding base names, the fast path's compare-and-set, sha256 on restore.

Each test fails if its change is reverted: restore keyed by base name again (one of two ``report.csv``
files lost), the fast path saving its whole stale record (a rebind's container dropped from the
record), restore checking only sizes (a same-size corrupt object uploaded as the session's file).

Real parts: a redis-server, the local API over a socket, the ``openai`` SDK to read what containers
hold. No Celery worker: the pool is filled by ``tick`` with operations run inline, harvests are called
directly, and what a session would enqueue (harvests, retires) is only recorded, so nothing runs
behind the test's back. The Runtime's ``OffsetClock`` moves together with the server's clock.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import openai
import pytest

from hearth.clock import OffsetClock
from hearth.errors import StorageError
from hearth.files.inputs import restore_name
from hearth.files.manifest import MANIFEST_KEY, Manifest, ManifestEntry
from hearth.files.storage import StorageTarget
from hearth.planner import tick
from hearth.pool.effects import Steps
from hearth.pool.leases import Lease
from hearth.pool.model import State
from hearth.runtime import Runtime
from hearth.sessions import SessionRecord, Sessions, session_hash
from settings import Settings
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import advance_both, inline_enqueue, recording_enqueue, sdk, until

POOLS = """
version: 1
pools:
  alpha:
    min_ready: 2
    buffer: 0
    max_total: 6
    container: {expires_after_minutes: 10}
    keepalive: {margin_seconds: 60}
    lease: {session_idle_seconds: 3600, wait_seconds: 30}
"""

KEY = "conversation-hardening-42"


@pytest.fixture
def rt(pools_env: PoolEnv, hearth_runtime: Runtime) -> Runtime:
    """The test's Runtime with pool ``alpha`` holding two READY containers."""
    pools_env.write_pools(POOLS)
    refill(hearth_runtime, 2)
    return hearth_runtime


@pytest.fixture
def calls() -> list[tuple[str, list[Any]]]:
    return []


@pytest.fixture
def sessions(rt: Runtime, calls: list[tuple[str, list[Any]]]) -> Sessions:
    return Sessions(rt, recording_enqueue(calls))


def refill(rt: Runtime, n: int) -> None:
    until(lambda: len(rt.store.records("alpha", State.READY)) >= n, step=lambda: tick(rt, inline_enqueue(rt)),
          what=f"{n} READY containers")


def contents(client: openai.OpenAI, container_id: str) -> dict[str, bytes]:
    """Every file of a container by its restore name, read through the SDK."""
    out: dict[str, bytes] = {}
    for f in client.containers.files.list(container_id):
        name = restore_name(f.path)
        assert name not in out, f"two files named {name} in {container_id}"
        out[name] = client.containers.files.content.retrieve(f.id, container_id=container_id).read()
    return out


def saved_entries(rec: SessionRecord) -> tuple[StorageTarget, dict[str, ManifestEntry]]:
    """The harvest target of the session's current container and its manifest entries by container path."""
    here = rec.history[-1]
    target = StorageTarget.from_url(here.target)
    raw = target.read_bytes(MANIFEST_KEY)
    assert raw is not None, "no manifest at the session's harvest target"
    manifest = Manifest.from_json(raw, container_id=here.container_id)
    return target, {e.container_path: e for e in manifest.files.values()}


def test_files_with_colliding_base_names_both_come_back_and_renamed_says_which_is_which(
    rt: Runtime, sessions: Sessions, local_api: LocalAPI, hearth_clock: OffsetClock,
) -> None:
    client = sdk(local_api)
    first = sessions.lease("alpha", KEY)
    a_bytes, b_bytes = b"region,total\nnorth,1\n" + os.urandom(2000), b"region,total\nsouth,2\n" + os.urandom(3000)
    local_api.write_assistant_file(first.container_id, "/mnt/data/a/report.csv", a_bytes)
    local_api.write_assistant_file(first.container_id, "/mnt/data/b/report.csv", b_bytes)

    report = sessions.harvest(first.session_id)
    assert report is not None and report.complete and report.files == 2
    rec = sessions.get(KEY)
    assert rec is not None
    _, saved = saved_entries(rec)
    assert set(saved) == {"/mnt/data/a/report.csv", "/mnt/data/b/report.csv"}  # both saved, apart

    advance_both(local_api, hearth_clock, 11 * 60)  # past expires_after: the backend expires every container
    assert client.containers.retrieve(first.container_id).status == "expired"
    refill(rt, 1)

    second = sessions.lease("alpha", KEY)
    assert second.container_id != first.container_id and second.restored
    assert sorted(second.restored_files) == ["b__report.csv", "report.csv"]
    assert second.renamed == {"/mnt/data/b/report.csv": "b__report.csv"}
    assert second.to_json()["renamed"] == second.renamed
    after = contents(client, second.container_id)
    assert after == {"report.csv": a_bytes, "b__report.csv": b_bytes}  # each name holds its own path's bytes
    saved_rec = sessions.get(KEY)
    assert saved_rec is not None and saved_rec.renamed == second.renamed and not saved_rec.restoring

    # The next turn is the same container, nothing restored again, nothing duplicated.
    third = sessions.lease("alpha", KEY, verify=True)
    assert third.container_id == second.container_id and not third.restored
    assert contents(client, second.container_id) == after


def test_the_unlocked_fast_path_does_not_overwrite_a_rebind_that_happened_meanwhile(
    rt: Runtime, sessions: Sessions, calls: list[tuple[str, list[Any]]], local_api: LocalAPI,
    hearth_clock: OffsetClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = sdk(local_api)
    first = sessions.lease("alpha", KEY)
    assert first.created
    sid = session_hash(KEY)

    # Process A takes the unlocked fast path (verify=False: Redis only). Between its read of the
    # record (and the lease renew) and its save, process B finds the container gone and rebinds the
    # key under the session lock. A's save comes last, from its stale read.
    rt_a = Runtime.from_settings(Settings(), clock=hearth_clock)
    try:
        sessions_a = Sessions(rt_a, recording_enqueue(calls))
        real_renew = rt_a.leases.core.renew  # the lease core's steps, which both session faces run
        rebound: list[Any] = []

        def renew_then_b_rebinds(lease_id: str, ttl: float, *, token: int | None = None) -> Steps[Lease]:
            renewed = yield from real_renew(lease_id, ttl, token=token)
            if not rebound:
                client.containers.delete(first.container_id)  # lost: B's retrieve sees it gone
                rebound.append(sessions.lease("alpha", KEY, verify=True))
            return renewed

        monkeypatch.setattr(rt_a.leases.core, "renew", renew_then_b_rebinds)
        stale = sessions_a.lease("alpha", KEY, verify=False)
    finally:
        rt_a.close()

    assert len(rebound) == 1
    second = rebound[0]
    assert stale.container_id == first.container_id  # A answered from what it read
    assert second.container_id != first.container_id and second.restored

    rec = rt.redis.get(rt.store.key("session", sid))
    assert rec is not None
    record = SessionRecord.model_validate_json(rec)
    assert record.container_id == second.container_id and record.lease_id == second.lease_id
    assert [h.container_id for h in record.history] == [first.container_id, second.container_id]
    assert not record.restoring

    # And the session keeps the new container on its next turn.
    again = sessions.lease("alpha", KEY, verify=True)
    assert again.container_id == second.container_id and not again.restored


def test_a_stored_object_that_does_not_match_its_sha256_is_not_restored(
    rt: Runtime, sessions: Sessions, local_api: LocalAPI, hearth_clock: OffsetClock,
) -> None:
    client = sdk(local_api)
    first = sessions.lease("alpha", KEY)
    good = os.urandom(40_000)
    local_api.write_assistant_file(first.container_id, "/mnt/data/out/model.bin", good)
    report = sessions.harvest(first.session_id)
    assert report is not None and report.complete and report.files == 1
    rec = sessions.get(KEY)
    assert rec is not None
    target, saved = saved_entries(rec)
    entry = saved["/mnt/data/out/model.bin"]
    assert entry.sha256 == hashlib.sha256(good).hexdigest()

    # Bit rot in storage: same size (the old size-only check passes), different bytes.
    obj = Path(target.path(entry.storage_key))
    assert obj.read_bytes() == good
    corrupt = bytes(b ^ 0xFF for b in good[:100]) + good[100:]
    obj.write_bytes(corrupt)
    assert len(corrupt) == entry.bytes

    advance_both(local_api, hearth_clock, 11 * 60)
    refill(rt, 1)

    with pytest.raises(StorageError) as caught:
        sessions.lease("alpha", KEY)
    assert caught.value.temporary  # a retry may succeed once storage is repaired
    assert "model.bin" in str(caught.value)

    rec = sessions.get(KEY)
    assert rec is not None and rec.restoring  # the restore is still owed
    assert rec.container_id is not None and rec.container_id != first.container_id
    held = contents(client, rec.container_id)
    assert hashlib.sha256(corrupt).hexdigest() not in {hashlib.sha256(v).hexdigest() for v in held.values()}
    assert "model.bin" not in held  # the corrupt upload was removed again

    # Storage repaired: the next lease resumes the restore into the same container, byte for byte.
    obj.write_bytes(good)
    back = sessions.lease("alpha", KEY)
    assert back.container_id == rec.container_id and back.restored and back.restored_files == ["model.bin"]
    assert contents(client, back.container_id) == {"model.bin": good}



def test_a_second_restore_brings_each_file_back_once_with_its_newest_bytes(
    rt: Runtime, sessions: Sessions, local_api: LocalAPI, hearth_clock: OffsetClock,
) -> None:
    """Files restored into container 2 are uploads there (``/mnt/data/<hex>-b__report.csv``); restoring
    container 3 must see them as the same files, not add stale copies (``out__table.csv``) each time."""
    client = sdk(local_api)
    first = sessions.lease("alpha", KEY)
    a, b = b"a\n" + os.urandom(500), b"b\n" + os.urandom(700)
    local_api.write_assistant_file(first.container_id, "/mnt/data/a/report.csv", a)
    local_api.write_assistant_file(first.container_id, "/mnt/data/b/report.csv", b)
    local_api.write_assistant_file(first.container_id, "/mnt/data/out/table.csv", b"v1\n")
    report = sessions.harvest(first.session_id)
    assert report is not None and report.complete and report.files == 3
    advance_both(local_api, hearth_clock, 11 * 60)
    refill(rt, 1)

    second = sessions.lease("alpha", KEY)
    assert second.restored and sorted(second.restored_files) == ["b__report.csv", "report.csv", "table.csv"]
    # This turn's code writes a new version of out/table.csv.
    local_api.write_assistant_file(second.container_id, "/mnt/data/out/table.csv", b"v2\n")
    report = sessions.harvest(second.session_id)
    assert report is not None and report.complete and report.files == 4
    # The restore recorded which upload in container 2 is which original file, by container-file id.
    rec = sessions.get(KEY)
    assert rec is not None and [h.container_id for h in rec.history] == [first.container_id, second.container_id]
    uploads = {f.id: restore_name(f.path) for f in client.containers.files.list(second.container_id)
               if f.source != "assistant"}
    assert set(rec.history[1].restored) == set(uploads)  # every restored upload is in the map, nothing else
    assert sorted(rec.history[1].restored.values()) == [
        "/mnt/data/a/report.csv", "/mnt/data/b/report.csv", "/mnt/data/out/table.csv"]
    assert rec.history[0].restored == {}

    advance_both(local_api, hearth_clock, 11 * 60)
    refill(rt, 1)

    third = sessions.lease("alpha", KEY)
    assert third.container_id not in (first.container_id, second.container_id) and third.restored
    assert sorted(third.restored_files) == ["b__report.csv", "report.csv", "table.csv"]
    assert third.renamed == {"/mnt/data/b/report.csv": "b__report.csv"}
    assert contents(client, third.container_id) == {"report.csv": a, "b__report.csv": b, "table.csv": b"v2\n"}


def test_an_app_upload_named_like_a_restored_copy_is_its_own_file(
    rt: Runtime, sessions: Sessions, local_api: LocalAPI, hearth_clock: OffsetClock,
) -> None:
    """Identity is the restored upload's id, not its name: the app uploading its own ``b__report.csv``
    into container 2 does not replace ``/mnt/data/b/report.csv`` (a name-based guess would lose b's bytes)."""
    client = sdk(local_api)
    first = sessions.lease("alpha", KEY)
    a, b, mine = b"a\n" + os.urandom(300), b"b\n" + os.urandom(400), b"app's own\n" + os.urandom(500)
    local_api.write_assistant_file(first.container_id, "/mnt/data/a/report.csv", a)
    local_api.write_assistant_file(first.container_id, "/mnt/data/b/report.csv", b)
    report = sessions.harvest(first.session_id)
    assert report is not None and report.complete and report.files == 2
    advance_both(local_api, hearth_clock, 11 * 60)
    refill(rt, 1)

    second = sessions.lease("alpha", KEY)
    assert second.restored and second.renamed == {"/mnt/data/b/report.csv": "b__report.csv"}
    advance_both(local_api, hearth_clock, 5)  # the app's upload is newer than the restored copy
    client.containers.files.create(second.container_id, file=("b__report.csv", mine))
    report = sessions.harvest(second.session_id)
    assert report is not None and report.complete and report.files == 3
    advance_both(local_api, hearth_clock, 11 * 60)
    refill(rt, 1)

    third = sessions.lease("alpha", KEY)
    assert third.restored and sorted(third.restored_files) == ["_b__report.csv", "b__report.csv", "report.csv"]
    # The app's top-level upload keeps its name; b/report.csv steps aside, still keyed by its original path.
    assert third.renamed == {"/mnt/data/b/report.csv": "_b__report.csv"}
    assert contents(client, third.container_id) == {"report.csv": a, "_b__report.csv": b, "b__report.csv": mine}


def test_a_containers_own_write_beats_the_copy_restored_into_it_whatever_created_at_says(
    rt: Runtime, sessions: Sessions, local_api: LocalAPI, hearth_clock: OffsetClock,
) -> None:
    """created_at is whole seconds and a restore's uploads may share a second with the code's next write
    (or sort after it): the container's own version wins because it is its own, not because of a time."""
    client = sdk(local_api)
    first = sessions.lease("alpha", KEY)
    local_api.write_assistant_file(first.container_id, "/mnt/data/out/table.csv", b"v1\n")
    report = sessions.harvest(first.session_id)
    assert report is not None and report.complete and report.files == 1
    advance_both(local_api, hearth_clock, 11 * 60)
    refill(rt, 1)

    second = sessions.lease("alpha", KEY)
    assert second.restored and second.restored_files == ["table.csv"]
    local_api.write_assistant_file(second.container_id, "/mnt/data/out/table.csv", b"v2\n")
    report = sessions.harvest(second.session_id)
    assert report is not None and report.complete and report.files == 2

    # Make the worst case certain: the restored copy's created_at after the own write's.
    rec = sessions.get(KEY)
    assert rec is not None
    target, saved = saved_entries(rec)
    copy_path = next(p for p in saved if p != "/mnt/data/out/table.csv")
    assert saved[copy_path].file_id in rec.history[1].restored
    doc = json.loads(target.read_bytes(MANIFEST_KEY) or b"")
    for raw in doc["files"]:
        if raw["container_path"] == copy_path:
            raw["created_at"] = saved["/mnt/data/out/table.csv"].created_at + 60
    Path(target.path(MANIFEST_KEY)).write_text(json.dumps(doc))

    advance_both(local_api, hearth_clock, 11 * 60)
    refill(rt, 1)
    third = sessions.lease("alpha", KEY)
    assert third.restored and third.restored_files == ["table.csv"] and third.renamed == {}
    assert contents(client, third.container_id) == {"table.csv": b"v2\n"}
