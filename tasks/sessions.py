"""Celery tasks for sessions, so apps that only speak Celery get sticky leases by name.

``hearth.session_lease`` (pool, session key) returns the session lease as JSON; the key travels in
the task message (the app chose to send it), but the task result and every log line carry only its
hash. ``hearth.session_end`` and ``hearth.session_save`` (after a model response) take the key or its
hash (``session_id``); ``hearth.session_harvest``, which Hearth itself sends on every lease, and
``hearth.session_saves``, which the heartbeat sends for each batch of sessions due for their live
save (and ``hearth.session_live_save``, one session), take only hashes, so Hearth's own messages
never hold a key.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from hearth.errors import HearthError
from hearth.sessions import LIVE_SAVE_TASK, SAVES_TASK, LiveSaves, Sessions, session_hash
from tasks.ops import COMMON, enqueue, run
from tasks.runtime import current_runtime


def sessions() -> Sessions:
    return Sessions(current_runtime(), enqueue)


@shared_task(name="hearth.session_lease", bind=True)
def session_lease(self: Task, pool: str, session: str, verify: bool | None = None,
                  wait: float | None = None) -> dict[str, Any]:
    """The session's container (same while it lives; a fresh one with its files restored if not)."""
    return sessions().lease(pool, session, verify=verify, wait=wait).to_json()


@shared_task(name="hearth.session_end", **COMMON)
def session_end(self: Task, session: str | None = None, harvest: bool = True, forget: bool = False,
                session_id: str | None = None) -> dict[str, Any]:
    """End a session (by key, or by ``session_id``, its hash): harvest a last time, release, retire."""
    if session_id is None:
        if not session:
            raise HearthError("hearth.session_end needs a session key or a session_id")
        session_id = session_hash(session)
    sid = session_id
    return run(self, lambda: sessions().end(sid, harvest=harvest, forget=forget).to_json())


@shared_task(name="hearth.session_harvest", **COMMON)
def session_harvest(self: Task, session_id: str) -> dict[str, Any]:
    """Save the session container's files (outputs and uploads) to its harvest target."""

    def go() -> dict[str, Any]:
        report = sessions().harvest(session_id)
        if report is None:
            return {"session_id": session_id, "harvested": False}
        if not report.complete and not report.expired:
            raise HearthError(f"session harvest of {report.container_id}: {report.failures} failed", temporary=True)
        return {"session_id": session_id, "harvested": True, **report.summary()}

    return run(self, go)


@shared_task(name="hearth.session_save", **COMMON)
def session_save(self: Task, session: str | None = None, response: dict[str, Any] | None = None,
                 session_id: str | None = None) -> dict[str, Any]:
    """After a model response: save the files it cites and everything new (by key or ``session_id``).

    ``response`` is the Responses API response as JSON (``response.model_dump(mode="json")``). An
    unknown session or a refused citation is an answer in the result; a save with failures is retried.
    """
    if session_id is None:
        if not session:
            raise HearthError("hearth.session_save needs a session key or a session_id")
        session_id = session_hash(session)
    sid = session_id

    def go() -> dict[str, Any]:
        done = sessions().save_after(sid, response)
        if done.failures:
            raise HearthError(f"session save of {done.container_id}: {done.failures} failed", temporary=True)
        return done.to_json()

    return run(self, go)


@shared_task(name=LIVE_SAVE_TASK, **COMMON)
def session_live_save(self: Task, session_id: str, delay: float = 0.0) -> dict[str, Any]:
    """The live save of one active session, now (the heartbeat sends ``hearth.session_saves`` batches).

    A positive ``delay`` (messages from a heartbeat before batches) sends the task again with that
    countdown, so a message queued before an upgrade still runs when it is due."""
    if delay > 0:
        self.apply_async(args=[session_id, 0.0], countdown=delay)
        return {"session_id": session_id, "deferred": delay}
    return run(self, lambda: LiveSaves(current_runtime()).save(session_id).to_json())


@shared_task(name=SAVES_TASK, **COMMON)
def session_saves(self: Task, sessions: list[Any]) -> dict[str, Any]:
    """The live saves of a batch of sessions due now: ``[[session_id, due], ...]`` (or bare ids).

    One task run for up to ``hearth.sessions.live.BATCH`` sessions: their records and leases read in
    pipelines, one listing each, every reschedule in one pipeline. The result counts what they did
    and lists only the sessions with something to say (files saved or failed, off the schedule, a
    note), so a quiet batch leaves a small result behind."""
    items = [_item(s) for s in sessions]

    def go() -> dict[str, Any]:
        done = LiveSaves(current_runtime()).save_batch(items)
        return {"sessions": len(done), "active": sum(s.active for s in done), "new": sum(s.new for s in done),
                "saved": sum(s.saved for s in done), "failures": sum(s.failures for s in done),
                "notes": [s.to_json() for s in done if s.saved or s.failures or s.detail or not s.active]}

    return run(self, go)


def _item(raw: Any) -> tuple[str, float | None]:
    if isinstance(raw, str):
        return raw, None
    if isinstance(raw, list | tuple) and len(raw) == 2 and isinstance(raw[0], str):
        return raw[0], None if raw[1] is None else float(raw[1])
    raise HearthError(f"hearth.session_saves: each session is an id or [id, due], not {type(raw).__name__}")
