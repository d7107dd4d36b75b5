"""Pool inputs staged once in the Files API and copied into containers server-side (``file_ids``).

Why: streaming every input into every container costs one upload per input per container (200
containers x 3 inputs of 1 MiB send 600 MiB where 3 MiB would do), and each upload is a round trip.
The Containers API copies Files-API files at create (``file_ids``, SEMANTICS.md §2.1, §4), so each
local-path or URL input is uploaded once, with purpose ``user_data``, and its file id is kept in
Redis, shared by every pool, container and process.

Content-addressed: a staged file's key is the sha256 of its bytes plus its destination name (the
``as`` name, which the staged file keeps as its Files-API filename), so two pools sharing an input
share one upload, and a changed byte or a new name is a new key, a new file id, and (through the
inputs digest, unchanged) the usual rotation.

Redis, under ``<prefix>:staged``: ``files`` (hash: key -> JSON of a :class:`StagedFile`), ``lock:<key>``
(the one uploader of a key), ``fallback:<pool>`` (a pool that streams instead, and why), ``meta`` (the
filename and size of a pool's own ``file_id`` inputs, read once rather than once per container).

Where a copy lands (the path the container sees), per backend:

* local API (``hearth api``): ``/mnt/data/<filename>``, the destination name (SEMANTICS §2.5 leaves
  the path open; the local API keeps the name, bytes are copied exactly);
* OpenAI and Azure: ``/mnt/data/<filename>`` or, per one fixture (SEMANTICS §2.5, weak),
  ``/mnt/data/<file_id>-<filename>``; Hearth accepts both when verifying and when telling inputs apart;
* a backend or route whose dialect cannot copy ``file_ids`` (or that drops the field): no staging;
  today's streamed uploads, ``/mnt/data/<32 hex>-<filename>``.

A staged file the API no longer has (404, expired, deleted by someone) is staged again, once, under
the key's lock: concurrent provisions see the new id and never each upload it. Staged files that no
pool uses any more are deleted after ``HEARTH_STAGED_GRACE`` seconds (``collect``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from hearth.api.models import ContainerFile, FileObject
from hearth.errors import APIError, Busy, HearthError, NotFound, StorageError
from hearth.files.inputs import InputItem, open_input_url

if TYPE_CHECKING:
    import redis

    from hearth.clock import Clock

log = logging.getLogger(__name__)

STAGE_PURPOSE = "user_data"  # SEMANTICS §4: `user_data` (or `assistants`) feed container file_ids
LOCK_TTL = 900.0  # s: the longest one upload may take before another process may try it
LOCK_WAIT = 30.0  # s a provision waits for another process's upload before retrying later (Busy)
LOCK_POLL = 0.1  # s between looks at a lock held by another process

_SET_FALLBACK = (  # the first reason and time stay; 1 when this is news
    "if redis.call('hget', KEYS[1], 'digest') == ARGV[1] then return 0 end "
    "redis.call('hset', KEYS[1], 'digest', ARGV[1], 'reason', ARGV[2], 'at', ARGV[3]) return 1"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class StagingClient(Protocol):
    """The Files-API calls staging needs (``ContainersClient`` has them)."""

    def upload_input_file(
        self, source: Path | BinaryIO, *, filename: str | None = ..., purpose: str = ...
    ) -> FileObject: ...

    def retrieve_input_file(self, file_id: str) -> FileObject: ...

    def delete_input_file(self, file_id: str) -> None: ...


class InputRefused(HearthError):
    """The Files API refuses an input (too large, a type it does not take): permanent, names the input."""

    temporary = False


@dataclass(frozen=True)
class StagedFile:
    """One input in the Files API: its key, file id, destination name, content hash and size."""

    key: str
    file_id: str
    name: str
    sha256: str
    size: int | None
    staged_at: float
    unused_since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> StagedFile:
        data = json.loads(raw)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Collected:
    """What a staged-files collection found: unused files, those deleted now, and those in use."""

    in_use: list[StagedFile]
    unused: list[StagedFile]
    deleted: list[StagedFile]

    def to_json(self) -> dict[str, Any]:
        return {
            "in_use": len(self.in_use),
            "unused": [f.to_json() for f in self.unused],
            "deleted": [f.to_json() for f in self.deleted],
        }


# --- pure parts ------------------------------------------------------------------------------


def stageable(items: Iterable[InputItem]) -> list[InputItem]:
    """The items staging uploads: local paths and URLs (a ``file_id`` input is in the Files API already)."""
    return [i for i in items if i.kind != "file_id"]


def stage_key(item: InputItem) -> str:
    """Content address of a staged input: sha256 of its bytes and its destination name."""
    if item.sha256 is None or item.dest_name is None:
        raise ValueError(f"{item.source!r}: only hashed, named inputs are staged")
    return hashlib.sha256(f"{item.sha256}\0{item.dest_name}".encode()).hexdigest()[:40]


def copy_names(name: str, file_id: str) -> tuple[str, str]:
    """The base names a server-side copy of ``file_id`` called ``name`` may get (module docstring)."""
    return name, f"{file_id}-{name}"


def missing_copies(files: Sequence[ContainerFile], expected: Sequence[tuple[str, str, int | None]]) -> list[str]:
    """The names of ``expected`` (name, file id, size) that no user file in ``files`` holds."""
    missing: list[str] = []
    taken: set[str] = set()
    for name, file_id, size in expected:
        names = copy_names(name, file_id)
        hit = next(
            (f for f in files if f.source != "assistant" and f.id not in taken
             and f.path.rsplit("/", 1)[-1] in names and (size is None or f.bytes is None or f.bytes == size)),
            None,
        )
        if hit is None:
            missing.append(name)
        else:
            taken.add(hit.id)
    return missing


def file_ids_refused(exc: APIError) -> bool:
    """Whether a create's error is about its ``file_ids`` (the param, or the message naming it)."""
    return (exc.param or "").startswith("file_ids") or "file_ids" in str(exc)


