"""Live session saves and the save after a model response, with real parts.

A redis-server, a real Celery worker process, the local API over a socket (``--dev``: uploads with
``X-Hearth-File-Source: assistant`` stand in for files the model's code wrote) and the official
``openai`` SDK, both as the independent view of the server and for the types of a model response.
Waits are on conditions with a bound (``until``), never on a duration.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from typer.testing import CliRunner

from hearth.clock import OffsetClock
from hearth.files.manifest import MANIFEST_KEY, Manifest
from hearth.files.storage import StorageTarget
from hearth.planner import tick
from hearth.pool.model import State
from hearth.runtime import Runtime
from hearth.sessions import LIVE_SAVE_TASK, SAVES_TASK, LiveSaves, SessionRecord, Sessions, restore_name, session_hash
from hearth.sessions.live import MIN_CLAIM_TTL, SAVE_SHARE
from settings import Settings
from tasks.app import KEEPALIVE_QUEUE, SAVES_QUEUE, broker_key_prefix
from tests.fixtures.celery import WorkerProcess
from tests.fixtures.localapi import LocalAPI
from tests.fixtures.pools import PoolEnv
from tests.helpers import count_requests, recording_enqueue, sdk, sdk_response, until

POOLS = """
version: 1
pools:
  alpha:
    min_ready: 2
    buffer: 0
    max_total: 6
    container: {expires_after_minutes: 20}
    lease: {session_idle_seconds: 3600, wait_seconds: 60}
    inputs:
      - path: inputs/a.csv
  slow:
    min_ready: 1
    buffer: 0
    max_total: 3
    container: {expires_after_minutes: 20}
    lease: {session_idle_seconds: 3600, wait_seconds: 60, session_save_every_seconds: 3600}
"""

KEY = "conversation-live-1"
PERIOD = 3.0  # this module's HEARTH_SESSION_SAVE_EVERY, s


@pytest.fixture
def pools_extra_env() -> dict[str, str]:
    return {"HEARTH_ORPHAN_GRACE": "600", "HEARTH_SESSION_SAVE_EVERY": str(PERIOD)}


@pytest.fixture
def runtime(pools_env: PoolEnv, hearth_runtime: Runtime) -> Runtime:
    pools_env.write_input("inputs/a.csv", b"x,y\n1,2\n")
    pools_env.write_pools(POOLS)
    return hearth_runtime


@pytest.fixture
def send(celery_app: Celery) -> Callable[[str, list[Any]], None]:
    return lambda name, args: celery_app.send_task(name, args=args)


@pytest.fixture
def filled(runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess],
           send: Callable[[str, list[Any]], None]) -> Runtime:
    """A worker running; pool ``alpha`` holds two READY containers and ``slow`` one."""
    start_worker(pools_env.env, concurrency=3)
    until(lambda: len(runtime.store.records("alpha", State.READY)) >= 2
          and len(runtime.store.records("slow", State.READY)) >= 1,
          step=lambda: tick(runtime, send), timeout=90.0, what="pools filled")
    return runtime


def manifest_of(rec: SessionRecord) -> tuple[StorageTarget, Manifest | None]:
    here = rec.history[-1]
    target = StorageTarget.from_url(here.target)
    raw = target.read_bytes(MANIFEST_KEY)
    return target, None if raw is None else Manifest.from_json(raw, container_id=here.container_id)


def stored(sessions: Sessions, key: str, file_id: str) -> bytes | None:
    """The bytes storage holds for one container file of the session's current container, if any."""
    rec = sessions.get(key)
    assert rec is not None
    target, manifest = manifest_of(rec)
    entry = manifest.files.get(file_id) if manifest is not None else None
    if entry is None:
        return None
    with target.open_read(entry.storage_key) as fh:
        return fh.read()


