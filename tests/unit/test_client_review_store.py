"""Review B9/B11 and the transaction fix: the local API store's bytes and times stay consistent."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hearth.clock import ManualClock
from hearth.localapi.store import Store


class _FailingCommit:
    """The store's connection, except that the next COMMIT fails (a full disk, an I/O error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.fail_next_commit = True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.fail_next_commit:
            self.fail_next_commit = False
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _new_file(store: Store, data: bytes = b"abc") -> str:
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    return str(store.create_file("t", tmp=tmp, size=len(data), filename="a.txt", purpose="user_data",
                                 expires_after_seconds=None)["id"])


def test_failed_commit_keeps_the_bytes_and_the_store_usable(tmp_path: Path) -> None:
    store = Store(tmp_path, ManualClock())
    fid = _new_file(store)
    store._db = _FailingCommit(store._db)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        store.delete_file("t", fid)
    # The delete did not commit: the row is live, so its bytes must still be there (B9) ...
    _row, blob = store.file_content("t", fid)
    with blob:
        assert blob.read() == b"abc"
    # ... and the connection was rolled back, not left inside the failed transaction.
    store.delete_file("t", fid)
    assert not store.blob_path(fid).exists()
    store.close()


def test_clock_is_read_inside_the_transaction(tmp_path: Path) -> None:
    """B11: a time read before waiting for the lock could be older than one another call already wrote."""
    inside: list[bool] = []
    store: Store

    class Probe(ManualClock):
        def now(self) -> float:
            inside.append(store._db.in_transaction)
            return super().now()

    clock = Probe()
    store = Store(tmp_path, clock)
    cid = store.create_container("t", name="c", minutes=20, memory_limit="1g", network_policy=None,
                                 metadata=None, file_ids=[])["id"]
    inside.clear()
    store.retrieve_container("t", cid)
    store.check_container_live("t", cid)
    store.list_container_files("t", cid, limit=10, order="asc", after=None)
    assert inside and all(inside)
    store.close()


def test_last_active_at_never_moves_backwards(tmp_path: Path) -> None:
    clock = ManualClock()
    store = Store(tmp_path, clock)
    cid = store.create_container("t", name="c", minutes=20, memory_limit="1g", network_policy=None,
                                 metadata=None, file_ids=[])["id"]
    clock.advance(60)
    later = store.retrieve_container("t", cid)["last_active_at"]
    clock.advance(-30)  # a wall clock stepped back
    assert store.retrieve_container("t", cid)["last_active_at"] == later
    store.close()
