"""Fault injection for the local Containers API, as ASGI middleware in front of the routes.

Why: Hearth's retry, backoff, ``Retry-After`` and idempotency logic has to be shown working against
failures a real server produces on cue, over a real socket. Configured by ``settings.faults.FaultConfig``
(``HEARTH_FAULTS`` JSON, or ``PUT /_dev/faults`` at run time); off by default.

Endpoint names (keys of ``FaultConfig.endpoints``), for ``/v1``, ``/openai/v1`` and ``/openai`` alike:

=====================  ==================================================
containers.create      ``POST /containers``
containers.list        ``GET /containers``
containers.retrieve    ``GET /containers/{id}``
containers.delete      ``DELETE /containers/{id}``
files.create           ``POST /containers/{id}/files`` (container files)
files.list             ``GET /containers/{id}/files``
files.retrieve         ``GET /containers/{id}/files/{file_id}``
files.delete           ``DELETE /containers/{id}/files/{file_id}``
files.content          ``GET /containers/{id}/files/{file_id}/content``
uploads.create         ``POST /files`` (the Files API)
uploads.list           ``GET /files``
uploads.retrieve       ``GET /files/{file_id}``
uploads.delete         ``DELETE /files/{file_id}``
uploads.content        ``GET /files/{file_id}/content``
=====================  ==================================================

``drop_create_fields`` makes the server behave like a gateway that does not forward some create fields:
they are removed from the body of ``containers.create`` before the route sees it, so the container is
made with the API's defaults (and its answer shows them).

Per request, in this order: latency (``latency_ms`` + uniform ``0..jitter_ms``); a dropped connection
(``drop_rate``; before the request takes effect, or after it did and before the answer's body when
``drop_after_processing``); a 429 with ``Retry-After: retry_after_seconds`` (omitted when 0); a 500 or
503. Determinism: with a ``seed``, each endpoint draws from its own RNG seeded by ``(seed, name)``, and
every request draws the same number of values, so the n-th request to an endpoint always meets the
same fate whatever the traffic to other endpoints. Routes under ``/_dev`` are never faulted.

A drop is made by starting the response and then raising: uvicorn closes the transport, and the
client sees a connection error with no body (as when a proxy or a server dies mid-request).
"""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.localapi.devswitches import RequestCounter
from hearth.localapi.wire import Dialect, error_body
from settings.faults import ENDPOINT_NAMES as ENDPOINT_NAMES  # re-exported: the names live in settings
from settings.faults import FaultConfig

PREFIXES = ("/v1", "/openai/v1", "/openai")

_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), name)
    for method, pattern, name in (
        ("POST", r"^/containers/?$", "containers.create"),
        ("GET", r"^/containers/?$", "containers.list"),
        ("GET", r"^/containers/[^/]+/?$", "containers.retrieve"),
        ("DELETE", r"^/containers/[^/]+/?$", "containers.delete"),
        ("POST", r"^/containers/[^/]+/files/?$", "files.create"),
        ("GET", r"^/containers/[^/]+/files/?$", "files.list"),
        ("GET", r"^/containers/[^/]+/files/[^/]+/?$", "files.retrieve"),
        ("DELETE", r"^/containers/[^/]+/files/[^/]+/?$", "files.delete"),
        ("GET", r"^/containers/[^/]+/files/[^/]+/content/?$", "files.content"),
        ("POST", r"^/files/?$", "uploads.create"),
        ("GET", r"^/files/?$", "uploads.list"),
        ("GET", r"^/files/[^/]+/?$", "uploads.retrieve"),
        ("DELETE", r"^/files/[^/]+/?$", "uploads.delete"),
        ("GET", r"^/files/[^/]+/content/?$", "uploads.content"),
    )
)

log = logging.getLogger(__name__)


def split_prefix(path: str) -> tuple[str, str] | None:
    """``/openai/v1/containers`` -> (``/openai/v1``, ``/containers``); None when no API prefix matches."""
    for prefix in PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return prefix, path[len(prefix):] or "/"
    return None


def endpoint_name(method: str, path: str) -> str | None:
    """The fault-config name of an API request, or None (dev routes, unknown paths)."""
    split = split_prefix(path)
    if split is None:
        return None
    rest = split[1]
    for route_method, pattern, name in _ROUTES:
        if route_method == method and pattern.match(rest):
            return name
    return None


