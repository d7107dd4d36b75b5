"""Two turns of a conversation on one session key: the Responses API pattern, with ``Sessions.after_response``.

Turn 1 leases the session's container and asks the model to write ``/mnt/data/primes.csv``; right
after the response, ``sessions.after_response(KEY, response)`` saves the file the response cites (and
anything else new in the container) to storage, without waiting for the live save's next period.
Then the container is lost: this script deletes it, standing in for a container the backend
expires or kills mid-conversation. Turn 2 leases the same key: a fresh container, ``primes.csv``
restored into it byte for byte, and the model reads it back.

Needs a running Hearth (``hearth up``; or Redis, ``hearth worker`` and the heartbeat) and a pool
named ``HEARTH_EXAMPLE_POOL`` (default ``analysts``, from ``examples/pools.yaml``).

* ``HEARTH_EXAMPLE_OPENAI=1`` (with ``HEARTH_BACKEND=openai`` and ``OPENAI_API_KEY``): the responses
  come from the real Responses API (``HEARTH_EXAMPLE_MODEL``, default ``gpt-4.1``), whose code
  interpreter runs in the session's container.
* Otherwise (the default, against the local API: ``hearth up`` with no key, or ``hearth api
  --dev``): the local API has no Responses endpoint, so ``LocalModel`` does what the model's code
  would (writes the file as the code interpreter does: an upload with ``X-Hearth-File-Source:
  assistant``) and builds the response with the ``openai`` SDK's own types, citing the file as the
  real API does.

Run: ``.venv/bin/python examples/two_turn_sessions.py``. Prints one JSON line per step; exits 1 if
the second turn did not find the first turn's file.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Protocol

import httpx
from openai import OpenAI
from openai.types.responses import (
    Response,
    ResponseCodeInterpreterToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_output_text import AnnotationContainerFileCitation

from hearth.sessions import Sessions
from tasks.pools import HearthPools

KEY = "example-conversation-1"
FIRST = "Make a CSV of the first 20 primes, one per line under a header `p`, and save it as /mnt/data/primes.csv."
SECOND = "Read primes.csv from /mnt/data and tell me the sum of the primes in it."


class Model(Protocol):
    def respond(self, container_id: str, prompt: str) -> Any: ...


class OpenAIModel:
    """The real thing: the Responses API with the code interpreter in the session's container."""

    def __init__(self, client: OpenAI, model: str) -> None:
        self.client, self.model = client, model

    def respond(self, container_id: str, prompt: str) -> Any:
        return self.client.responses.create(
            model=self.model,
            tools=[{"type": "code_interpreter", "container": container_id}],
            input=prompt,
        )


class LocalModel:
    """A stand-in for the model against the local API: what its code would do, and the response it would give."""

    def __init__(self, client: OpenAI, api_base: str, api_key: str | None) -> None:
        self.client = client
        self.http = httpx.Client(base_url=api_base, timeout=60,
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})

    def respond(self, container_id: str, prompt: str) -> Response:
        if prompt == FIRST:
            primes = [p for p in range(2, 80) if all(p % d for d in range(2, p))][:20]
            data = ("p\n" + "".join(f"{p}\n" for p in primes)).encode()
            # What the code interpreter's `open("/mnt/data/primes.csv", "w")` leaves in the container.
            r = self.http.post(f"/containers/{container_id}/files", files={"file": ("primes.csv", data)},
                               headers={"X-Hearth-File-Source": "assistant",
                                        "X-Hearth-File-Path": "/mnt/data/primes.csv"})
            r.raise_for_status()
            return response(container_id, "Saved the first 20 primes as primes.csv.",
                            [(r.json()["id"], "primes.csv")])
        # The code reads primes.csv (a restored file is an upload named /mnt/data/<hash>-primes.csv).
        found = [f for f in self.client.containers.files.list(container_id) if f.path.endswith("primes.csv")]
        if not found:
            return response(container_id, "There is no primes.csv in /mnt/data.", [])
        text = self.client.containers.files.content.retrieve(found[0].id, container_id=container_id).read()
        total = sum(int(line) for line in text.decode().splitlines()[1:] if line.strip())
        return response(container_id, f"The sum of the primes in primes.csv is {total}.", [])


def response(container_id: str, text: str, cited: list[tuple[str, str]]) -> Response:
    """A Responses API answer as the SDK types it: one code-interpreter call and a message citing files."""
    notes = [AnnotationContainerFileCitation(type="container_file_citation", container_id=container_id,
                                             file_id=file_id, filename=name, start_index=0, end_index=len(text))
             for file_id, name in cited]
    return Response(
        id="resp_local", created_at=0.0, model="local", object="response", parallel_tool_calls=True,
        tool_choice="auto", tools=[],
        output=[
            ResponseCodeInterpreterToolCall(id="ci_local", type="code_interpreter_call", code="...",
                                            container_id=container_id, status="completed", outputs=[]),
            ResponseOutputMessage(id="msg_local", type="message", role="assistant", status="completed",
                                  content=[ResponseOutputText(type="output_text", text=text, annotations=notes)]),
        ],
    )


def say(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def conversation(sessions: Sessions, model: Model, client: OpenAI, pool: str) -> bool:
    """The two turns; True when the second one read the first one's file back."""
    got = sessions.lease(pool, session=KEY)  # at every turn: the session's container id
    first = model.respond(got.container_id, FIRST)
    saved = sessions.after_response(KEY, first)  # the cited file (and anything new) to storage, now
    say("turn 1", container_id=got.container_id, answer=first.output_text, complete=saved.complete,
        saved=[s["path"] for s in saved.saved], cited=[(c["filename"], c["status"]) for c in saved.cited])

    client.containers.delete(got.container_id)  # the container is lost between the turns
    say("container lost", container_id=got.container_id)

    again = sessions.lease(pool, session=KEY, verify=True)  # a fresh container, primes.csv restored
    second = model.respond(again.container_id, SECOND)
    sessions.after_response(KEY, second)
    say("turn 2", container_id=again.container_id, restored=again.restored, restored_files=again.restored_files,
        answer=second.output_text)
    ended = sessions.end_session(KEY)
    say("ended", harvested_files=ended.harvested_files, retiring=ended.retiring)
    return again.restored and "primes.csv" in again.restored_files


def main() -> int:
    with HearthPools.from_settings() as pools:
        settings = pools.rt.settings
        sessions = Sessions(pools.rt, lambda name, args: pools.celery.send_task(name, args=args))
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        client = OpenAI(base_url=settings.resolved_api_base, api_key=key or "unused")
        model: Model
        if os.environ.get("HEARTH_EXAMPLE_OPENAI") == "1":
            model = OpenAIModel(client, os.environ.get("HEARTH_EXAMPLE_MODEL", "gpt-4.1"))
        else:
            model = LocalModel(client, settings.resolved_api_base, key)
        ok = conversation(sessions, model, client, os.environ.get("HEARTH_EXAMPLE_POOL", "analysts"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
