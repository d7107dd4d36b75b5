"""Durable storage for harvested files: one fsspec file system and a root, with atomic writes.

Any fsspec URL works (a plain path or ``file://`` by default, ``s3://`` through s3fs, ``gs://``,
``sftp://``, chained ``simplecache::…``), so operators choose the store by URL alone.

A reader must never see half a file at its final key, whatever happens to the writer:

* Stores with a real rename (local disks, memory, SFTP…) get the file under a temporary name in the
  same directory (``<name>%tmp<token>``, a name no storage key can take, see ``paths.TEMP_MARKER``),
  fsync'd, then renamed over the final name.
* Object stores (S3, GCS, Azure) have no rename, but make an object visible only when its upload
  completes: a single PUT or a completed multipart upload. The file object writes to the final key and
  only ``commit`` closes it (completing the upload); ``abort`` discards it (aborting the multipart
  upload) without ever closing it, since closing an fsspec file *commits* it.

Data flows in chunks; at most one block (``OBJECT_BLOCK_SIZE`` for object stores) is buffered.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import string
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from hearth.clock import Clock, SystemClock
from hearth.errors import ConfigError, HearthError, StorageError
from hearth.files.paths import TEMP_MARKER, safe_name

PLACEHOLDERS = frozenset({"pool", "container_id", "lease_id", "date", "year", "month", "day"})
MISSING_VALUE = "none"
OBJECT_BLOCK_SIZE = 8 * 2**20  # multipart part size: S3 needs ≥ 5 MiB, GCS a multiple of 256 KiB
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss"})
TokenFactory = Callable[[], str]


def _default_token() -> str:
    return uuid.uuid4().hex[:16]


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def render_url(
    url_template: str,
    *,
    clock: Clock | None = None,
    pool: str | None = None,
    container_id: str | None = None,
    lease_id: str | None = None,
) -> str:
    """Fill ``{pool}``, ``{container_id}``, ``{lease_id}``, ``{date}``/``{year}``/``{month}``/``{day}`` (UTC).

    Values become single safe path segments (``/`` or ``..`` in a pool name cannot move the target);
    an absent value renders as ``none``. A template without ``{container_id}`` gets ``/<container_id>``
    appended when one is given, so every container has its own root and its own ``manifest.json``.
    Unknown placeholders are a ``ConfigError`` (a typo must not silently become a literal).
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(url_template) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"storage URL template {url_template!r}: {exc}") from None
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise ConfigError(
            f"storage URL template {url_template!r}: unknown placeholder(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(PLACEHOLDERS))}"
        )
    values: dict[str, str] = {
        "pool": safe_name(pool) if pool else MISSING_VALUE,
        "container_id": safe_name(container_id) if container_id else MISSING_VALUE,
        "lease_id": safe_name(lease_id) if lease_id else MISSING_VALUE,
    }
    if {"date", "year", "month", "day"} & set(fields):
        today = datetime.fromtimestamp((clock or SystemClock()).now(), tz=UTC)
        values |= {
            "date": today.strftime("%Y-%m-%d"),
            "year": today.strftime("%Y"),
            "month": today.strftime("%m"),
            "day": today.strftime("%d"),
        }
    rendered = url_template.format(**values)
    if container_id and "container_id" not in fields:
        rendered = rendered.rstrip("/") + "/" + values["container_id"]
    return rendered


