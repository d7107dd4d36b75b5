"""The local API's persistent state: SQLite metadata plus file bytes on disk, per tenant.

Why a store of its own: the local server must survive restarts (a test or a laptop restarts it and
Hearth's records still point at its containers), so nothing lives only in memory. Bytes are stored
by object id (``blobs/<id>``), never by the container path a caller gave, so a path such as
``/mnt/data/../../etc/passwd`` is only metadata and cannot make the server write outside its dir.

Lifecycle follows SEMANTICS.md §3 on the injected clock: every per-container call refreshes
``last_active_at``; listing all containers does not; a container idle for ``expires_after.minutes``
becomes ``expired`` for good, and its files (rows and bytes) are discarded. Deleted objects are kept
as tombstones so that a pagination cursor naming them still works, and are otherwise invisible.

Thread-safety: one connection in WAL mode guarded by a lock; every public method is one transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from hearth.clock import Clock
from hearth.errors import BadRequest, ContainerExpired, HearthError, NotFound

Row = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS containers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_active_at REAL NOT NULL,
    minutes INTEGER NOT NULL,
    memory_limit TEXT NOT NULL,
    network_policy TEXT,
    metadata TEXT,
    status TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS containers_live ON containers (deleted, status);
CREATE INDEX IF NOT EXISTS containers_tenant ON containers (tenant, created_at, seq);
CREATE TABLE IF NOT EXISTS container_files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    container_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    bytes INTEGER NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS container_files_by_container ON container_files (container_id, created_at, seq);
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS files_tenant ON files (tenant, created_at, seq);
"""

MNT = "/mnt/data/"


def container_not_found(container_id: str) -> NotFound:
    return NotFound(f"Container with id '{container_id}' not found.", status=404)


def container_file_not_found(container_id: str, file_id: str) -> NotFound:
    return NotFound(f"File {file_id} not found on container {container_id}.", status=404)


def file_not_found(file_id: str, param: str | None = "id") -> NotFound:
    return NotFound(f"No such File object: {file_id}", status=404, param=param)


class DataDirInUse(HearthError):
    """Another live Store (another local API server) holds this data dir."""