class DroppedConnection(Exception):
    """Raised after the response started, so that uvicorn closes the connection (an injected drop)."""


Action = Literal["pass", "error", "rate_limit", "drop_before", "drop_after"]


@dataclass(frozen=True)
class Decision:
    delay: float
    action: Action
    status: int = 200
    retry_after: int = 0


class FaultInjector:
    """Decides each request's fate from a ``FaultConfig``; thread-safe, replaceable at run time."""

    def __init__(self, config: FaultConfig | None = None, *, entropy: Callable[[], int] | None = None) -> None:
        self._entropy = entropy or (lambda: secrets.randbits(64))
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._rngs: dict[str, random.Random] = {}
        self._base_seed = 0
        self.configure(config)

    @property
    def config(self) -> FaultConfig:
        with self._lock:
            return self._config

    @property
    def active(self) -> bool:
        return self.config.active

    def configure(self, config: FaultConfig | None) -> None:
        """Replace the configuration and restart every RNG (same seed again = same faults again)."""
        with self._lock:
            self._config = config or FaultConfig()
            self._base_seed = self._config.seed if self._config.seed is not None else self._entropy()
            self._rngs = {}

    def decide(self, name: str) -> Decision:
        with self._lock:
            faults = self._config.for_endpoint(name)
            rng = self._rngs.get(name)
            if rng is None:
                rng = self._rngs[name] = random.Random(f"{self._base_seed}:{name}")
            # Always the same five draws, so one endpoint's sequence never depends on its config's shape.
            u_jitter, u_drop, u_429, u_err, u_code = (rng.random() for _ in range(5))
        delay = (faults.latency_ms + u_jitter * faults.jitter_ms) / 1000.0
        if u_drop < faults.drop_rate:
            return Decision(delay, "drop_after" if faults.drop_after_processing else "drop_before")
        if u_429 < faults.rate_limit_rate:
            return Decision(delay, "rate_limit", 429, faults.retry_after_seconds)
        if u_err < faults.error_rate:
            return Decision(delay, "error", 500 if u_code < 0.5 else 503)
        return Decision(delay, "pass")


_MESSAGES = {
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}


class FaultMiddleware:
    """ASGI middleware applying a ``FaultInjector`` to every named API endpoint."""

    def __init__(self, app: ASGIApp, injector: FaultInjector, counter: RequestCounter | None = None) -> None:
        self.app = app
        self.injector = injector
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = endpoint_name(scope["method"], scope["path"])
        if name is not None and self.counter is not None:
            self.counter.add(name)  # every API request that reached the server, faulted or not
        if name is None or not self.injector.active:
            await self.app(scope, receive, send)
            return
        config = self.injector.config
        if name == "containers.create" and config.drop_create_fields:
            scope, receive = await _without_fields(scope, receive, config.drop_create_fields)
        decision = self.injector.decide(name)
        if decision.delay > 0:
            await anyio.sleep(decision.delay)
        if decision.action == "drop_before":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]})
            raise DroppedConnection(f"injected drop before {name}")
        if decision.action in ("rate_limit", "error"):
            await self._answer(scope, send, decision)
            return
        if decision.action == "drop_after":

            async def dropping_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    await send(message)
                    raise DroppedConnection(f"injected drop after {name}")
                await send(message)

            await self.app(scope, receive, dropping_send)
            return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send, decision: Decision) -> None:
        message, type_, code = _MESSAGES[decision.status]
        split = split_prefix(scope["path"])
        dialect = Dialect(gateway=split is not None and split[0].startswith("/openai"))
        payload = json.dumps(error_body(decision.status, message, type_=type_, code=code, dialect=dialect)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if decision.status == 429 and decision.retry_after > 0:
            headers.append((b"retry-after", str(decision.retry_after).encode()))
        await send({"type": "http.response.start", "status": decision.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def _without_fields(scope: Scope, receive: Receive, fields: list[str]) -> tuple[Scope, Receive]:
    """The request with ``fields`` removed from its JSON body (a body that is not a JSON object is left
    as it is: the route answers it as usual)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        body = json.dumps({k: v for k, v in data.items() if k not in fields}).encode()
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # after the body: disconnects and the like, from the real client
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return {**scope, "headers": headers}, replay


class DropLogFilter(logging.Filter):
    """Keeps injected drops out of uvicorn's error log: they are the point, not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)
