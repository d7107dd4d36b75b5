"""The ASGI app of the local Containers API: routes, auth (keys are tenants), dialects, dev controls.

Served under ``/v1`` (OpenAI format) and ``/openai/v1`` + ``/openai`` (gateway format, see ``wire``).
Every answer that is not a success is the OpenAI error envelope; no input produces a 500. Blocking
work (SQLite, file copies, the writes of an upload) runs in threads; uploads and downloads stream.

Dev controls exist only with ``dev=True`` (404 otherwise): ``X-Hearth-File-Source: assistant`` and
``X-Hearth-File-Path: /mnt/data/...`` on a container file upload (stand-ins for a file the model's
code wrote: the path is stored verbatim, bytes are stored by id, so no path can escape the data dir),
``GET|POST /_dev/clock`` (``{"advance_seconds": N}``), ``GET|PUT /_dev/faults`` (a ``FaultConfig``),
``GET|PUT /_dev/switches`` and ``GET|DELETE /_dev/requests`` (``hearth.localapi.devswitches``).
With API keys configured the dev routes, like every other, answer 401 to a request without a valid key.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mimetypes
import os
import posixpath
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from hearth.api.models import (
    DEFAULT_EXPIRES_MINUTES,
    DEFAULT_MEMORY_LIMIT,
    FILE_PURPOSES,
    CreateContainerFileByIdRequest,
    CreateContainerRequest,
)
from hearth.clock import Clock
from hearth.errors import APIError, AuthError, BadRequest
from hearth.localapi import wire
from hearth.localapi.devswitches import DevSwitches, RequestCounter
from hearth.localapi.faults import DroppedConnection, FaultInjector, FaultMiddleware, split_prefix
from hearth.localapi.multipart import Upload, parse_multipart
from hearth.localapi.store import Store
from hearth.localapi.validation import from_validation_error, parse_choice, parse_int, parse_json_object
from settings.faults import FaultConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MAX_JSON_BYTES = 128 << 20  # an inline skill may carry ~70 MB of base64
MAX_FILES_API_BYTES = 512 << 20  # the Files API's documented per-file limit
MAX_EXPIRES_MINUTES = 2**31 - 1
CHUNK = 1 << 20
ORDERS = ("asc", "desc")
SOURCES = ("user", "assistant")
HEADER_SOURCE = "x-hearth-file-source"
HEADER_PATH = "x-hearth-file-path"
CLOCK_OFFSET_KEY = "clock_offset"

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    "auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're "
    "accessing the API from your browser and are prompted for a username. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)


def _mask(key: str) -> str:
    # Never echo a presented key whole: it may be a real secret of some other service.
    return ("*" * 4 + key[-4:]) if len(key) > 8 else "****"


def tenant_of(key: str) -> str:
    """A stable tenant id for an API key (a digest: the key itself is never stored)."""
    return hashlib.sha256(key.encode("utf-8", errors="replace")).hexdigest()[:32]


class Ctx:
    """Per-request context: whose objects (tenant) and which dialect to answer in."""

    def __init__(self, tenant: str, dialect: wire.Dialect) -> None:
        self.tenant = tenant
        self.dialect = dialect
        self.started = time.monotonic()

    def json(self, body: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse(body, status_code=status)


class LocalAPI:
    """Route handlers over one ``Store``. Build with :func:`create_app`."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock,
        api_keys: tuple[str, ...] = (),
        dev: bool = False,
        faults: FaultInjector | None = None,
        token_hex: Callable[[int], str] = secrets.token_hex,
        switches: DevSwitches | None = None,
        requests: RequestCounter | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.dev = dev
        self.faults = faults or FaultInjector()
        self.switches = switches or DevSwitches()
        self.requests = requests or RequestCounter()
        self._token_hex = token_hex
        # Compare digests, not keys: equal-time lookup, and no key kept in a dict for a repr to show.
        self._tenants = {tenant_of(k) for k in api_keys if k}

    # --- plumbing ---------------------------------------------------------------------------

    def _dialect(self, request: Request, request_type: str) -> wire.Dialect:
        split = split_prefix(request.url.path)
        gateway = split is not None and split[0].startswith("/openai")
        return wire.Dialect(gateway=gateway, request_type=request_type)

    def _tenant(self, request: Request) -> str:
        """The tenant of the request's key; "" when no keys are configured (one open tenant)."""
        if not self._tenants:
            return ""
        key = ""
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        key = key or request.headers.get("api-key", "").strip()
        if not key:
            raise AuthError(MISSING_KEY, status=401)
        tenant = tenant_of(key)
        if tenant not in self._tenants:
            raise AuthError(
                f"Incorrect API key provided: {_mask(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                status=401,
                code="invalid_api_key",
            )
        return tenant

    def _ctx(self, request: Request, request_type: str) -> Ctx:
        dialect = self._dialect(request, request_type)
        request.state.dialect = dialect
        tenant = self._tenant(request)
        if dialect.gateway:
            provider = request.query_params.get("provider")
            if provider is not None:
                dialect.provider = self._provider(provider)
        return Ctx(tenant, dialect)

    def _provider(self, value: object) -> str:
        if not isinstance(value, str) or value not in wire.GATEWAY_PROVIDERS:
            shown = value if isinstance(value, str) else str(value)
            raise BadRequest(
                f"Invalid value: '{shown[:100]}'. Supported values are: "
                + ", ".join(f"'{p}'" for p in wire.GATEWAY_PROVIDERS)
                + ".",
                status=400,
                param="provider",
            )
        return value

    def _answer(self, ctx: Ctx, body: dict[str, Any]) -> JSONResponse:
        ctx.dialect.latency_ms = int((time.monotonic() - ctx.started) * 1000)
        if ctx.dialect.gateway and "extra_fields" in body:
            body["extra_fields"] = ctx.dialect.extra_fields()
        return JSONResponse(body)

    async def _json(self, request: Request) -> dict[str, Any]:
        return parse_json_object(await self._body(request))

    @staticmethod
    async def _body(request: Request) -> bytes:
        size = 0
        chunks: list[bytes] = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_JSON_BYTES:
                raise BadRequest(f"Request body too large: the maximum is {MAX_JSON_BYTES} bytes.", status=400)
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _validate(model: type[M], body: dict[str, Any]) -> M:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise from_validation_error(exc) from None

    @staticmethod
    async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(fn, *args, **kwargs)

    def _page_args(self, request: Request, *, max_limit: int = 100, default_limit: int = 20) -> dict[str, Any]:
        q = request.query_params
        return {
            "limit": parse_int("limit", q.get("limit"), default=default_limit, low=1, high=max_limit),
            "order": parse_choice("order", q.get("order"), default="desc", choices=ORDERS),
            "after": q.get("after") or None,
        }

    def _stream(self, handle: BinaryIO, filename: str) -> StreamingResponse:
        size = os.fstat(handle.fileno()).st_size

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                chunk = await anyio.to_thread.run_sync(handle.read, CHUNK)
                if not chunk:
                    return
                yield chunk

        media_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return StreamingResponse(
            chunks(),
            media_type=media_type,
            headers={"content-length": str(size)},
            background=BackgroundTask(handle.close),
        )

    # --- containers ---------------------------------------------------------------------------

    async def create_container(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_create")
        body = await self._json(request)
        if ctx.dialect.gateway:
            ctx.dialect.provider = self._provider(body.get("provider", ctx.dialect.provider))
        else:
            for extra in ("provider", "metadata"):  # gateway additions: unknown to OpenAI itself
                if extra in body:
                    raise BadRequest(f"Unknown parameter: '{extra}'.", status=400, param=extra)
        req = self._validate(CreateContainerRequest, body)
        minutes = req.expires_after.minutes if req.expires_after else DEFAULT_EXPIRES_MINUTES
        if minutes > MAX_EXPIRES_MINUTES:
            raise BadRequest(
                f"Invalid 'expires_after.minutes': integer above maximum value. Expected a value <= "
                f"{MAX_EXPIRES_MINUTES}, but got {minutes} instead.",
                status=400,
                param="expires_after.minutes",
            )
        file_ids = list(req.file_ids or [])
        if file_ids and self.switches.file_ids == "reject":  # dev switch: a backend refusing file_ids
            raise BadRequest("Unknown parameter: 'file_ids'.", status=400, param="file_ids")
        if self.switches.file_ids == "ignore":  # dev switch: accepted, not copied (a gateway dropping it)
            file_ids = []
        policy: dict[str, Any] | None = None
        if req.network_policy is not None:
            # Secrets are validated and then dropped: never stored, never echoed (SEMANTICS.md §5.1).
            policy = {"type": req.network_policy.type}
            allowed = getattr(req.network_policy, "allowed_domains", None)
            if allowed is not None:
                policy["allowed_domains"] = list(allowed)
        row = await self._run(
            self.store.create_container,
            ctx.tenant,
            name=req.name,
            minutes=minutes,
            memory_limit=req.memory_limit or DEFAULT_MEMORY_LIMIT,
            network_policy=policy,
            metadata=req.metadata,
            file_ids=file_ids,
        )
        return self._answer(ctx, wire.container_body(row, ctx.dialect))

    async def list_containers(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_list")
        args = self._page_args(request)
        rows, more = await self._run(
            self.store.list_containers, ctx.tenant, name=request.query_params.get("name"), **args
        )
        items = [wire.container_body(r, ctx.dialect) for r in rows]
        return self._answer(ctx, wire.list_body("containers", items, more, ctx.dialect))

    async def retrieve_container(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_retrieve")
        row = await self._run(self.store.retrieve_container, ctx.tenant, request.path_params["container_id"])
        return self._answer(ctx, wire.container_body(row, ctx.dialect))

    async def delete_container(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_delete")
        cid = request.path_params["container_id"]
        await self._run(self.store.delete_container, ctx.tenant, cid)
        return self._answer(ctx, wire.deleted_body(cid, "container.deleted", ctx.dialect))

    # --- container files ----------------------------------------------------------------------

    def _dev_source_and_path(self, request: Request) -> tuple[str, str | None]:
        if not self.dev:
            return "user", None
        source = request.headers.get(HEADER_SOURCE, "user").strip().lower() or "user"
        if source not in SOURCES:
            raise BadRequest(
                f"Invalid value: '{source[:100]}'. Supported values are: 'user' and 'assistant'.",
                status=400,
                param=HEADER_SOURCE,
            )
        path = request.headers.get(HEADER_PATH)
        if path is not None and not path:
            raise BadRequest("Invalid 'X-Hearth-File-Path': empty path.", status=400, param=HEADER_PATH)
        return source, path

    def _upload_path(self, filename: str | None) -> str:
        # OpenAI's shape: /mnt/data/<32 hex>-<file name>. Only the base name of what the client sent.
        return f"/mnt/data/{self._token_hex(16)}-{safe_filename(filename)}"

    @contextlib.asynccontextmanager
    async def _multipart(
        self, request: Request, content_type: str, *, max_file_bytes: int | None = None
    ) -> AsyncIterator[Upload]:
        """The request's multipart body, its file part streamed to a temp file off the event loop.

        The ``with`` body hands the temp file to the store (which moves it into place); if it fails
        instead, the temp file is removed, in a thread too (unlinking 1 GiB takes a while).
        """
        upload = await parse_multipart(
            content_type, request.stream(), self.store.open_upload, max_file_bytes=max_file_bytes
        )
        try:
            yield upload
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(upload.discard)
            raise

    async def create_container_file(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_file_create")
        cid = request.path_params["container_id"]
        source, dev_path = self._dev_source_and_path(request)
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/form-data"):
            await self._run(self.store.check_container_live, ctx.tenant, cid)  # fail before reading 1 GiB
            async with self._multipart(request, content_type) as upload:
                if upload.tmp is None:
                    file_id = upload.fields.get("file_id")
                    if not file_id:
                        raise BadRequest("Missing required parameter: 'file'.", status=400, param="file")
                    row = await self._run(self.store.add_container_file_by_id, ctx.tenant, cid, file_id)
                else:
                    row = await self._run(
                        self.store.add_container_file,
                        ctx.tenant,
                        cid,
                        tmp=upload.tmp,
                        size=upload.size,
                        path=dev_path or self._upload_path(upload.filename),
                        source=source,
                    )
                    self.requests.add_upload(upload.size)
        elif content_type.lower().startswith("application/x-www-form-urlencoded"):
            fields = dict(urllib.parse.parse_qsl((await self._body(request)).decode("utf-8", errors="replace")))
            if not fields.get("file_id"):
                raise BadRequest("Missing required parameter: 'file'.", status=400, param="file")
            row = await self._run(self.store.add_container_file_by_id, ctx.tenant, cid, fields["file_id"])
        else:
            body = await self._json(request)
            if not body:
                raise BadRequest("Missing required parameter: 'file'.", status=400, param="file")
            req = self._validate(CreateContainerFileByIdRequest, body)
            row = await self._run(self.store.add_container_file_by_id, ctx.tenant, cid, req.file_id)
        return self._answer(ctx, wire.container_file_body(row, ctx.dialect))

    async def list_container_files(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_file_list")
        args = self._page_args(request)
        rows, more = await self._run(
            self.store.list_container_files, ctx.tenant, request.path_params["container_id"], **args
        )
        items = [wire.container_file_body(r, ctx.dialect) for r in rows]
        return self._answer(ctx, wire.list_body("container_files", items, more, ctx.dialect))

    async def retrieve_container_file(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_file_retrieve")
        p = request.path_params
        row = await self._run(self.store.retrieve_container_file, ctx.tenant, p["container_id"], p["file_id"])
        return self._answer(ctx, wire.container_file_body(row, ctx.dialect))

    async def delete_container_file(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_file_delete")
        p = request.path_params
        await self._run(self.store.delete_container_file, ctx.tenant, p["container_id"], p["file_id"])
        return self._answer(ctx, wire.deleted_body(p["file_id"], "container.file.deleted", ctx.dialect))

    async def container_file_content(self, request: Request) -> Response:
        ctx = self._ctx(request, "container_file_content")
        p = request.path_params
        row, handle = await self._run(self.store.container_file_content, ctx.tenant, p["container_id"], p["file_id"])
        return self._stream(handle, row["path"])

    # --- Files API ----------------------------------------------------------------------------

    async def create_file(self, request: Request) -> Response:
        ctx = self._ctx(request, "file_upload")
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise BadRequest(
                "Invalid Content-Type header: expected multipart/form-data.", status=400, param="file"
            )
        limit = self.switches.files_max_bytes
        max_bytes = MAX_FILES_API_BYTES if limit is None else min(limit, MAX_FILES_API_BYTES)
        async with self._multipart(request, content_type, max_file_bytes=max_bytes) as upload:
            if upload.tmp is None:
                raise BadRequest("Missing required parameter: 'file'.", status=400, param="file")
            purpose = upload.fields.get("purpose")
            if purpose is None:
                raise BadRequest("Missing required parameter: 'purpose'.", status=400, param="purpose")
            parse_choice("purpose", purpose, default="", choices=FILE_PURPOSES)
            seconds = self._file_expiry(upload.fields, purpose)
            row = await self._run(
                self.store.create_file,
                ctx.tenant,
                tmp=upload.tmp,
                size=upload.size,
                filename=safe_filename(upload.filename),
                purpose=purpose,
                expires_after_seconds=seconds,
            )
            self.requests.add_upload(upload.size)
        return self._answer(ctx, wire.file_body(row, ctx.dialect))

    @staticmethod
    def _file_expiry(fields: dict[str, str], purpose: str) -> int | None:
        anchor = fields.get("expires_after[anchor]")
        raw = fields.get("expires_after[seconds]")
        if anchor is None and raw is None:
            return 30 * 86400 if purpose == "batch" else None  # batch files expire after 30 days by default
        if anchor is None:
            raise BadRequest(
                "Missing required parameter: 'expires_after.anchor'.", status=400, param="expires_after.anchor"
            )
        parse_choice("expires_after.anchor", anchor, default="", choices=("created_at",))
        if raw is None:
            raise BadRequest(
                "Missing required parameter: 'expires_after.seconds'.", status=400, param="expires_after.seconds"
            )
        return parse_int("expires_after.seconds", raw, default=0, low=3600, high=2_592_000)

    async def list_files(self, request: Request) -> Response:
        ctx = self._ctx(request, "file_list")
        args = self._page_args(request, max_limit=10_000, default_limit=10_000)
        rows, more = await self._run(
            self.store.list_files, ctx.tenant, purpose=request.query_params.get("purpose"), **args
        )
        items = [wire.file_body(r, ctx.dialect) for r in rows]
        return self._answer(ctx, wire.list_body("files", items, more, ctx.dialect))

    async def retrieve_file(self, request: Request) -> Response:
        ctx = self._ctx(request, "file_retrieve")
        row = await self._run(self.store.retrieve_file, ctx.tenant, request.path_params["file_id"])
        return self._answer(ctx, wire.file_body(row, ctx.dialect))

    async def delete_file(self, request: Request) -> Response:
        ctx = self._ctx(request, "file_delete")
        fid = request.path_params["file_id"]
        await self._run(self.store.delete_file, ctx.tenant, fid)
        return self._answer(ctx, wire.deleted_body(fid, "file", ctx.dialect))

    async def file_content(self, request: Request) -> Response:
        ctx = self._ctx(request, "file_content")
        row, handle = await self._run(self.store.file_content, ctx.tenant, request.path_params["file_id"])
        return self._stream(handle, row["filename"])

    # --- dev controls ---------------------------------------------------------------------------

    def _clock_state(self) -> dict[str, Any]:
        return {"now": self.clock.now(), "offset": float(getattr(self.clock, "offset", 0.0))}

    async def dev_clock(self, request: Request) -> Response:
        # Any configured key will do: the clock and the faults are the server's, not a tenant's, but
        # with keys configured a caller without one must not move time or break everyone's calls.
        self._tenant(request)
        if request.method == "POST":
            body = await self._json(request)
            seconds = body.get("advance_seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < 1e10:
                raise BadRequest(
                    "Invalid 'advance_seconds': expected a number >= 0.", status=400, param="advance_seconds"
                )
            advance = getattr(self.clock, "advance", None)
            if advance is None:
                raise BadRequest("This server's clock cannot be moved.", status=400)
            advance(float(seconds))
            if hasattr(self.clock, "offset"):
                await self._run(self.store.set_meta, CLOCK_OFFSET_KEY, repr(float(self.clock.offset)))
            await self._run(self.store.sweep)  # expiry takes effect now, not at the next call
        return JSONResponse(self._clock_state())

    async def dev_faults(self, request: Request) -> Response:
        self._tenant(request)  # as dev_clock: a key when keys are configured
        if request.method == "PUT":
            raw = b"".join([c async for c in request.stream()])
            if raw.strip() in (b"", b"null"):
                self.faults.configure(None)
            else:
                body = parse_json_object(raw)
                try:
                    self.faults.configure(FaultConfig.model_validate(body))
                except ValidationError as exc:
                    raise from_validation_error(exc) from None
        return JSONResponse(self.faults.config.model_dump(mode="json"))

    async def dev_switches(self, request: Request) -> Response:
        self._tenant(request)  # as dev_clock: a key when keys are configured
        if request.method == "PUT":
            body = parse_json_object(b"".join([c async for c in request.stream()]))
            try:
                self.switches.update(body)
            except ValueError as exc:
                raise BadRequest(f"Invalid switches: {exc}", status=400) from None
        return JSONResponse(self.switches.to_json())

    async def dev_requests(self, request: Request) -> Response:
        self._tenant(request)
        counts, uploaded = self.requests.snapshot(), self.requests.upload_bytes
        if request.method == "DELETE":
            self.requests.reset()
        return JSONResponse({"counts": counts, "total": sum(counts.values()), "upload_bytes": uploaded})


def _api_routes(api: LocalAPI) -> list[Route]:
    return [
        Route("/containers", api.create_container, methods=["POST"]),
        Route("/containers", api.list_containers, methods=["GET"]),
        Route("/containers/{container_id}", api.retrieve_container, methods=["GET"]),
        Route("/containers/{container_id}", api.delete_container, methods=["DELETE"]),
        Route("/containers/{container_id}/files", api.create_container_file, methods=["POST"]),
        Route("/containers/{container_id}/files", api.list_container_files, methods=["GET"]),
        Route("/containers/{container_id}/files/{file_id}", api.retrieve_container_file, methods=["GET"]),
        Route("/containers/{container_id}/files/{file_id}", api.delete_container_file, methods=["DELETE"]),
        Route("/containers/{container_id}/files/{file_id}/content", api.container_file_content, methods=["GET"]),
        Route("/files", api.create_file, methods=["POST"]),
        Route("/files", api.list_files, methods=["GET"]),
        Route("/files/{file_id}", api.retrieve_file, methods=["GET"]),
        Route("/files/{file_id}", api.delete_file, methods=["DELETE"]),
        Route("/files/{file_id}/content", api.file_content, methods=["GET"]),
    ]


def _dialect_of(request: Request) -> wire.Dialect | None:
    dialect = getattr(request.state, "dialect", None)
    if isinstance(dialect, wire.Dialect):
        return dialect
    split = split_prefix(request.url.path)
    return wire.Dialect(gateway=split is not None and split[0].startswith("/openai"))


def _error_response(request: Request, status: int, message: str, **kw: Any) -> JSONResponse:
    return JSONResponse(wire.error_body(status, message, dialect=_dialect_of(request), **kw), status_code=status)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    status = exc.status or 400
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return _error_response(request, status, exc.message, type_=type_, param=exc.param, code=exc.code)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method not allowed ({request.method} {request.url.path})"
    else:
        message = str(exc.detail)
    return _error_response(request, exc.status_code, message)


def safe_filename(filename: str | None) -> str:
    """The base name of a client's file name; "", "." and ".." (which would name a directory) become "file".

    One rule for both upload paths: a Files-API name later becomes a container path ``/mnt/data/<name>``.
    """
    base = posixpath.basename((filename or "").replace("\\", "/"))
    return "file" if base in ("", ".", "..") else base


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, DroppedConnection):
        # An injected drop is the point, not a bug; the response has started, so this one is unused.
        return Response(status_code=500)
    # A bug, not an input: logged with its traceback, answered in the envelope all the same.
    log.exception("local API: unexpected error on %s %s", request.method, request.url.path)
    return _error_response(
        request, 500, "The server had an error while processing your request. Sorry about that!", type_="server_error"
    )


def create_app(
    store: Store,
    *,
    clock: Clock,
    api_keys: tuple[str, ...] = (),
    dev: bool = False,
    faults: FaultInjector | None = None,
    token_hex: Callable[[int], str] = secrets.token_hex,
    switches: DevSwitches | None = None,
    requests: RequestCounter | None = None,
) -> FaultMiddleware:
    """The whole ASGI app: routes under every prefix, dev routes when ``dev``, faults in front."""
    injector = faults or FaultInjector()
    counter = requests or RequestCounter()
    api = LocalAPI(store, clock=clock, api_keys=api_keys, dev=dev, faults=injector, token_hex=token_hex,
                   switches=switches, requests=counter)
    routes: list[Route | Mount] = [
        Mount("/v1", routes=_api_routes(api)),
        Mount("/openai/v1", routes=_api_routes(api)),
        Mount("/openai", routes=_api_routes(api)),
    ]
    if dev:
        routes += [
            Route("/_dev/clock", api.dev_clock, methods=["GET", "POST"]),
            Route("/_dev/faults", api.dev_faults, methods=["GET", "PUT"]),
            Route("/_dev/switches", api.dev_switches, methods=["GET", "PUT"]),
            Route("/_dev/requests", api.dev_requests, methods=["GET", "DELETE"]),
        ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            APIError: _on_api_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )
    app.state.api = api
    return FaultMiddleware(app, injector, counter)