def _lock_data_dir(data_dir: Path) -> int:
    """Take ``data_dir/.lock`` exclusively (released when the fd closes, also when the process dies).

    Two servers on one dir would share the SQLite file (fine) but each wipes ``tmp/`` on open,
    destroying the other's in-flight uploads; so the second one is refused instead.
    """
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DataDirInUse(f"local API data dir {data_dir} is in use by pid {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


BlobWriter = Callable[[Path], BinaryIO]
"""Opens the temp file an upload's bytes are written to (a seam: a test can make a write block)."""


def open_new_file(path: Path) -> BinaryIO:
    """The default :data:`BlobWriter`: a new file (``x``: never an existing one, such as another upload's)."""
    return path.open("xb")


class Store:
    """SQLite + blob directory under ``data_dir``. ``tenant`` scopes every object (one per API key).

    Holds an exclusive lock on the dir until :meth:`close` (``DataDirInUse`` if another Store has it).
    """

    def __init__(
        self,
        data_dir: Path,
        clock: Clock,
        *,
        token_hex: Callable[[int], str] = secrets.token_hex,
        blob_writer: BlobWriter = open_new_file,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.blob_dir = self.data_dir / "blobs"
        self.tmp_dir = self.data_dir / "tmp"
        for d in (self.data_dir, self.blob_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock_data_dir(self.data_dir)
        # Only the lock holder may do this: half-written uploads of a previous run are garbage: nothing references them.
        for leftover in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        self.clock = clock
        self._token_hex = token_hex
        self._blob_writer = blob_writer
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.data_dir / "localapi.sqlite3", check_same_thread=False, isolation_level=None
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._unlock()
            raise HearthError(f"local API store {self.data_dir}: {exc}") from None
        # Blobs of rows marked deleted in the open transaction: unlinked only once it commits.
        self._doomed: list[str] = []

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._unlock()

    # --- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._doomed = []
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself fails (disk full, I/O error): otherwise the connection
                # stays inside the transaction and every later BEGIN fails.
                self._doomed = []
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            # Bytes go only once their rows are committed as deleted: a rolled-back delete keeps them.
            doomed, self._doomed = self._doomed, []
            for object_id in doomed:
                self._drop_blob(object_id)

    def _new_id(self, prefix: str, nbytes: int) -> str:
        return f"{prefix}{self._token_hex(nbytes)}"

    def blob_path(self, object_id: str) -> Path:
        return self.blob_dir / object_id

    def new_tmp_path(self) -> Path:
        """A fresh path in the store's own temp dir (same filesystem as the blobs: rename is atomic)."""
        return self.tmp_dir / f"upload-{self._token_hex(16)}"

    def open_upload(self) -> tuple[Path, BinaryIO]:
        """A fresh temp path and a handle open for writing its bytes (blocking: call it off the event loop)."""
        path = self.new_tmp_path()
        return path, self._blob_writer(path)

    def _doom(self, object_id: str) -> None:
        """Unlink the object's bytes when the current transaction commits."""
        self._doomed.append(object_id)

    def _drop_blob(self, object_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.blob_path(object_id).unlink()

    def _adopt_blob(self, tmp: Path, object_id: str) -> None:
        os.replace(tmp, self.blob_path(object_id))

    def _copy_blob(self, src_id: str, dst_id: str) -> None:
        src, dst = self.blob_path(src_id), self.blob_path(dst_id)
        try:
            os.link(src, dst)  # blobs are immutable: a hard link is an independent copy, for free
        except OSError:
            shutil.copyfile(src, dst)

    # --- meta (the dev clock's offset survives restarts) ----------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- expiry -----------------------------------------------------------------------------

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Expire every container idle past its window and discard its files; drop expired Files."""
        due = db.execute(
            "SELECT id FROM containers WHERE deleted = 0 AND status = 'running' AND last_active_at + minutes * 60 <= ?",
            (now,),
        ).fetchall()
        for row in due:
            db.execute("UPDATE containers SET status = 'expired' WHERE id = ?", (row["id"],))
            self._discard_container_files(db, row["id"])
        gone = db.execute(
            "SELECT id FROM files WHERE deleted = 0 AND expires_at IS NOT NULL AND expires_at <= ?", (now,)
        ).fetchall()
        for row in gone:
            db.execute("UPDATE files SET deleted = 1 WHERE id = ?", (row["id"],))
            self._doom(row["id"])

    def _discard_container_files(self, db: sqlite3.Connection, container_id: str) -> None:
        rows = db.execute(
            "SELECT id FROM container_files WHERE container_id = ? AND deleted = 0", (container_id,)
        ).fetchall()
        db.execute("UPDATE container_files SET deleted = 1 WHERE container_id = ?", (container_id,))
        for row in rows:
            self._doom(row["id"])

    def sweep(self) -> None:
        with self._tx() as db:
            self._sweep(db, self.clock.now())

    # --- pagination ------------------------------------------------------------------------------

    def _page(
        self,
        db: sqlite3.Connection,
        table: str,
        where: str,
        args: tuple[Any, ...],
        *,
        limit: int,
        order: str,
        after: str | None,
    ) -> tuple[list[Row], bool]:
        """One page ordered by (created_at, seq); ``after`` is an id of the same scope (tombstones count)."""
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        cursor_sql, cursor_args = "", cast(tuple[Any, ...], ())
        if after:
            ref = db.execute(f"SELECT created_at, seq FROM {table} WHERE id = ? AND {where}", (after, *args)).fetchone()
            if ref is None:
                raise BadRequest(
                    f"Invalid 'after': no object with id '{after}' in this list.", status=400, param="after"
                )
            cursor_sql = f" AND (created_at {cmp} ? OR (created_at = ? AND seq {cmp} ?))"
            cursor_args = (ref["created_at"], ref["created_at"], ref["seq"])
        rows = db.execute(
            f"SELECT * FROM {table} WHERE deleted = 0 AND {where}{cursor_sql} "
            f"ORDER BY created_at {direction}, seq {direction} LIMIT ?",
            (*args, *cursor_args, limit + 1),
        ).fetchall()
        page = [dict(r) for r in rows]
        return page[:limit], len(page) > limit

    # --- containers -----------------------------------------------------------------------------

    def _container(self, db: sqlite3.Connection, tenant: str, container_id: str) -> Row:
        row = db.execute(
            "SELECT * FROM containers WHERE id = ? AND tenant = ? AND deleted = 0", (container_id, tenant)
        ).fetchone()
        if row is None:
            raise container_not_found(container_id)
        return dict(row)

    def _touch(self, db: sqlite3.Connection, row: Row, now: float) -> Row:
        if row["status"] == "running":
            # MAX: the clock is read inside the transaction, but a wall clock can still step back.
            now = max(now, row["last_active_at"])
            db.execute("UPDATE containers SET last_active_at = ? WHERE id = ?", (now, row["id"]))
            row["last_active_at"] = now
        return row

    def _live_container(self, db: sqlite3.Connection, tenant: str, container_id: str, now: float) -> Row:
        """The container for a file call: refreshed if running, 404 "Container is expired." if not."""
        row = self._container(db, tenant, container_id)
        if row["status"] != "running":
            raise ContainerExpired("Container is expired.", status=404)
        return self._touch(db, row, now)

    def create_container(
        self,
        tenant: str,
        *,
        name: str,
        minutes: int,
        memory_limit: str,
        network_policy: dict[str, Any] | None,
        metadata: dict[str, str] | None,
        file_ids: list[str],
    ) -> Row:
        cid = self._new_id("cntr_", 24)
        with self._tx() as db:
            now = self.clock.now()
            self._sweep(db, now)
            sources: list[Row] = []
            for i, fid in enumerate(file_ids):
                src = db.execute(
                    "SELECT * FROM files WHERE id = ? AND tenant = ? AND deleted = 0", (fid, tenant)
                ).fetchone()
                if src is None:
                    raise file_not_found(fid, param=f"file_ids[{i}]")
                sources.append(dict(src))
            db.execute(
                "INSERT INTO containers (id, tenant, name, created_at, last_active_at, minutes, memory_limit,"
                " network_policy, metadata, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                (
                    cid, tenant, name, now, now, minutes, memory_limit,
                    json.dumps(network_policy) if network_policy is not None else None,
                    json.dumps(metadata) if metadata is not None else None,
                ),
            )
            for src in sources:
                self._insert_copy(db, cid, src, now)
            return self._container(db, tenant, cid)

    def _insert_copy(self, db: sqlite3.Connection, container_id: str, src: Row, now: float) -> Row:
        """Copy a Files-API file into a container as ``/mnt/data/<filename>`` (source user)."""
        fid = self._new_id("cfile_", 16)
        self._copy_blob(src["id"], fid)
        db.execute(
            "INSERT INTO container_files (id, container_id, created_at, bytes, path, source)"
            " VALUES (?, ?, ?, ?, ?, 'user')",
            (fid, container_id, now, src["bytes"], MNT + src["filename"]),
        )
        return dict(db.execute("SELECT * FROM container_files WHERE id = ?", (fid,)).fetchone())

    def list_containers(
        self, tenant: str, *, limit: int, order: str, after: str | None, name: str | None
    ) -> tuple[list[Row], bool]:
        with self._tx() as db:
            self._sweep(db, self.clock.now())  # shows expiry as it is, but refreshes nothing
            where, args = "tenant = ?", cast(tuple[Any, ...], (tenant,))
            if name is not None:
                where, args = "tenant = ? AND name = ?", (tenant, name)
            return self._page(db, "containers", where, args, limit=limit, order=order, after=after)

    def retrieve_container(self, tenant: str, container_id: str) -> Row:
        with self._tx() as db:
            now = self.clock.now()
            self._sweep(db, now)
            return self._touch(db, self._container(db, tenant, container_id), now)

    def delete_container(self, tenant: str, container_id: str) -> None:
        with self._tx() as db:
            self._sweep(db, self.clock.now())
            self._container(db, tenant, container_id)
            db.execute("UPDATE containers SET deleted = 1 WHERE id = ?", (container_id,))
            self._discard_container_files(db, container_id)

    def check_container_live(self, tenant: str, container_id: str) -> None:
        """Fail fast (before streaming an upload) if the container cannot take a file."""
        with self._tx() as db:
            now = self.clock.now()
            self._sweep(db, now)
            self._live_container(db, tenant, container_id, now)

    # --- container files --------------------------------------------------------------------------

    def add_container_file(
        self, tenant: str, container_id: str, *, tmp: Path, size: int, path: str, source: str
    ) -> Row:
        """Adopt an uploaded temp file as a container file (``tmp`` is moved, or removed on failure)."""
        fid = self._new_id("cfile_", 16)
        try:
            with self._tx() as db:
                now = self.clock.now()
                self._sweep(db, now)
                self._live_container(db, tenant, container_id, now)
                self._adopt_blob(tmp, fid)
                db.execute(
                    "INSERT INTO container_files (id, container_id, created_at, bytes, path, source)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (fid, container_id, now, size, path, source),
                )
                return dict(db.execute("SELECT * FROM container_files WHERE id = ?", (fid,)).fetchone())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            self._drop_blob(fid)
            raise

    def add_container_file_by_id(self, tenant: str, container_id: str, file_id: str) -> Row:
        with self._tx() as db:
            now = self.clock.now()
            self._sweep(db, now)
            self._live_container(db, tenant, container_id, now)
            src = db.execute(
                "SELECT * FROM files WHERE id = ? AND tenant = ? AND deleted = 0", (file_id, tenant)
            ).fetchone()
            if src is None:
                raise file_not_found(file_id, param="file_id")
            return self._insert_copy(db, container_id, dict(src), now)

    def list_container_files(
        self, tenant: str, container_id: str, *, limit: int, order: str, after: str | None
    ) -> tuple[list[Row], bool]:
        with self._tx() as db:
            now = self.clock.now()
            self._sweep(db, now)
            self._live_container(db, tenant, container_id, now)
            return self._page(
                db, "container_files", "container_id = ?", (container_id,), limit=limit, order=order, after=after
            )

    def _container_file(self, db: sqlite3.Connection, container_id: str, file_id: str) -> Row:
        row = db.execute(
            "SELECT * FROM container_files WHERE id = ? AND container_id = ? AND deleted = 0",
            (file_id, container_id),
        ).fetchone()
        if row is None:
            raise container_file_not_found(container_id, file_id)
        return dict(row)

    def retrieve_container_file(self, tenant: str, container_id: str, file_id: str) -> Row:
        with self._tx() as db:
            now = self.clock.now()
            self._sweep(db, now)
            self._live_container(db, tenant, container_id, now)
            return self._container_file(db, container_id, file_id)

    def _open_blob(self, object_id: str) -> BinaryIO:
        # Opened here, under the caller's checks: a concurrent delete then only unlinks the name,
        # and the open handle still streams the whole file.
        try:
            return self.blob_path(object_id).open("rb")
        except OSError:
            raise NotFound("File not found.", status=404) from None

    def container_file_content(self, tenant: str, container_id: str, file_id: str) -> tuple[Row, BinaryIO]:
        """The file's row and its bytes opened for reading; the caller streams and closes them."""
        with self._tx() as db:
            now = self.clock.now()
            self._sweep(db, now)
            self._live_container(db, tenant, container_id, now)
            row = self._container_file(db, container_id, file_id)
            return row, self._open_blob(file_id)

    def delete_container_file(self, tenant: str, container_id: str, file_id: str) -> None:
        with self._tx() as db:
            now = self.clock.now()
            self._sweep(db, now)
            self._live_container(db, tenant, container_id, now)
            self._container_file(db, container_id, file_id)
            db.execute("UPDATE container_files SET deleted = 1 WHERE id = ?", (file_id,))
            self._doom(file_id)

    # --- Files API --------------------------------------------------------------------------------

    def create_file(
        self, tenant: str, *, tmp: Path, size: int, filename: str, purpose: str, expires_after_seconds: int | None
    ) -> Row:
        fid = self._new_id("file-", 12)
        try:
            with self._tx() as db:
                now = self.clock.now()
                expires_at = now + expires_after_seconds if expires_after_seconds is not None else None
                self._sweep(db, now)
                self._adopt_blob(tmp, fid)
                db.execute(
                    "INSERT INTO files (id, tenant, filename, purpose, bytes, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (fid, tenant, filename, purpose, size, now, expires_at),
                )
                return self._file(db, tenant, fid)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            self._drop_blob(fid)
            raise

    def _file(self, db: sqlite3.Connection, tenant: str, file_id: str) -> Row:
        row = db.execute(
            "SELECT * FROM files WHERE id = ? AND tenant = ? AND deleted = 0", (file_id, tenant)
        ).fetchone()
        if row is None:
            raise file_not_found(file_id)
        return dict(row)

    def list_files(
        self, tenant: str, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> tuple[list[Row], bool]:
        with self._tx() as db:
            self._sweep(db, self.clock.now())
            where, args = "tenant = ?", cast(tuple[Any, ...], (tenant,))
            if purpose is not None:
                where, args = "tenant = ? AND purpose = ?", (tenant, purpose)
            return self._page(db, "files", where, args, limit=limit, order=order, after=after)

    def retrieve_file(self, tenant: str, file_id: str) -> Row:
        with self._tx() as db:
            self._sweep(db, self.clock.now())
            return self._file(db, tenant, file_id)

    def file_content(self, tenant: str, file_id: str) -> tuple[Row, BinaryIO]:
        with self._tx() as db:
            self._sweep(db, self.clock.now())
            row = self._file(db, tenant, file_id)
            return row, self._open_blob(file_id)

    def delete_file(self, tenant: str, file_id: str) -> None:
        with self._tx() as db:
            self._sweep(db, self.clock.now())
            self._file(db, tenant, file_id)
            db.execute("UPDATE files SET deleted = 1 WHERE id = ?", (file_id,))
            self._doom(file_id)
