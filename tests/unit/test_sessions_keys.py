"""Session helpers: key hashing, restore names, input detection, and the record's JSON round trip."""

from __future__ import annotations

import pytest

from hearth.api.models import ContainerFile
from hearth.files.globs import selected
from hearth.files.inputs import InputItem, glob_literal, input_paths, restore_name
from hearth.sessions import SessionContainer, SessionLease, SessionRecord, session_hash


def test_session_hash_is_stable_short_and_hides_the_key() -> None:
    h = session_hash("conversation-123")
    assert h == session_hash("conversation-123")
    assert h != session_hash("conversation-124")
    assert len(h) == 32 and int(h, 16) >= 0
    assert "conversation" not in h
    with pytest.raises(ValueError):
        session_hash("")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/mnt/data/chart.png", "chart.png"),
        ("/mnt/data/out/deep/table.csv", "table.csv"),
        ("/mnt/data/88e12fa445d32636f190a0b33daed6cb-tsconfig.json", "tsconfig.json"),
        ("/mnt/data/cafe-notes.txt", "cafe-notes.txt"),  # a short hex run is part of the name
        ("/mnt/data/88e12fa445d32636f190a0b33daed6cb-", "88e12fa445d32636f190a0b33daed6cb-"),
    ],
)
def test_restore_name(path: str, name: str) -> None:
    assert restore_name(path) == name


def _file(path: str, source: str, size: int | None) -> ContainerFile:
    return ContainerFile(id="cfile_" + str(abs(hash(path))), container_id="cntr_1", created_at=1, bytes=size,
                         path=path, source=source)


def test_input_paths_are_uploads_named_and_sized_like_an_input() -> None:
    items = [InputItem("local", "/x/a.csv", "a.csv", 8, None), InputItem("local", "/x/h[1].py", "h[1].py", 3, None)]
    files = [
        _file("/mnt/data/" + "0" * 32 + "-a.csv", "user", 8),
        _file("/mnt/data/" + "1" * 32 + "-h[1].py", "user", 3),
        _file("/mnt/data/a.csv", "assistant", 8),  # code wrote it: the session's, not the pool's
        _file("/mnt/data/" + "2" * 32 + "-a.csv", "user", 99),  # the app uploaded another a.csv
    ]
    found = input_paths(files, items)
    assert found == ["0" * 32 + "-a.csv", "1" * 32 + "-h[1].py"]
    excludes = [glob_literal(p) for p in found]
    assert not selected("1" * 32 + "-h[1].py", (), excludes)  # glob characters are taken literally
    assert not selected("0" * 32 + "-a.csv", (), excludes)
    assert selected("1" * 32 + "-h1.py", (), excludes)
    assert selected("2" * 32 + "-a.csv", (), excludes)


def test_record_round_trip_and_lease_json_carry_no_key() -> None:
    rec = SessionRecord(session_id=session_hash("k"), pool="p", created_at=1.0, last_used_at=2.0,
                        history=[SessionContainer(container_id="cntr_1", name="hearth-p-x", target="file:///t",
                                                  bound_at=1.0)])
    again = SessionRecord.model_validate_json(rec.model_dump_json())
    assert again == rec
    lease = SessionLease(pool="p", container_id="cntr_1", name="hearth-p-x", lease_id="l", token=1, expires_at=3.0,
                         session_id=rec.session_id, restored=True, restored_files=["a.png"])
    assert lease.to_json()["restored_files"] == ["a.png"] and lease.to_json()["session_id"] == rec.session_id
