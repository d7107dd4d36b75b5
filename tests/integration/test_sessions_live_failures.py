"""A session save that fails is reported and retried, and afterwards every file is in storage and comes back.

Issue 12 asks that "a save that fails is retried and reported, and a later save or restore still
finds every file". The failure is a real one: the local API (over a socket) answers every download
of a container file with a 5xx (``files.content`` faults), so each copy fails after its attempts.
Real Redis, a real Celery worker process, the official SDK as the independent view of the server.
The test itself is the only heartbeat (``tick``), so no live save runs behind its back while the
faults are on.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from celery import Celery

from hearth.clock import OffsetClock
from hearth.files.manifest import MANIFEST_KEY, Manifest
from hearth.files.storage import StorageTarget
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from hearth.sessions import LiveSaves, Sessions, restore_name, session_hash
from hearth.sessions.saving import load_state
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import count_requests, sdk, sdk_response, until

POOLS = """
version: 1
pools:
  alpha:
    min_ready: 2
    buffer: 0
    max_total: 4
    container: {expires_after_minutes: 20}
    lease: {session_idle_seconds: 3600, wait_seconds: 60}
  beta:
    min_ready: 1
    buffer: 0
    max_total: 2
    container: {expires_after_minutes: 20}
    lease: {session_idle_seconds: 3600, wait_seconds: 60, session_save_every_seconds: 60}
"""

KEY = "conversation-failing-saves"
DOWNLOADS_FAIL = {"endpoints": {"files.content": {"error_rate": 1.0}}}


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    # No client retries of the 5xx (each copy still makes its own attempts): a failure is quick.
    return {"HEARTH_ORPHAN_GRACE": "600", "HEARTH_SESSION_SAVE_EVERY": "2", "HEARTH_API_MAX_RETRIES": "0"}


@pytest.fixture
def filled(pools_env: PoolEnv, hearth_runtime: Runtime, start_worker: Callable[..., WorkerProcess],
           celery_app: Celery) -> Runtime:
    pools_env.write_pools(POOLS)
    start_worker(pools_env.env, concurrency=2)
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    until(lambda: len(hearth_runtime.store.records("alpha", State.READY)) >= 2
          and len(hearth_runtime.store.records("beta", State.READY)) >= 1,
          step=lambda: tick(hearth_runtime, send), timeout=90.0, what="pool filled")
    return hearth_runtime


def stored(sessions: Sessions, file_id: str) -> bytes | None:
    """What storage holds for one file of the session's current container (None: not saved)."""
    return stored_for(sessions, KEY, file_id)


def stored_for(sessions: Sessions, key: str, file_id: str) -> bytes | None:
    rec = sessions.get(key)
    assert rec is not None
    here = rec.history[-1]
    target = StorageTarget.from_url(here.target)
    raw = target.read_bytes(MANIFEST_KEY)
    entry = None if raw is None else Manifest.from_json(raw, container_id=here.container_id).files.get(file_id)
    if entry is None:
        return None
    with target.open_read(entry.storage_key) as fh:
        return fh.read()