class StorageTarget:
    """A root on an fsspec file system; keys are relative POSIX paths below it."""

    def __init__(
        self,
        fs: Any,
        root: str,
        *,
        url: str | None = None,
        tokens: TokenFactory | None = None,
        atomic_rename: bool | None = None,
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.url = url or self.root
        self._tokens = tokens or _default_token
        self.is_local = isinstance(fs, LocalFileSystem)
        if atomic_rename is None:
            atomic_rename = not (set(_protocols(fs)) & OBJECT_STORE_PROTOCOLS)
        self.atomic_rename = atomic_rename

    @classmethod
    def from_url(
        cls,
        url_template: str,
        *,
        clock: Clock | None = None,
        storage_options: Mapping[str, Any] | None = None,
        tokens: TokenFactory | None = None,
        pool: str | None = None,
        container_id: str | None = None,
        lease_id: str | None = None,
    ) -> StorageTarget:
        """Render the template (see ``render_url``) and open its file system."""
        url = render_url(url_template, clock=clock, pool=pool, container_id=container_id, lease_id=lease_id)
        try:
            fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"storage URL {url!r}: {exc}") from None
        return cls(fs, root, url=url, tokens=tokens)

    def __repr__(self) -> str:
        return f"StorageTarget({self.url!r})"

    # --- keys ---------------------------------------------------------------------------------

    def path(self, key: str) -> str:
        """The file system path of ``key``; refuses keys that are not plain relative paths."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
            raise StorageError(f"invalid storage key {key!r}", temporary=False)
        return f"{self.root}/{key}" if self.root != "/" else f"/{key}"

    def key_url(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    # --- reads --------------------------------------------------------------------------------

    def size(self, key: str) -> int | None:
        """Size of the object at ``key``, or None when there is none."""
        path = self.path(key)
        with _translated(f"stat {key}"):
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                return None
            if info.get("type") == "directory":
                return None
            size = info.get("size")
            return int(size) if size is not None else None

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def read_bytes(self, key: str) -> bytes | None:
        """A small object's content (the manifest), or None when absent."""
        path = self.path(key)
        with _translated(f"read {key}"):
            try:
                data: bytes = self.fs.cat_file(path)
            except FileNotFoundError:
                return None
            return data

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        with _translated(f"read {key}"), self.fs.open(self.path(key), "rb") as f:
            yield f

    def list_keys(self) -> list[str]:
        """Every object below the root, as keys, sorted (temporaries included)."""
        with _translated("list"):
            try:
                found = self.fs.find(self.root)
            except FileNotFoundError:
                return []
        prefix = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        return sorted(p[len(prefix) :] for p in found if p.startswith(prefix))

    # --- writes -------------------------------------------------------------------------------

    def open_atomic(self, key: str) -> AtomicWrite:
        """A writer whose data appears at ``key`` on ``commit()`` and never partly."""
        return AtomicWrite(self, key)

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_atomic(key) as w:
            w.write(data)
            w.commit()

    def sweep_temporaries(self, *, min_age: float = 0.0, now: float | None = None) -> int:
        """Delete temporaries a killed writer left behind; returns how many.

        With ``min_age`` (and ``now``, epoch seconds), a temporary modified less than ``min_age`` s ago
        is kept: it may be a live writer's (one that lost its lock but still runs); a writer appends
        continuously, so its temporary stays young while it lives.
        """
        if not self.atomic_rename:
            return 0
        swept = 0
        for key in self.list_keys():
            if TEMP_MARKER in posixpath.basename(key):
                path = f"{self.root}/{key}"
                if min_age > 0 and now is not None:
                    modified = self._modified(path)
                    if modified is None or now - modified < min_age:
                        continue
                with _translated(f"delete {key}"), contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)
                    swept += 1
        return swept

    def remove_temporaries_of(self, key: str) -> int:
        """Delete every temporary of ``key`` (after ``key`` was committed, they are leftovers)."""
        if not self.atomic_rename:
            return 0
        parent, name = posixpath.split(self.path(key))
        removed = 0
        with _translated(f"list temporaries of {key}"):
            try:
                siblings = self.fs.ls(parent, detail=False)
            except FileNotFoundError:
                return 0
        for p in siblings:
            if posixpath.basename(p).startswith(name + TEMP_MARKER):
                with _translated(f"delete a temporary of {key}"), contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(p)
                    removed += 1
        return removed

    def _modified(self, path: str) -> float | None:
        """Last modification of ``path`` as epoch seconds (None when the store does not say)."""
        with _translated("stat a temporary"):
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                return None
        for field in ("mtime", "LastModified", "last_modified", "updated", "created"):
            value = info.get(field)
            if isinstance(value, datetime):
                return value.timestamp()
            if isinstance(value, int | float):
                return float(value)
        return None

    # Hooks for the write path; tests override them to inject a crash at an exact point.
    def _open_temporary(self, final_path: str) -> tuple[str, BinaryIO]:
        parent, name = posixpath.split(final_path)
        tmp = posixpath.join(parent, f"{name}{TEMP_MARKER}{self._tokens()}")
        self.fs.makedirs(parent, exist_ok=True)
        return tmp, self.fs.open(tmp, "wb")

    def _rename(self, tmp_path: str, final_path: str) -> None:
        if self.is_local:
            os.replace(tmp_path, final_path)  # atomic, and replaces an existing file
            _fsync_dir(posixpath.dirname(final_path))
        else:
            self.fs.mv(tmp_path, final_path)

    def _open_object(self, final_path: str) -> BinaryIO:
        return self.fs.open(final_path, "wb", block_size=OBJECT_BLOCK_SIZE)


class AtomicWrite:
    """One file being written; visible at its key only after ``commit()``. Use as a context manager."""

    def __init__(self, target: StorageTarget, key: str) -> None:
        self.target = target
        self.key = key
        self.final_path = target.path(key)
        self.bytes_written = 0
        self._tmp_path: str | None = None
        self._done = False
        with _translated(f"open {key}"):
            if target.atomic_rename:
                self._tmp_path, self._file = target._open_temporary(self.final_path)
            else:
                self._file = target._open_object(self.final_path)

    def write(self, data: bytes) -> int:
        if self._done:
            raise StorageError(f"write to {self.key} after commit/abort", temporary=False)
        with _translated(f"write {self.key}"):
            self._file.write(data)
        self.bytes_written += len(data)
        return len(data)

    def commit(self) -> None:
        if self._done:
            raise StorageError(f"{self.key} already committed or aborted", temporary=False)
        self._done = True
        try:
            with _translated(f"commit {self.key}"):
                if self._tmp_path is not None:
                    self._file.flush()
                    if self.target.is_local:
                        with contextlib.suppress(AttributeError, OSError, ValueError):
                            os.fsync(self._file.fileno())
                    self._file.close()
                    self.target._rename(self._tmp_path, self.final_path)
                else:
                    self._file.close()  # completes the single PUT or the multipart upload
        except BaseException:
            self._discard()
            raise

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            if self._tmp_path is not None:
                if not self._file.closed:
                    self._file.close()
                self.target.fs.rm_file(self._tmp_path)
            else:
                f: Any = self._file
                if not f.closed:
                    f.discard()  # aborts the multipart upload; nothing reaches the final key
                    f.closed = True  # so close() (which would commit) is never called

    def __enter__(self) -> AtomicWrite:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()  # a no-op after commit(); otherwise nothing was meant to be kept


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn file-system and SDK exceptions into ``StorageError`` (temporary unless clearly not)."""
    try:
        yield
    except HearthError:
        raise
    except PermissionError as exc:
        raise StorageError(f"storage refused to {what}: permission denied ({exc.strerror})", temporary=False) from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise StorageError(f"storage failed to {what}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # botocore, google-cloud, azure… all land here
        raise StorageError(f"storage failed to {what}: {type(exc).__name__}: {str(exc)[:300]}") from exc
