"""The one client through which Hearth touches the Containers API and the Files API.

A daemon's needs differ from an SDK user's: every call is typed, bounded in retries and time,
shares the organisation's rate limit with every other process (``Limiter``), streams files of
any size in constant memory, and never repeats a create or an upload blindly (an ambiguous
failure is followed by a lookup that adopts what the earlier try made). Backend differences live
in ``dialects``, HTTP-error mapping in ``errormap``, retry pacing in ``retry``, bodies in
``transfer``; this module wires them to the endpoints.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import random
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from hearth.api.dialects import Dialect, make_dialect
from hearth.api.errormap import error_from_response, redact
from hearth.api.limiter import Limiter, Slot
from hearth.api.models import (
    Container,
    ContainerFile,
    ContainerFileList,
    ContainerList,
    CreateContainerFileByIdRequest,
    CreateContainerRequest,
    Deleted,
    FileList,
    FileObject,
)
from hearth.api.retry import RetryPolicy
from hearth.api.transfer import Download, MultipartUpload, RewindableSink, UploadSource, copy_to_sink
from hearth.clock import Clock, SystemClock
from hearth.errors import ConfigError, HearthError, MalformedResponse, NotFound, StorageError, TransportError
from hearth.events import Observer

if TYPE_CHECKING:
    import redis

    from settings.config import Settings

__all__ = ["ContainersClient", "Download"]

log = logging.getLogger("hearth.api.client")

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_ERROR_BODY_LIMIT = 64 * 1024
_SPOOL = 8 << 20


def _seg(value: str) -> str:
    """An id as one path segment: gateways (LiteLLM) may hand out ids with URL-special characters."""
    return quote(value, safe="")


def _describe(exc: ValidationError, limit: int = 5) -> str:
    """Which fields were wrong, without echoing their values (they may be anything)."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def endpoint_name(method: str, path: str) -> str:
    """A bounded metrics label for a request: ``POST containers/cntr_1/files`` -> ``containers.files.create``.

    Paths alternate collection and id segments (ids are quoted into one segment by ``_seg``), so the
    collections make the name and whether the path ends on an id picks the verb; ``…/content`` is its
    own endpoint. Ids never reach the label, which would make one time series per container.
    """
    segments = [s for s in path.strip("/").split("/") if s]
    names = segments[0::2]
    if names and names[-1] == "content":
        return ".".join(names)
    on_item = len(segments) % 2 == 0
    verbs = {"GET": "retrieve", "DELETE": "delete", "POST": "update"} if on_item else {"GET": "list", "POST": "create"}
    return ".".join([*names, verbs.get(method.upper(), method.lower())])


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class _Discard(io.RawIOBase):
    """A sink that keeps nothing: a download made only for its sha256."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return 0

    def truncate(self, size: int | None = None) -> int:
        return 0


class _Existing:
    """Files listed before an upload's first try: none of them can be that upload's result.

    One list call (the newest page): when more pages exist, everything older than the page's oldest
    entry is taken as existing too. ``files=None`` (the listing failed) makes every file count as
    existing, so nothing is adopted: a blind retry at worst duplicates, adoption could lose the bytes.
    """

    def __init__(self, files: list[ContainerFile] | list[FileObject] | None, *, complete: bool = True) -> None:
        self.unknown = files is None
        self.ids = {f.id for f in files or ()}
        self.floor = None if complete or not files else min(f.created_at for f in files)

    def __contains__(self, f: ContainerFile | FileObject) -> bool:
        return self.unknown or f.id in self.ids or (self.floor is not None and f.created_at < self.floor)


class ContainersClient:
    """Typed, retrying, rate-limited access to one Containers API backend.

    One ``httpx.Client`` (pooled keep-alive connections) per instance; use as a context manager
    or call ``close``. Thread-safe to the extent ``httpx.Client`` is (it is, for sync use).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: SecretStr | str | None = None,
        dialect: str | Dialect = "openai",
        gateway_provider: str = "openai",
        gateway_routes: str = "containers",
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        retry: RetryPolicy | None = None,
        limiter: Limiter | None = None,
        timeout: float = 60.0,
        observer: Observer | None = None,
    ) -> None:
        self._observer = observer
        self._dialect: Dialect = (
            dialect if isinstance(dialect, Dialect) else make_dialect(
                dialect, gateway_provider=gateway_provider, gateway_routes=gateway_routes
            )
        )
        self.base_url = self._dialect.base_url(base_url)
        self._key: SecretStr | None = SecretStr(api_key) if isinstance(api_key, str) else api_key
        if self._key is not None and not self._key.get_secret_value():
            self._key = None
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._retry = retry or RetryPolicy()
        self._limiter = limiter
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            transport=transport,
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": "hearth/0.1", **self._dialect.extra_headers()},
            follow_redirects=False,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        redis: redis.Redis | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> ContainersClient:
        """The client for the configured backend; with ``redis``, limited by the shared limiter.

        ``observer`` hears of every HTTP request (``api_call``): the worker's Prometheus metrics.
        """
        try:
            base = settings.resolved_api_base
        except ValueError as exc:
            raise ConfigError(str(exc), where="HEARTH_API_BASE") from exc
        limiter = Limiter.from_settings(settings, redis, clock=clock) if redis is not None else None
        return cls(
            base,
            api_key=settings.api_key,
            dialect=settings.backend.value,
            gateway_provider=settings.gateway_provider,
            gateway_routes=settings.gateway_routes,
            transport=transport,
            clock=clock,
            retry=RetryPolicy.from_settings(settings),
            limiter=limiter if limiter is not None and limiter.enabled else None,
            timeout=settings.api_timeout,
            observer=observer,
        )

    @property
    def dialect(self) -> str:
        return self._dialect.name

    @property
    def create_fields(self) -> frozenset[str] | None:
        """The create-body fields this backend forwards (None: all); see ``Dialect.create_fields``."""
        return self._dialect.create_fields

    @property
    def copies_create_file_ids(self) -> bool:
        """Whether a create's ``file_ids`` reach the backend and are copied (dialect flag and forwarded fields)."""
        fields = self.create_fields
        return self._dialect.copies_create_file_ids and (fields is None or "file_ids" in fields)

    def __repr__(self) -> str:
        key = "***" if self._key is not None else None
        return f"ContainersClient(base_url={self.base_url!r}, dialect={self._dialect.name!r}, api_key={key!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ContainersClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        return [self._key.get_secret_value()] if self._key is not None else []

    def _slot(self) -> Slot:
        if self._limiter is None:
            return Slot(None, "", self._clock.now())
        return self._limiter.acquire()

    def _renewer(self, slot: Slot) -> Callable[[int], None] | None:
        """A per-chunk callback that keeps a long transfer's limiter lease alive (None: no limiter)."""
        if self._limiter is None:
            return None
        every = self._limiter.lease_ttl / 3
        last = [self._clock.now()]

        def tick(_: int) -> None:
            now = self._clock.now()
            if now - last[0] >= every:
                last[0] = now
                try:
                    slot.renew()
                except StorageError as exc:
                    # A Redis blip must not abort a long transfer; the slot only risks expiring early.
                    log.warning("limiter slot renewal failed, transfer continues: %s", exc)

        return tick

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        upload: MultipartUpload | None = None,
        stream: bool = False,
        query_routing: bool = True,
    ) -> httpx.Response:
        """One HTTP exchange; transport failures become ``TransportError``, HTTP errors are mapped.

        ``query_routing=False`` leaves out the dialect's routing query (a create routes in its body).
        """
        headers = {**self._dialect.auth_headers(self._key.get_secret_value() if self._key else None)}
        content: Any = None
        if upload is not None:
            headers.update(upload.headers())
            content = iter(upload)
        if stream:
            headers["Accept"] = "application/octet-stream, */*"
        started = self._clock.now()
        try:
            request = self._http.build_request(
                method, path, params=self._dialect.params(params) if query_routing else dict(params or {}),
                json=json, content=content, headers=headers,
            )
            response = self._http.send(request, stream=stream)
        except httpx.HTTPError as exc:
            self._observe(method, path, "error", started)
            # from None: the httpx cause's text (and its request's URL) is not redacted, and a
            # traceback prints it; the redacted message keeps the cause's type name.
            raise TransportError(f"{what}: {type(exc).__name__}: {redact(str(exc), self._secrets())}") from None
        self._observe(method, path, response.status_code, started)
        if response.status_code >= 400:
            try:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
            except httpx.HTTPError:
                pass  # the status alone decides the error class
            finally:
                response.close()
            raise error_from_response(
                response.status_code, response.headers, body, what=what, now=self._clock.now(), secrets=self._secrets(),
                keyless_crash_is_auth=self._key is None and self._dialect.keyless_crash_is_auth,
            )
        return response

    def _observe(self, method: str, path: str, status: int | str, started: float) -> None:
        """Report one request to the observer; metrics must never fail an API call."""
        if self._observer is None:
            return
        try:
            self._observer.api_call(endpoint_name(method, path), status, self._clock.now() - started)
        except Exception:
            log.debug("observer.api_call failed", exc_info=True)

    def _parse(self, response: httpx.Response, model: type[M], what: str) -> M:
        try:
            data = response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            excerpt = redact(response.text[:120], self._secrets())
            raise MalformedResponse(
                f"{what}: response is not JSON (HTTP {response.status_code}, {kind}): {excerpt!r}",
                status=response.status_code,
            ) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise MalformedResponse(
                f"{what}: response is not a valid {model.__name__}: {_describe(exc)}", status=response.status_code
            ) from None

    def _once(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        upload: Callable[[Slot], MultipartUpload] | None = None,
        query_routing: bool = True,
    ) -> M:
        what = f"{method} /{path}"
        with self._slot() as slot:
            body = upload(slot) if upload is not None else None
            response = self._send(
                method, path, what, params=params, json=json, upload=body, query_routing=query_routing
            )
            return self._parse(response, model, what)

    def _retrying(
        self,
        fn: Callable[[], T],
        what: str,
        *,
        recover: Callable[[HearthError], T | None] | None = None,
        retryable: Callable[[HearthError], bool] | None = None,
    ) -> T:
        return self._retry.call(fn, clock=self._clock, rng=self._rng, what=what, recover=recover, retryable=retryable)

    def _call(self, method: str, path: str, model: type[M], *, params: Mapping[str, Any] | None = None,
              json: Any = None) -> M:
        return self._retrying(lambda: self._once(method, path, model, params=params, json=json),
                              f"{method} /{path}")

    def _delete(self, path: str) -> None:
        """DELETE, idempotent: a 404 after an ambiguous earlier try means that try did it."""
        ambiguous = [False]

        def once() -> bool:
            try:
                self._once("DELETE", path, Deleted)
            except NotFound:
                if ambiguous[0]:
                    return True
                raise
            return True

        def recover(err: HearthError) -> bool | None:
            ambiguous[0] = True
            return None

        self._retrying(once, f"DELETE /{path}", recover=recover)

    def _paginate(self, path: str, model: type[Any], params: dict[str, Any], page_size: int) -> Iterator[Any]:
        after: str | None = None
        while True:
            query = {**params, "limit": page_size, "after": after}
            page = self._retrying(lambda q=query: self._once("GET", path, model, params=q), f"GET /{path}")  # type: ignore[misc]
            yield from page.data
            cursor = self._dialect.next_cursor(page)
            if cursor is None or not page.data:
                return
            if cursor == after:
                raise MalformedResponse(f"GET /{path}: list says has_more but its cursor did not advance ({cursor})")
            after = cursor

    def _holds(self, src: UploadSource, download: Callable[[BinaryIO], Download]) -> bool:
        """Whether a candidate for adoption has exactly ``src``'s bytes (compared by sha256).

        Name and size alone would adopt an older file of the same name and size, and the new bytes
        would never be sent. Runs only after an ambiguous failure, so the download is rare. A source
        that cannot be read again was sent at most once and is never retried: nothing to adopt.
        """
        if not src.replayable:
            return False
        digest = hashlib.sha256()
        try:
            for chunk in src.chunks():
                digest.update(chunk)
        except OSError as exc:
            raise HearthError(f"reading {src.filename} failed: {exc}") from exc
        try:
            got = download(cast(BinaryIO, _Discard()))
        except NotFound:
            return False
        return got.sha256 == digest.hexdigest()

    def _existing(self, path: str, model: type[ContainerFileList] | type[FileList]) -> _Existing:
        """What ``path`` lists right now (one request, no retries; see ``_Existing``)."""
        try:
            page = self._once("GET", path, model, params={"order": "desc", "limit": 100})
        except HearthError as exc:
            log.warning("GET /%s failed (%s): an ambiguous upload failure will be retried, not adopted",
                        path, type(exc).__name__)
            return _Existing(None)
        return _Existing(page.data, complete=self._dialect.next_cursor(page) is None)

    def _download(self, path: str, sink: BinaryIO) -> Download:
        what = f"GET /{path}"
        target = RewindableSink(sink)

        def once() -> Download:
            target.rewind()
            with self._slot() as slot:
                response = self._send("GET", path, what, stream=True)
                try:
                    # No chunk size: pieces as the socket delivers them (64 KiB), not re-chunked
                    # into 1 MiB by httpx, which copies every byte once more (issue 3's gap).
                    return copy_to_sink(response.iter_bytes(), target, on_chunk=self._renewer(slot))
                except httpx.HTTPError as exc:
                    raise TransportError(f"{what}: {type(exc).__name__} after {target.written} bytes") from None
                finally:
                    response.close()

        # A partly written sink that cannot be rewound cannot be retried without corrupting it.
        return self._retrying(once, what, retryable=lambda err: err.temporary and target.rewindable)

    def _upload(
        self,
        path: str,
        src: UploadSource,
        model: type[M],
        *,
        fields: tuple[tuple[str, str], ...] = (),
        adopt: Callable[[], M | None] | None = None,
    ) -> M:
        what = f"POST /{path}"
        sent = [False]

        def make(slot: Slot) -> MultipartUpload:
            if sent[0] and not src.replayable:
                raise HearthError(f"{what}: {src.filename}: a non-seekable stream cannot be sent twice")
            sent[0] = True
            return MultipartUpload(src, fields=fields, on_chunk=self._renewer(slot))

        def once() -> M:
            try:
                return self._once("POST", path, model, upload=make)
            except OSError as exc:
                raise HearthError(f"{what}: reading {src.filename} failed: {exc}") from exc

        def recover(err: HearthError) -> M | None:
            return adopt() if adopt is not None else None

        return self._retrying(
            once, what, recover=recover, retryable=lambda err: err.temporary and (src.replayable or not sent[0])
        )

    # --- containers ---------------------------------------------------------------------------

    def create_container(self, request: CreateContainerRequest) -> Container:
        """Create a container; after an ambiguous failure, adopt a container of the same name.

        Names are Hearth's idempotency keys: a create whose response was lost is found by its name
        instead of being repeated (which would make, and bill, a second container).
        """
        body = self._dialect.create_body(request.wire())

        def recover(err: HearthError) -> Container | None:
            # Only a usable one: an expired namesake is an old container, never this create's result.
            usable = [c for c in self.list_containers(name=request.name) if c.usable]
            if not usable:
                return None
            found = max(usable, key=lambda c: c.created_at)
            log.info("create %s: adopted %s made by an earlier try", request.name, found.id)
            return found

        return self._retrying(
            lambda: self._once("POST", "containers", Container, json=body, query_routing=False),
            "POST /containers",
            recover=recover,
        )

    def list_containers(
        self, *, name: str | None = None, order: str = "desc", page_size: int = 100
    ) -> Iterator[Container]:
        """Every container (following ``after``), optionally only those called ``name``.

        The name filter is also applied here: gateways do not forward it (GATEWAYS.md §5.3).
        """
        params: dict[str, Any] = {"order": order}
        if name is not None and self._dialect.forwards_name_filter:
            params["name"] = name
        for container in self._paginate("containers", ContainerList, params, page_size):
            if name is None or container.name == name:
                yield container

    def find_container_by_name(self, name: str) -> Container | None:
        """The container called ``name`` (the newest usable one if several), or None."""
        found = list(self.list_containers(name=name))
        if not found:
            return None
        usable = [c for c in found if c.usable]
        return max(usable or found, key=lambda c: c.created_at)

    def retrieve_container(self, container_id: str) -> Container:
        """The container as the backend reports it; ``status == "expired"`` is returned, not raised."""
        return self._call("GET", f"containers/{_seg(container_id)}", Container)

    def delete_container(self, container_id: str) -> None:
        self._delete(f"containers/{_seg(container_id)}")

    # --- container files ----------------------------------------------------------------------

    def upload_file(self, container_id: str, source: Path | BinaryIO, *, filename: str | None = None) -> ContainerFile:
        """Stream a file into the container (multipart, constant memory).

        After an ambiguous failure, a user file with the same name and size that is now in the
        container is taken as this upload's result rather than uploading a duplicate.
        """
        src = UploadSource(source, filename)
        path = f"containers/{_seg(container_id)}/files"

        def adopt() -> ContainerFile | None:
            for f in self.list_files(container_id, order="desc"):
                base = _basename(f.path)
                same_name = base == src.filename or base.endswith("-" + src.filename)
                same_size = src.size is None or f.bytes is None or f.bytes == src.size
                if same_name and same_size and f.source != "assistant" and self._holds(
                    src, functools.partial(self.download_file, container_id, f.id)
                ):
                    return f
            return None

        return self._upload(path, src, ContainerFile, adopt=adopt)

    def add_file_by_id(self, container_id: str, file_id: str) -> ContainerFile:
        """Copy a Files-API file into the container.

        Gateways do not forward the JSON ``file_id`` form (GATEWAYS.md §5.4), so through one the
        file's content is streamed from the Files API and uploaded instead.
        """
        if not self._dialect.supports_file_id_copy:
            meta = self.retrieve_input_file(file_id)
            with tempfile.SpooledTemporaryFile(max_size=_SPOOL) as spool:
                self.download_input_file(file_id, spool)  # type: ignore[arg-type]
                spool.seek(0)
                return self.upload_file(container_id, spool, filename=meta.filename)  # type: ignore[arg-type]

        path = f"containers/{_seg(container_id)}/files"
        body = CreateContainerFileByIdRequest(file_id=file_id).model_dump(mode="json")
        before = self._existing(path, ContainerFileList)  # never adopted: see upload_file

        def recover(err: HearthError) -> ContainerFile | None:
            # Backends name a copy /mnt/data/<filename> or /mnt/data/<file_id>-<filename>.
            meta = self.retrieve_input_file(file_id)
            for f in self.list_files(container_id, order="desc"):
                base = _basename(f.path)
                named = base in (meta.filename, file_id) or base.startswith(f"{file_id}-")
                sized = f.bytes is None or meta.bytes is None or f.bytes == meta.bytes
                if named and sized and f.source != "assistant" and f not in before:
                    return f
            return None

        return self._retrying(
            lambda: self._once("POST", path, ContainerFile, json=body), f"POST /{path}", recover=recover
        )

    def list_files(self, container_id: str, *, order: str = "asc", page_size: int = 100) -> Iterator[ContainerFile]:
        return self._paginate(f"containers/{_seg(container_id)}/files", ContainerFileList, {"order": order}, page_size)

    def retrieve_file(self, container_id: str, file_id: str) -> ContainerFile:
        return self._call("GET", f"containers/{_seg(container_id)}/files/{_seg(file_id)}", ContainerFile)

    def delete_file(self, container_id: str, file_id: str) -> None:
        self._delete(f"containers/{_seg(container_id)}/files/{_seg(file_id)}")

    def download_file(self, container_id: str, file_id: str, sink: BinaryIO) -> Download:
        """Stream the file's content into ``sink``; size and sha256 of what was written."""
        return self._download(f"containers/{_seg(container_id)}/files/{_seg(file_id)}/content", sink)

    # --- Files API ----------------------------------------------------------------------------

    def upload_input_file(
        self, source: Path | BinaryIO, *, filename: str | None = None, purpose: str = "user_data"
    ) -> FileObject:
        """Stream a file to the Files API (for ``file_ids``); adopts an identical upload after an ambiguous failure."""
        src = UploadSource(source, filename)

        def adopt() -> FileObject | None:
            for f in self.list_input_files(purpose=purpose):
                same = f.filename == src.filename and (src.size is None or f.bytes is None or f.bytes == src.size)
                if same and self._holds(src, functools.partial(self.download_input_file, f.id)):
                    return f
            return None

        return self._upload("files", src, FileObject, fields=(("purpose", purpose),), adopt=adopt)

    def list_input_files(self, *, purpose: str | None = None) -> Iterator[FileObject]:
        """Files-API files, newest first."""
        params: dict[str, Any] = {"order": "desc"}
        if purpose is not None:
            params["purpose"] = purpose
        for f in self._paginate("files", FileList, params, 100):
            if purpose is None or f.purpose == purpose:
                yield f

    def retrieve_input_file(self, file_id: str) -> FileObject:
        return self._call("GET", f"files/{_seg(file_id)}", FileObject)

    def delete_input_file(self, file_id: str) -> None:
        self._delete(f"files/{_seg(file_id)}")

    def download_input_file(self, file_id: str, sink: BinaryIO) -> Download:
        return self._download(f"files/{_seg(file_id)}/content", sink)
