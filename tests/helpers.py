"""Small helpers the integration and end-to-end tests share (no fixtures here: see tests/fixtures/pools.py).

``until`` polls a condition (optionally stepping the system, e.g. one heartbeat tick, each round);
``sdk`` is the official ``openai`` client pointed at a local API, the independent view of what exists
on the server; ``RecordingClock`` is a ManualClock that keeps every sleep asked of it, so a test checks
the pace a client chose, never wall time; ``celery_enqueue`` and ``inline_enqueue`` are the two ways a
test hands an Applier's actions to workers: a real Celery worker, or the test's own Runtime (deterministic, same clock).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import openai
import pytest
from celery import Celery

from hearth.clock import ManualClock, OffsetClock
from hearth.localapi.faults import Decision, FaultInjector
from hearth.operations import Operations
from hearth.planner import Enqueue
from hearth.runtime import Runtime
from tests.fixtures.localapi import LocalAPI


class RecordingClock(ManualClock):
    """A ManualClock that records each sleep (the test reads ``sleeps``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)


def until(predicate: Callable[[], Any], *, timeout: float = 60.0, step: Callable[[], object] | None = None,
          what: str = "condition", pause: float = 0.3) -> Any:
    """Poll ``predicate`` (after ``step``, if given) until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f} s")
        time.sleep(pause)


def sdk(local_api: LocalAPI) -> openai.OpenAI:
    """The official SDK against the local API (no retries: a test wants to see every answer)."""
    return openai.OpenAI(base_url=local_api.base_url, api_key=local_api.api_key or "unused", max_retries=0)


def remote_names(client: openai.OpenAI, prefix: str) -> dict[str, str]:
    """Container id -> name of every container on the server whose name starts with ``prefix``."""
    return {c.id: c.name for c in client.containers.list(limit=100) if c.name.startswith(prefix)}


def count_requests(local_api: LocalAPI, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Requests per endpoint name (``containers.create``, …) that reached the in-process local API.

    Counted by its fault injector, which is made to look at every request even with no fault set
    (its decisions are unchanged: with no fault configured, every request passes).
    """
    seen: Counter[str] = Counter()
    injector = local_api.server.injector
    decide = injector.decide

    def counting(name: str) -> Decision:
        seen[name] += 1
        return decide(name)

    monkeypatch.setattr(injector, "decide", counting)
    monkeypatch.setattr(FaultInjector, "active", property(lambda self: True))
    return seen


def advance_both(local_api: LocalAPI, clock: OffsetClock, seconds: float) -> None:
    """Move the server's clock and Hearth's together, so both see the same "later"."""
    local_api.advance_clock(seconds)
    clock.advance(seconds)


def celery_enqueue(app: Celery) -> Enqueue:
    """Hand actions to real worker processes, by task name."""
    def send(name: str, args: list[Any]) -> None:
        app.send_task(name, args=args)

    return send


def inline_enqueue(rt: Runtime, calls: list[tuple[str, list[Any]]] | None = None) -> Enqueue:
    """Run each action's operation right away in this process, on ``rt`` (and its clock).

    Deterministic: when ``apply`` returns, the work is done. ``calls`` (if given) records every
    enqueue. Temporary errors are swallowed, as a worker would retry them later (the next tick sees
    where the record stands).
    """
    from hearth.errors import HearthError
    from hearth.sessions import LiveSaves

    def run(name: str, args: list[Any]) -> None:
        if calls is not None:
            calls.append((name, list(args)))
        ops = Operations(rt)
        table: dict[str, Callable[..., object]] = {
            "hearth.provision": ops.provision,
            "hearth.refresh": ops.refresh,
            "hearth.retire": ops.retire,
            "hearth.adopt": ops.adopt,
            "hearth.delete_orphan": ops.delete_orphan,
            "hearth.harvest": ops.harvest,
            # A live session save runs now, whatever its delay: inline work is done when apply returns.
            "hearth.session_live_save": lambda sid, delay=0.0: LiveSaves(rt).save(sid),
            "hearth.session_saves": lambda items: LiveSaves(rt).save_batch([(sid, due) for sid, due in items]),
        }
        fn = table[name]
        try:
            fn(*args)
        except HearthError as exc:
            if not exc.temporary:
                raise

    return run


def recording_enqueue(calls: list[tuple[str, list[Any]]]) -> Enqueue:
    """Only record what would be enqueued (nothing runs)."""
    return lambda name, args: calls.append((name, list(args)))


def sdk_response(container_id: str, cited: list[tuple[str, str, str]], *, text: str = "Here it is.") -> Any:
    """A Responses API answer built from the official SDK's own types: one code-interpreter call in
    ``container_id`` and a message whose text cites ``cited`` files as (container_id, file_id, filename)."""
    from openai.types.responses import (
        Response,
        ResponseCodeInterpreterToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )
    from openai.types.responses.response_output_text import AnnotationContainerFileCitation

    notes = [AnnotationContainerFileCitation(type="container_file_citation", container_id=cid, file_id=fid,
                                             filename=name, start_index=0, end_index=len(text))
             for cid, fid, name in cited]
    return Response(
        id="resp_test", created_at=0.0, model="gpt-4.1", object="response", parallel_tool_calls=True,
        tool_choice="auto", tools=[],
        output=[
            ResponseCodeInterpreterToolCall(id="ci_test", type="code_interpreter_call", code="...",
                                            container_id=container_id, status="completed", outputs=[]),
            ResponseOutputMessage(id="msg_test", type="message", role="assistant", status="completed",
                                  content=[ResponseOutputText(type="output_text", text=text, annotations=notes)]),
        ],
    )
