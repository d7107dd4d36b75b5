"""Celery tasks for sessions, so apps that only speak Celery get sticky leases by name.

``hearth.session_lease`` (pool, session key) returns the session lease as JSON; the key travels in
the task message (the app chose to send it), but the task result and every log line carry only its
hash. ``hearth.session_end`` and ``hearth.session_save`` (after a model response) take the key or its
hash (``session_id``); ``hearth.session_harvest``, which Hearth itself sends on every lease, and
``hearth.session_live_save``, which the heartbeat sends every period, take only the hash, so
Hearth's own messages never hold a key.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from hearth.errors import HearthError
from hearth.sessions import LIVE_SAVE_TASK, LiveSaves, Sessions, session_hash
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
    """The live save of an active session (the heartbeat sends it, ``delay`` s before it is due).

    A positive ``delay`` sends the task again with that countdown, so the save runs when it is due
    even though ticks are seconds apart; the delay is relative, so clocks of different hosts need
    not agree."""
    if delay > 0:
        self.apply_async(args=[session_id, 0.0], countdown=delay)
        return {"session_id": session_id, "deferred": delay}
    return run(self, lambda: LiveSaves(current_runtime()).save(session_id).to_json())