def refused_index(exc: APIError) -> int | None:
    """The index a ``file_ids[i]`` param names, if it does."""
    param = exc.param or ""
    if param.startswith("file_ids[") and param.endswith("]"):
        with contextlib.suppress(ValueError):
            return int(param[len("file_ids["):-1])
    return None


def in_use_keys(items_by_pool: Mapping[str, Sequence[InputItem]]) -> set[str]:
    """The staged keys the pools' current inputs use."""
    return {stage_key(i) for items in items_by_pool.values() for i in stageable(items)}


# --- the Redis-backed registry ---------------------------------------------------------------


class Staging:
    """The staged-files registry over Redis and the Files API. All methods are safe to call concurrently
    from any number of processes."""

    def __init__(
        self,
        redis_client: redis.Redis,
        client: StagingClient,
        clock: Clock,
        *,
        prefix: str,
        grace: float,
        storage_options: Mapping[str, Any] | None = None,
        tokens: Callable[[], str] | None = None,
        lock_wait: float = LOCK_WAIT,
    ) -> None:
        """``grace``: seconds a staged file no pool uses is kept before ``collect`` deletes it;
        ``tokens``: randomness for lock tokens (default ``secrets.token_hex``)."""
        self.redis = redis_client
        self.client = client
        self.clock = clock
        self.prefix = prefix
        self.grace = grace
        self.storage_options = dict(storage_options or {})
        self._tokens = tokens or (lambda: secrets.token_hex(16))
        self.lock_wait = lock_wait

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, "staged", *parts))

    # --- lookups ---------------------------------------------------------------------------

    def get(self, key: str) -> StagedFile | None:
        raw = self.redis.hget(self.key("files"), key)
        return StagedFile.from_json(raw) if raw is not None else None

    def all(self) -> list[StagedFile]:
        raw: dict[bytes, bytes] = self.redis.hgetall(self.key("files"))  # type: ignore[assignment]
        return sorted((StagedFile.from_json(v) for v in raw.values()), key=lambda f: (f.name, f.key))

    def _put(self, staged: StagedFile) -> None:
        self.redis.hset(self.key("files"), staged.key, json.dumps(staged.to_json()))

    # --- staging ---------------------------------------------------------------------------

    def stage(self, item: InputItem) -> StagedFile:
        """The item's staged file, uploading it first if no process has (once, under the key's lock)."""
        key = stage_key(item)
        found = self.get(key)
        if found is not None:
            return found
        return self._under_lock(key, lambda: self.get(key) or self._upload(item, key), done=lambda f: True)

    def stage_all(self, items: Sequence[InputItem]) -> list[StagedFile]:
        """Every stageable item's staged file: one Redis read for all of them on the usual path (all
        staged already), the per-item :meth:`stage` (with its lock) only for those not yet staged."""
        want = stageable(items)
        if not want:
            return []
        raws = self.redis.hmget(self.key("files"), [stage_key(i) for i in want])
        return [StagedFile.from_json(raw) if raw is not None else self.stage(i)
                for i, raw in zip(want, raws, strict=True)]

    def restage(self, item: InputItem, stale_file_id: str) -> StagedFile:
        """Stage ``item`` again because the API no longer has ``stale_file_id``; once for all processes:
        whoever takes the lock second finds the new id and uses it."""
        key = stage_key(item)

        def again() -> StagedFile:
            current = self.get(key)
            if current is not None and current.file_id != stale_file_id:
                return current
            log.warning("staged input %s (%s) is gone from the Files API: staging it again",
                        item.dest_name, stale_file_id)
            return self._upload(item, key)

        return self._under_lock(key, again, done=lambda f: f.file_id != stale_file_id)

    def _upload(self, item: InputItem, key: str) -> StagedFile:
        assert item.dest_name is not None and item.sha256 is not None
        where = f"input {item.source!r} (as {item.dest_name!r})"
        try:
            if item.kind == "local":
                obj = self.client.upload_input_file(Path(item.source), filename=item.dest_name,
                                                    purpose=STAGE_PURPOSE)
            else:
                try:
                    fh = open_input_url(item.source, self.storage_options)
                except Exception as exc:  # a store down now may be up at the next try
                    raise StorageError(f"{where}: opening failed: {type(exc).__name__}: {str(exc)[:200]}") from exc
                with fh:
                    obj = self.client.upload_input_file(fh, filename=item.dest_name, purpose=STAGE_PURPOSE)
        except HearthError as exc:
            if exc.temporary:
                raise
            raise InputRefused(f"{where}: the Files API refused it: {exc}") from exc
        if obj.bytes is not None and item.size is not None and obj.bytes != item.size:
            # The file changed between hashing and uploading: this id does not hold the hashed bytes.
            with contextlib.suppress(HearthError):
                self.client.delete_input_file(obj.id)
            raise HearthError(f"{where} changed while it was staged ({item.size} -> {obj.bytes} bytes)",
                              temporary=True)
        staged = StagedFile(key=key, file_id=obj.id, name=item.dest_name, sha256=item.sha256, size=item.size,
                            staged_at=self.clock.now())
        self._put(staged)
        log.info("staged input %s as %s (%s bytes)", item.dest_name, obj.id, item.size)
        return staged

    def _under_lock(
        self, key: str, fn: Callable[[], StagedFile], *, done: Callable[[StagedFile], bool]
    ) -> StagedFile:
        """``fn()`` under the key's lock; while another process holds it, its result once ``done``."""
        lock = self.key("lock", key)
        token = self._tokens()
        waited = 0.0
        while not self.redis.set(lock, token, nx=True, px=int(LOCK_TTL * 1000)):
            found = self.get(key)
            if found is not None and done(found):
                return found  # the other process finished the upload
            if waited >= self.lock_wait:
                raise Busy(f"staging {key}: another process is still uploading it")
            self.clock.sleep(LOCK_POLL)
            waited += LOCK_POLL
        try:
            return fn()
        finally:
            self.redis.eval(_RELEASE, 1, lock, token)

    # --- a pool's own file ids -------------------------------------------------------------

    def file_meta(self, file_id: str) -> tuple[str, int | None]:
        """Filename and size of a Files-API file given as a pool input (read once, kept in Redis)."""
        raw = self.redis.hget(self.key("meta"), file_id)
        if raw is not None:
            data = json.loads(raw)
            return str(data["filename"]), data.get("bytes")
        meta = self.client.retrieve_input_file(file_id)
        self.redis.hset(self.key("meta"), file_id, json.dumps({"filename": meta.filename, "bytes": meta.bytes}))
        return meta.filename, meta.bytes

    # --- fallback --------------------------------------------------------------------------

    def fallback(self, pool: str, digest: str) -> str | None:
        """Why ``pool`` streams its inputs instead of copying them (None: it copies). A fallback
        recorded for other inputs (another digest) no longer applies: the new ones are tried."""
        raw: dict[bytes, bytes] = self.redis.hgetall(self.key("fallback", pool))  # type: ignore[assignment]
        if not raw or raw.get(b"digest", b"").decode() != digest:
            return None
        return raw.get(b"reason", b"").decode() or "fallback"

    def fallbacks(self) -> dict[str, dict[str, str]]:
        """Every pool's recorded fallback: pool -> {reason, at, digest}."""
        out: dict[str, dict[str, str]] = {}
        prefix = self.key("fallback", "")
        for k in self.redis.scan_iter(match=prefix + "*"):
            name = (k.decode() if isinstance(k, bytes) else str(k))[len(prefix):]
            raw: dict[bytes, bytes] = self.redis.hgetall(k)  # type: ignore[assignment]
            out[name] = {a.decode(): b.decode() for a, b in raw.items()}
        return out

    def set_fallback(self, pool: str, digest: str, reason: str) -> bool:
        """Record that ``pool`` streams its inputs; True when this is news (the caller warns once)."""
        # One script, so that of concurrent provisions noticing it only one hears it is news.
        before = self.redis.eval(_SET_FALLBACK, 1, self.key("fallback", pool), digest, reason, repr(self.clock.now()))
        return bool(before)

    def clear_fallback(self, pool: str) -> None:
        self.redis.delete(self.key("fallback", pool))

    # --- collection ------------------------------------------------------------------------

    def collect(self, in_use: set[str], *, dry_run: bool = False) -> Collected:
        """Delete staged files no pool uses that have been unused for the grace; mark newly unused ones.

        ``in_use``: the keys the pools' current inputs use (``in_use_keys``). A file used again
        before its grace ends is kept (its mark cleared). With ``dry_run`` nothing is changed.
        """
        now = self.clock.now()
        used: list[StagedFile] = []
        unused: list[StagedFile] = []
        deleted: list[StagedFile] = []
        for staged in self.all():
            if staged.key in in_use:
                used.append(staged)
                if staged.unused_since is not None and not dry_run:
                    self._put(StagedFile(**{**staged.to_json(), "unused_since": None}))
                continue
            if staged.unused_since is None:
                staged = StagedFile(**{**staged.to_json(), "unused_since": now})
                if not dry_run:
                    self._put(staged)
            unused.append(staged)
            if dry_run or now - staged.unused_since < self.grace:  # type: ignore[operator]
                continue
            try:
                with contextlib.suppress(NotFound):
                    self.client.delete_input_file(staged.file_id)
            except HearthError as exc:
                log.warning("staged file %s (%s) not deleted yet: %s", staged.file_id, staged.name, exc)
                continue
            self.redis.hdel(self.key("files"), staged.key)
            deleted.append(staged)
            log.info("deleted staged input %s (%s): unused for %.0f s", staged.name, staged.file_id,
                     now - staged.unused_since)  # type: ignore[operator]
        return Collected(in_use=used, unused=unused, deleted=deleted)