def test_a_failed_save_is_reported_retried_and_every_file_is_found_by_later_saves_and_the_restore(
    filled: Runtime, local_api: LocalAPI, celery_app: Celery,
) -> None:
    send = lambda name, args: celery_app.send_task(name, args=args)  # noqa: E731
    sessions = Sessions(filled, send)
    client = sdk(local_api)
    got = sessions.lease("alpha", KEY)
    sid = session_hash(KEY)

    local_api.set_faults(DOWNLOADS_FAIL)
    chart = os.urandom(50_000)
    first = local_api.write_assistant_file(got.container_id, "/mnt/data/chart.png", chart)

    # After a model response: reported, not raised; the cited file says it failed.
    done = sessions.after_response(KEY, sdk_response(got.container_id, [(got.container_id, first["id"], "chart.png")]))
    assert done.found and not done.complete and done.failures == 1
    assert [(c["file_id"], c["status"]) for c in done.cited] == [(first["id"], "skipped: failed")]
    assert "1 failed (the live save retries them)" in done.message
    assert any(first["id"] in e for e in done.errors) and KEY not in " ".join(done.errors)
    assert stored(sessions, first["id"]) is None

    # The live save (run here, with the faults still on) reports it too and keeps the session scheduled.
    live = LiveSaves(filled).save(sid)
    assert live.active and live.failures == 1 and live.saved == 0 and live.next_in is not None
    assert load_state(sessions.records, sid).retry  # the next live save harvests whatever the listing says

    # The backend recovers: with no app call, the heartbeat's live save copies what failed.
    local_api.set_faults(None)
    until(lambda: stored(sessions, first["id"]) == chart, step=lambda: tick(filled, send), timeout=60.0,
          what="the failed file saved by a later live save")
    until(lambda: not load_state(sessions.records, sid).retry, step=lambda: tick(filled, send), timeout=30.0,
          what="the retry flag cleared by a clean save")

    # The task by name: a failed save is retried by the worker (state RETRY, the failure in its info),
    # and once downloads work again the same task finishes with the file saved.
    local_api.set_faults(DOWNLOADS_FAIL)
    table = b"n,sq\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(2000))
    second = local_api.write_assistant_file(got.container_id, "/mnt/data/squares.csv", table)
    response = sdk_response(got.container_id, [(got.container_id, second["id"], "squares.csv")])
    task = celery_app.send_task("hearth.session_save", kwargs={"session_id": sid,
                                                               "response": response.model_dump(mode="json")})
    until(lambda: task.state == "RETRY", timeout=60.0, what="the save task retried")
    assert "1 failed" in str(task.info)
    local_api.set_faults(None)
    result = task.get(timeout=90)
    assert result["complete"] and result["failures"] == 0
    # "saved" by this task, or "already" when a live save the last ticks deferred got there first.
    assert [c["file_id"] for c in result["cited"]] == [second["id"]]
    assert result["cited"][0]["status"] in ("saved", "already")
    assert stored(sessions, second["id"]) == table

    # The container is then lost: the next lease restores both files, byte for byte.
    client.containers.delete(got.container_id)
    back = sessions.lease("alpha", KEY, verify=True)
    assert back.restored and back.container_id != got.container_id
    assert sorted(back.restored_files) == ["chart.png", "squares.csv"]
    files = {restore_name(f.path): f.id for f in client.containers.files.list(back.container_id)}
    content = client.containers.files.content
    assert content.retrieve(files["chart.png"], container_id=back.container_id).read() == chart
    assert content.retrieve(files["squares.csv"], container_id=back.container_id).read() == table


def test_a_duplicate_live_save_from_a_backlog_makes_no_request_and_keeps_the_period(
    filled: Runtime, local_api: LocalAPI, celery_app: Celery, hearth_clock: OffsetClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # When workers fall more than claim_ttl behind, the heartbeat claims a session whose save is still
    # queued a second time (bench/sessions.py at 1,000 sessions on a loaded machine). Each duplicate
    # must not cost an API request, or a backlog turns into a burst of listings over the rate.
    sessions = Sessions(filled, lambda name, args: celery_app.send_task(name, args=args))
    key = "conversation-backlogged"
    sessions.lease("beta", key)  # pool `beta` saves live every 60 s
    sid = session_hash(key)
    live = LiveSaves(filled)
    seen = count_requests(local_api, monkeypatch)

    first = live.save(sid)
    assert seen["files.list"] == 1 and first.active and first.next_in == pytest.approx(60, abs=1)
    listed_due = live.due_at(sid)
    assert listed_due is not None
    assert [s for s, _ in live.claim(listed_due + 1)] == [sid]  # the claim the heartbeat makes again
    assert live.due_at(sid) > listed_due  # pushed out by the claim's ttl

    duplicate = live.save(sid)
    assert seen["files.list"] == 1  # no second listing
    assert duplicate.active and "duplicate" in duplicate.detail
    assert live.due_at(sid) == pytest.approx(listed_due)  # back to one period after the real listing

    hearth_clock.advance(60)  # a period later the save lists again, and copies what is new
    got = sessions.get(key)
    assert got is not None and got.current is not None
    written = local_api.write_assistant_file(got.current.container_id, "/mnt/data/late.txt", b"late\n")
    later = live.save(sid)
    assert seen["files.list"] >= 2 and later.saved == 1 and stored_for(sessions, key, written["id"]) == b"late\n"