def test_a_file_the_code_writes_reaches_storage_with_no_further_lease_and_comes_back_after_a_loss(
    filled: Runtime, send: Callable[[str, list[Any]], None], local_api: LocalAPI,
) -> None:
    sessions = Sessions(filled, send)
    client = sdk(local_api)
    got = sessions.lease("alpha", KEY)
    live = LiveSaves(filled)
    due = live.due_at(got.session_id)
    assert due is not None and due <= filled.clock.now() + PERIOD  # on the schedule from the first lease

    chart = os.urandom(120_000)
    written = local_api.write_assistant_file(got.container_id, "/mnt/data/chart.png", chart)
    # No lease, no app call: only the heartbeat's ticks (and the worker's live save) run from here.
    until(lambda: stored(sessions, KEY, written["id"]) == chart, step=lambda: tick(filled, send),
          timeout=60.0, what="chart.png in storage via the live save")

    # The backend loses the container while the conversation is open.
    client.containers.delete(got.container_id)
    until(lambda: (r := filled.store.by_container_id(got.container_id)) is None or r.state is not State.LEASED,
          step=lambda: tick(filled, send), timeout=60.0, what="the live save noticing the loss")
    assert live.due_at(got.session_id) is None  # off the schedule until a lease binds a new container

    back = sessions.lease("alpha", KEY)  # the next turn, default verify: a fresh container, restored
    assert back.container_id != got.container_id and back.restored and back.restored_files == ["chart.png"]
    files = {restore_name(f.path): f.id for f in client.containers.files.list(back.container_id)}
    assert client.containers.files.content.retrieve(files["chart.png"], container_id=back.container_id).read() == chart
    assert live.due_at(back.session_id) is not None  # the new container is saved live too


def test_after_response_saves_the_cited_file_at_once_and_refuses_another_container(
    filled: Runtime, send: Callable[[str, list[Any]], None], local_api: LocalAPI, celery_app: Celery,
) -> None:
    sessions = Sessions(filled, send)
    got = sessions.lease("slow", KEY)  # pool `slow` saves live only every 3600 s
    live = LiveSaves(filled)
    due = live.due_at(got.session_id)
    assert due is not None and due >= filled.clock.now() + 3000

    other = sessions.lease("alpha", "another-conversation")
    foreign = local_api.write_assistant_file(other.container_id, "/mnt/data/secret.txt", b"not yours\n")
    primes = b"p\n2\n3\n5\n7\n"
    cited = local_api.write_assistant_file(got.container_id, "/mnt/data/primes.csv", primes)
    extra = local_api.write_assistant_file(got.container_id, "/mnt/data/notes/uncited.txt", b"also new\n")
    response = sdk_response(got.container_id, [(got.container_id, cited["id"], "primes.csv"),
                                               (other.container_id, foreign["id"], "secret.txt")])

    done = sessions.after_response(KEY, response)
    assert done.found and done.container_id == got.container_id and done.failures == 0
    assert [(c["file_id"], c["status"]) for c in done.cited] == [(cited["id"], "saved")]
    assert {s["file_id"] for s in done.saved} == {cited["id"], extra["id"]}  # everything new, cited or not
    assert [(r["container_id"], r["file_id"]) for r in done.refused] == [(other.container_id, foreign["id"])]
    assert "refused" in done.message and done.complete  # the session's own files are all saved
    assert stored(sessions, KEY, cited["id"]) == primes
    assert stored(sessions, KEY, foreign["id"]) is None  # nothing of the other container came in
    assert live.due_at(got.session_id) == due  # it came before the period, not from the live save

    # Again, by task name with the response as JSON: already saved, nothing copied twice.
    again = celery_app.send_task("hearth.session_save", kwargs={
        "session": KEY, "response": response.model_dump(mode="json")}).get(timeout=60)
    assert [(c["file_id"], c["status"]) for c in again["cited"]] == [(cited["id"], "already")]
    assert again["saved"] == [] and KEY not in json.dumps(again)

    # No annotations; an unknown key; an ended session: answers, not errors.
    plain = sessions.after_response(KEY, sdk_response(got.container_id, []))
    assert plain.found and plain.cited == [] and "cites no container file" in plain.message
    unknown = sessions.after_response("never-leased", response)
    assert not unknown.found and len(unknown.refused) == 2 and "unknown session" in unknown.message
    sessions.end_session("another-conversation")
    ended = sessions.after_response("another-conversation", None)
    assert ended.found and ended.container_id is None and "ended" in ended.message


def test_cli_session_save_prints_what_was_saved(
    filled: Runtime, send: Callable[[str, list[Any]], None], local_api: LocalAPI, tmp_path: Any,
) -> None:
    from worker.cli import _load, app

    sessions = Sessions(filled, send)
    got = sessions.lease("slow", KEY)
    cited = local_api.write_assistant_file(got.container_id, "/mnt/data/plot.svg", b"<svg/>")
    path = tmp_path / "response.json"
    path.write_text(json.dumps(sdk_response(got.container_id, [(got.container_id, cited["id"], "plot.svg")])
                               .model_dump(mode="json")))
    _load()
    result = CliRunner().invoke(app, ["session", "save", KEY, "--response", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["session_id"] == session_hash(KEY) and data["complete"]
    assert [(c["file_id"], c["status"]) for c in data["cited"]] == [(cited["id"], "saved")]
    unknown = CliRunner().invoke(app, ["session", "save", "nobody-here"])
    assert unknown.exit_code == 0 and "unknown session" in unknown.stdout


def test_a_refresh_never_waits_behind_queued_live_saves(
    runtime: Runtime, pools_env: PoolEnv, start_worker: Callable[..., WorkerProcess], celery_app: Celery,
) -> None:
    for i in range(300):  # a backlog of live saves (of sessions that no longer exist: each a no-op)
        celery_app.send_task(LIVE_SAVE_TASK, args=[f"{i:032x}", 0.0])
    refresh = celery_app.send_task("hearth.refresh", args=["hearth-alpha-none"])
    broker = broker_key_prefix(runtime.settings)  # the broker's queues live under the key prefix
    saves, keepalive = broker + SAVES_QUEUE, broker + KEEPALIVE_QUEUE
    assert runtime.redis.llen(saves) == 300 and runtime.redis.llen(keepalive) == 1
    start_worker(pools_env.env, concurrency=1)
    assert refresh.get(timeout=60)["detail"] == "nothing to do"
    # The worker takes from each queue in turn: the refresh ran long before the backlog was done.
    assert runtime.redis.llen(saves) > 100


def test_under_a_request_limit_the_period_stretches_with_one_warning_and_a_tick_claims_its_share(
    runtime: Runtime, caplog: pytest.LogCaptureFixture,
) -> None:
    rt = Runtime.from_settings(Settings(api_requests_per_minute=60), clock=runtime.clock)
    try:
        live = LiveSaves(rt)
        now = rt.clock.now()
        rt.redis.zadd(live.due_key, {f"{i:032x}": now - 1 for i in range(40)})
        assert live.period("alpha") == pytest.approx(40 * 60 / (60 * SAVE_SHARE))  # 80 s, not 3 s
        calls: list[tuple[str, list[Any]]] = []
        with caplog.at_level(logging.WARNING, logger="hearth.sessions.live"):
            first = live.enqueue_due(recording_enqueue(calls))
            second = live.enqueue_due(recording_enqueue(calls))
        per_tick = int(60 * SAVE_SHARE * rt.settings.heartbeat_interval / 60)  # 5 at a 10 s tick
        assert len(first) == len(second) == per_tick
        assert [name for name, _ in calls] == [SAVES_TASK, SAVES_TASK]  # one batch message per tick
        assert len({sid for _, args in calls for sid, _ in args[0]}) == 2 * per_tick  # claimed ones are not again
        assert len([r for r in caplog.records if "saves_stretched" in r.getMessage()]) == 1
    finally:
        rt.close()


def test_one_batch_task_saves_several_sessions_and_a_lost_batch_is_claimed_again(
    filled: Runtime, send: Callable[[str, list[Any]], None], local_api: LocalAPI, celery_app: Celery,
    hearth_clock: OffsetClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions = Sessions(filled, send)
    keys = ["batch-conversation-a", "batch-conversation-b", "batch-conversation-c"]
    leases = {key: sessions.lease("alpha" if i < 2 else "slow", key) for i, key in enumerate(keys)}
    # (A first lease sends no harvest, and nothing else saves here: only the batch below saves the files.)
    written = {key: local_api.write_assistant_file(got.container_id, f"/mnt/data/out-{i}.txt", f"{i}\n".encode())
               for i, (key, got) in enumerate(leases.items())}
    live = LiveSaves(filled)
    sids = {got.session_id for got in leases.values()}
    filled.redis.zadd(live.due_key, {sid: filled.clock.now() - 1 for sid in sids})  # all three due now

    # The heartbeat claims them into one message, which is lost (never sent): nothing is claimed twice...
    lost: list[tuple[str, list[Any]]] = []
    assert {a["session_id"] for a in live.enqueue_due(recording_enqueue(lost))} == sids
    assert [name for name, _ in lost] == [SAVES_TASK] and {sid for sid, _ in lost[0][1][0]} == sids
    assert live.enqueue_due(recording_enqueue(lost)) == [] and len(lost) == 1
    # ...until the claim ttl has passed: then the same sessions are claimed again, again in one message.
    hearth_clock.advance(MIN_CLAIM_TTL + 1)
    again: list[tuple[str, list[Any]]] = []
    live.enqueue_due(recording_enqueue(again))
    assert [name for name, _ in again] == [SAVES_TASK] and {sid for sid, _ in again[0][1][0]} == sids
    claimed = {sid: due for sid, due in again[0][1][0]}
    period = {got.session_id: PERIOD if i < 2 else 3600.0 for i, got in enumerate(leases.values())}

    seen = count_requests(local_api, monkeypatch)
    result = celery_app.send_task(SAVES_TASK, args=again[0][1]).get(timeout=60)  # one task run, on the worker
    assert result["sessions"] == 3 and result["active"] == 3 and result["saved"] == 3 and result["failures"] == 0
    assert {n["session_id"] for n in result["notes"]} == sids and not any(k in json.dumps(result) for k in keys)
    for key in keys:
        assert stored(sessions, key, written[key]["id"]) == f"{keys.index(key)}\n".encode()
    for sid in sids:  # back on the schedule (no longer the claim's ttl): a period after it was due, or after now
        due = live.due_at(sid)
        assert due is not None
        assert claimed[sid] + period[sid] - 1e-3 <= due <= max(claimed[sid], time.time()) + period[sid] + 1e-3
    assert seen["files.content"] == 3  # each new file copied once

    # A duplicate of the batch (a re-claim while it was still queued) makes no request at all.
    before = sum(seen.values())
    dup = celery_app.send_task(SAVES_TASK, args=again[0][1]).get(timeout=60)
    assert dup["sessions"] == 3 and dup["saved"] == 0 and sum(seen.values()) == before
    assert all("duplicate" in n["detail"] for n in dup["notes"])

    # Once the guard is gone (as half a period later), the batch costs one listing per session, no more.
    filled.redis.delete(*(sessions.records.key(sid, "listed") for sid in sids))
    seen.clear()
    quiet = celery_app.send_task(SAVES_TASK, args=again[0][1]).get(timeout=60)
    assert quiet == {"sessions": 3, "active": 3, "new": 0, "saved": 0, "failures": 0, "notes": []}
    assert dict(seen) == {"files.list": 3}


def test_the_heartbeat_claims_due_saves_in_its_own_frequent_job_and_its_tick_leaves_them(
    runtime: Runtime, celery_app: Celery,
) -> None:
    from hearth.planner import tick
    from worker.heartbeat import SAVE_CLAIM_SECONDS, Heartbeat

    live = LiveSaves(runtime)
    sid = "ab" * 16
    runtime.redis.zadd(live.due_key, {sid: runtime.clock.now() - 1})
    beat = Heartbeat(runtime, celery_app, identity="hb-saves")
    calls: list[tuple[str, list[Any]]] = []
    beat.enqueue = recording_enqueue(calls)  # type: ignore[method-assign]
    try:
        beat.claim_saves()  # not the leader yet: claims nothing
        assert calls == [] and runtime.redis.zscore(live.due_key, sid) is not None
        # The leader's tick no longer claims saves (the job does, every SAVE_CLAIM_SECONDS, so a save
        # is at most that late, not a whole tick interval)...
        assert beat.leader.ensure()
        tick(runtime, recording_enqueue(calls), session_saves=False)
        assert SAVES_TASK not in [name for name, _ in calls]
        # ...and the claim job does: one batch message with the due session.
        beat.claim_saves()
        batches = [args for name, args in calls if name == SAVES_TASK]
        assert [[s for s, _ in batch[0]] for batch in batches] == [[sid]]
        assert runtime.settings.heartbeat_interval > SAVE_CLAIM_SECONDS
    finally:
        beat.stop()
